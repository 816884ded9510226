#!/usr/bin/env python3
"""Deploy the library, the firmware app and the board config to a MicroPython board.

    .venv/bin/python tools/deploy.py --board NAME --port PORT [--dry-run]
    (or: make deploy BOARD=NAME PORT=PORT [DRY_RUN=1])

1. boards/NAME.json is checked (boards/schema.json too, when there is one) and the git-ignored
   secrets files are deep-merged over it (devtools/boards.py); the result goes to /board.json.
2. lib/**/*.py -> /lib/**/*.mpy and firmware/**/*.py -> /**/*.mpy are compiled with mpy-cross
   (-march for the board's chip) into build/deploy/NAME/; firmware/boot.py and firmware/main.py
   stay source, since MicroPython runs them by name; the host board layer (hostboard.py,
   hostsim.py) and the host's command line (options.py) are left out on an ESP32 chip. The files mqtt.tls names (ca, cert, key: device
   paths /X) are copied from boards/X, which must exist. lib/mqttc (the
   command-line client) stays on the host.
3. The device is asked (one `mpremote exec`) for sys.implementation._mpy, its version, the
   manifest /.deploy.json of the files an earlier deploy wrote, and the size and sha256 of each
   file to deploy (hashed on the device). A device that cannot import the compiled files, or runs
   MicroPython for another chip than the board file says, is refused before anything is written.
4. Only files whose sha256 on the device differs from the one just built are copied (so a deploy
   cut short, e.g. by the hardware watchdog resetting the board, loses nothing it copied); files
   the manifest lists that are no longer part of the app are removed, and so is any X.py that
   would shadow a deployed X.mpy. Nothing else on the device is touched (the flash-ring store,
   logs...). Then the manifest is written and the board reset.

--frozen is for a board whose MicroPython image has the library and the firmware frozen into it
(manifest_firmware.py): what the image holds -- every module step 2 would compile to .mpy, but
the host board layer -- is not copied. Only boot.py, main.py, /board.json and the certificate
files go onto the board. Before writing anything the probe of step 3 also runs
help('modules'), which lists the image's frozen modules without importing them (a frozen
module's __file__ is its bare name, "app.py", in MicroPython 1.25: no ".frozen" prefix to test),
and a board whose image lacks any of them is refused. Copies of the frozen modules (X.mpy and
X.py) left in / and /lib by an earlier deploy are removed, with the directories they leave
empty (but /lib): on an ESP32 sys.path is ['', '.frozen', '/lib'], so a copy in / would be
imported instead of the frozen module, and one in /lib only takes flash.

--device-dir DIR runs the same plan against a local folder standing in for the device's file
system (for tests and for the unix port): the device's _mpy then comes from --device-mpy, and
its frozen modules (with --frozen) from --device-frozen.
"""
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devtools import ArgumentParser, ROOT, ToolError, fail, run_main, shown_path, venv_python, version  # noqa: E402
from devtools import mpy  # noqa: E402
from devtools.boards import CHIPS, device_files, load_config  # noqa: E402

MANIFEST = "/.deploy.json"
CONFIG = "/board.json"
KEEP_SOURCE = ("boot.py", "main.py")  # run by name from the root of the file system
# never loaded on a board: the host board layer, and the host's command line (main.py --check ...)
HOST_ONLY = ("hostboard.py", "hostsim.py", "options.py")
HOST_LIBS = ("mqttc",)  # lib/mqttc: the command-line client, of no use on a board
PROBE_MARK = "DEPLOY-PROBE "
FROZEN_MARK = "DEPLOY-FROZEN"  # the probe prints help('modules') after this line (--frozen)
SUPPORTED = (1, 25)  # oldest MicroPython the project is tested with


class DeviceError(Exception):
    """The device or mpremote failed while deploying: exit status 1."""


@dataclass
class Item:
    remote: str  # absolute path on the device
    local: Path  # the staged file that is copied
    source: str  # where it came from, for the plan
    size: int
    sha256: str
    header: tuple = None  # .mpy header (version, sub, arch, small-int bits), None for others


# ---- what goes onto the device ---------------------------------------------------------------


def _item(remote, local, source, header=None):
    data = Path(local).read_bytes()
    return Item(remote, Path(local), source, len(data), hashlib.sha256(data).hexdigest(), header)


def sources(config):
    """(source file, path relative to its tree, device path, how) of every file of lib/ and
    firmware/ deployed to a board with this config; how: "source" (copied as it is), "mpy"
    (compiled) or "frozen" (compiled, but a frozen image holds it: see --frozen)."""
    for tree, remote_base in ((ROOT / "lib", "/lib"), (ROOT / "firmware", "")):
        if not tree.is_dir():
            continue
        for src in sorted(tree.rglob("*.py")):
            if "__pycache__" in src.parts:
                continue
            rel = src.relative_to(tree).as_posix()
            if remote_base == "/lib" and rel.split("/")[0] in HOST_LIBS:
                continue
            if remote_base == "" and rel in HOST_ONLY and config.get("chip") != "unix":
                continue
            if remote_base == "" and rel in KEEP_SOURCE:
                yield src, rel, "/" + rel, "source"
            else:
                # manifest_firmware.py freezes all of them but the host board layer
                how = "mpy" if remote_base == "" and rel in HOST_ONLY else "frozen"
                yield src, rel, "%s/%s.mpy" % (remote_base, rel[:-3]), how


def frozen_remotes(config):
    """The device paths (X.mpy) of the modules a frozen image holds, as a plain deploy puts
    them on the board."""
    return [remote for _, _, remote, how in sources(config) if how == "frozen"]


def module_name(remote):
    """The name help('modules') lists a frozen module under: /lib/mqtt/client.mpy -> mqtt/client
    (the image freezes lib/mqtt as the package mqtt), /app.mpy -> app."""
    name = remote[:-len(".mpy")]
    return name[len("/lib/"):] if name.startswith("/lib/") else name.lstrip("/")


def stage(board_name, config, march, build_dir, files=(), frozen=False):
    """Compile and collect everything to deploy into build_dir/board_name, plus `files`
    ([(key, device path, local path)]: the certificates the config names). Returns Items.
    With frozen, what a frozen image holds (frozen_remotes) is left out."""
    stage_dir = Path(build_dir) / board_name
    shutil.rmtree(stage_dir, ignore_errors=True)
    stage_dir.mkdir(parents=True)
    cmd = mpy.mpy_cross_command()
    items = []
    for src, rel, remote, how in sources(config):
        source = shown_path(src)
        if how == "source":
            dst = stage_dir / rel
            shutil.copyfile(src, dst)
            items.append(_item(remote, dst, source))
        elif how == "mpy" or not frozen:
            dst = stage_dir / remote.lstrip("/")
            mpy.compile_py(cmd, src, dst, rel, march)
            items.append(_item(remote, dst, source, mpy.read_header(dst)))
    dst = stage_dir / CONFIG.lstrip("/")
    # Sorted and compact, so the same config always hashes the same (and is not re-copied).
    dst.write_text(json.dumps(config, sort_keys=True, separators=(",", ":")), encoding="utf-8")
    os.chmod(dst, 0o600)  # it holds the secrets
    items.append(_item(CONFIG, dst, "merged board config"))
    for key, remote, local in files:
        items.append(_item(remote, local, "%s (%s)" % (shown_path(local), key)))
    return items


def plan(items, probe, force=False, obsolete=()):
    """(to copy, unchanged, to remove) from what the device reported: a file is unchanged when
    its sha256 on the device is the one just built (the device hashes its files, so a deploy cut
    short by a reset still counts what it copied). Only where the device has no hashlib.sha256
    does the manifest of the last deploy stand in for the device's hash. `obsolete` paths
    (copies of frozen modules) are removed where the device has them."""
    manifest = probe.get("manifest")
    known = manifest.get("files") if isinstance(manifest, dict) else None
    # Only clean absolute paths: what a deploy wrote (a damaged manifest must not reach outside).
    known = {p: v for p, v in known.items() if p.startswith("/") and ".." not in p.split("/")} \
        if isinstance(known, dict) else {}
    state = probe.get("files") or {}
    copy, same = [], []
    for item in items:
        size, digest = state.get(item.remote) or (None, None)
        if digest is None and isinstance(known.get(item.remote), dict):
            digest = known[item.remote].get("sha256")
        unchanged = not force and size == item.size and digest == item.sha256
        (same if unchanged else copy).append(item)
    wanted = {item.remote for item in items}
    stale = {p for p in known if p not in wanted and p != MANIFEST}
    remove = sorted(p for p in stale.union(shadows(items), obsolete) if state.get(p))
    return copy, same, remove


def shadows(items):
    """X.py next to a deployed X.mpy: MicroPython imports the .py first, so it must go."""
    return [item.remote[:-4] + ".py" for item in items if item.remote.endswith(".mpy")]


def probed(items, obsolete=()):
    """The paths the device reports on: every file to deploy and its possible shadow, and the
    obsolete ones (copies of frozen modules)."""
    return [item.remote for item in items] + shadows(items) + list(obsolete)


def obsolete_copies(frozen):
    """X.mpy and X.py for each frozen module's X.mpy: copies on the file system that a frozen
    deploy removes (in /, they would be imported instead of the frozen module)."""
    return [p for remote in frozen for p in (remote, remote[:-4] + ".py")]


def emptied_dirs(removed, frozen):
    """The directories a frozen deploy removes when removing `removed` leaves them empty,
    deepest first: those that held a frozen package's copies (/lib/mqtt, /sensors), but /lib.
    An empty /sensors would still be imported as a package instead of the frozen one."""
    frozen = set(frozen)
    dirs = parents(p for p in removed if p in frozen or p[:-3] + ".mpy" in frozen)
    return sorted((d for d in dirs if d != "/lib"), key=lambda d: (-d.count("/"), d))


def parents(remotes):
    dirs = set()
    for remote in remotes:
        parts = remote.strip("/").split("/")[:-1]
        dirs.update("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def manifest_of(items):
    return {"format": 1, "files": {item.remote: {"sha256": item.sha256, "size": item.size}
                                   for item in items}}


# ---- the device --------------------------------------------------------------------------------
# The scripts below run on the board (MicroPython 1.25+) through `mpremote exec`; `R` prefixes
# every path and is "" on a board (the tests run them on the unix port against a folder).


def _lit(value):
    """A Python literal in double quotes (JSON is one): the shell-quoted command stays legible."""
    return json.dumps(value)


def probe_script(root, paths, frozen=False):
    """Prints PROBE_MARK + JSON: the device's _mpy and version, the manifest, and for each of
    `paths` and the manifest's files [size, sha256 hex or None without hashlib] or None. With
    frozen, first FROZEN_MARK and help('modules'): the built-in and frozen modules' names
    (frozen ones without their .py), in columns, which parse_probe() reads back."""
    listing = ('print(%s)\ntry:help("modules")\nexcept Exception:pass\n' % _lit(FROZEN_MARK)
               if frozen else "")
    return ('import sys,os,json\ntry:from hashlib import sha256\nexcept ImportError:sha256=None\n'
            'from binascii import hexlify\nR=%s\nb=bytearray(512)\ndef s(p):\n try:\n'
            '  n=os.stat(R+p)[6]\n  if not sha256:return [n,None]\n  h=sha256()\n'
            '  with open(R+p,"rb") as f:\n   while 1:\n    k=f.readinto(b)\n'
            '    if not k:break\n    h.update(memoryview(b)[:k])\n'
            '  return [n,hexlify(h.digest()).decode()]\n except OSError:return None\n'
            'try:\n with open(R+%s) as f:m=json.load(f)\nexcept Exception:m=None\nP=%s\n'
            'if isinstance(m,dict)and isinstance(m.get("files"),dict):P=P+list(m["files"])\n'
            '%si=sys.implementation\nprint(%s+json.dumps({"mpy":getattr(i,"_mpy",0),'
            '"version":list(i.version[:3]),"machine":getattr(i,"_machine",""),"manifest":m,'
            '"files":{p:s(p) for p in P}}))\n'
            % (_lit(root), _lit(MANIFEST), _lit(list(paths)), listing, _lit(PROBE_MARK)))


def parse_probe(out, frozen=False):
    """The probe's JSON from its output, or None; with frozen, its "frozen" is the list of
    names help('modules') printed between FROZEN_MARK and the JSON line."""
    lines = out.splitlines()
    for n, line in enumerate(lines):
        if line.startswith(PROBE_MARK):
            probe = json.loads(line[len(PROBE_MARK):])
            if frozen:
                start = next((i for i in range(n) if lines[i].strip() == FROZEN_MARK), n)
                probe["frozen"] = sorted(set(
                    word for text in lines[start + 1:n]
                    if not text.startswith("Plus any modules") for word in text.split()))
            return probe
    return None


def mkdirs_script(root, dirs):
    return ("import os\nfor d in %s:\n try:os.mkdir(%s+d)\n except OSError:pass\n"
            % (_lit(list(dirs)), _lit(root)))


def remove_script(root, paths, dirs=()):
    """Removes `paths`, then each of `dirs` (deepest first) that is empty by then."""
    script = ("import os\nfor p in %s:\n try:os.remove(%s+p)\n except OSError:pass\n"
              % (_lit(list(paths)), _lit(root)))
    if dirs:
        script += ("for d in %s:\n try:os.rmdir(%s+d)\n except OSError:pass\n"
                   % (_lit(list(dirs)), _lit(root)))
    return script


class MpremoteDevice:
    """A board on a serial port, driven by `python -m mpremote`, one command per step. The first
    command soft-resets the board (interrupting its app); the others `resume` that session."""

    def __init__(self, port, root="", run=subprocess.run):
        self.port, self.root, self.run = port, root, run
        self.base = [venv_python(), "-m", "mpremote", "connect", port]
        self.label = port

    def probe_cmd(self, paths, frozen=False):
        return self.base + ["exec", probe_script(self.root, paths, frozen)]

    def mkdirs_cmd(self, dirs):
        return self.base + ["resume", "exec", mkdirs_script(self.root, dirs)]

    def remove_cmd(self, paths, dirs=()):
        return self.base + ["resume", "exec", remove_script(self.root, paths, dirs)]

    def put_cmd(self, local, remote):
        return self.base + ["resume", "fs", "cp", "-f", shown_path(local), ":" + self.root + remote]

    def reset_cmd(self):
        return self.base + ["resume", "reset"]

    def _call(self, cmd, capture=False):
        result = self.run(cmd, capture_output=capture, text=True)
        if result.returncode != 0:
            # mpremote reports its own errors on stderr, the board's tracebacks on stdout.
            detail = ((result.stderr or "") + (result.stdout or "")).strip().splitlines()
            raise DeviceError("mpremote failed (exit %d)%s: %s" % (
                result.returncode, " saying %r" % detail[-1] if detail else "",
                shlex.join(cmd[:6])))
        return result.stdout

    def probe(self, paths, frozen=False):
        out = self._call(self.probe_cmd(paths, frozen), capture=True) or ""
        probe = parse_probe(out, frozen)
        if probe is not None:
            return probe
        raise DeviceError("no answer from MicroPython on %s (is it running MicroPython? got: %r)"
                          % (self.port, out.strip()[-200:]))

    def mkdirs(self, dirs):
        self._call(self.mkdirs_cmd(dirs))

    def remove(self, paths, dirs=()):
        self._call(self.remove_cmd(paths, dirs))

    def put(self, local, remote):
        self._call(self.put_cmd(local, remote), capture=True)

    def reset(self):
        self._call(self.reset_cmd())

    def commands(self, paths, dirs, remove, copy, manifest_local, frozen=False, rmdirs=()):
        """Every command a deploy runs, in order (what --dry-run prints)."""
        cmds = [self.probe_cmd(paths, frozen)]
        if remove:
            cmds.append(self.remove_cmd(remove, rmdirs))
        if dirs:
            cmds.append(self.mkdirs_cmd(dirs))
        cmds += [self.put_cmd(item.local, item.remote) for item in copy]
        return cmds + [self.put_cmd(manifest_local, MANIFEST), self.reset_cmd()]


class FolderDevice:
    """A local folder standing in for the device's file system; the same sync, no board."""

    def __init__(self, folder, mpy_value, frozen_names=()):
        self.folder, self.mpy_value, self.frozen_names = Path(folder), mpy_value, frozen_names
        self.label = "folder %s" % shown_path(folder)

    def _path(self, remote):
        return self.folder / remote.lstrip("/")

    def _state(self, remote):
        try:
            data = self._path(remote).read_bytes()
        except OSError:
            return None
        return [len(data), hashlib.sha256(data).hexdigest()]

    def probe(self, paths, frozen=False):
        try:
            manifest = json.loads(self._path(MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = None
        paths = list(paths)
        if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
            paths += list(manifest["files"])
        probe = {"mpy": self.mpy_value, "version": None, "machine": "folder",
                 "manifest": manifest, "files": {p: self._state(p) for p in paths}}
        if frozen:
            probe["frozen"] = sorted(self.frozen_names)
        return probe

    def mkdirs(self, dirs):
        for d in dirs:
            self._path(d).mkdir(parents=True, exist_ok=True)

    def remove(self, paths, dirs=()):
        for p in paths:
            try:
                self._path(p).unlink()
            except FileNotFoundError:
                pass
        for d in dirs:
            try:
                self._path(d).rmdir()
            except OSError:  # not empty, or not there
                pass

    def put(self, local, remote):
        self.folder.mkdir(parents=True, exist_ok=True)  # a board's / always is there
        shutil.copyfile(local, self._path(remote))

    def reset(self):
        pass


# ---- checks ----------------------------------------------------------------------------------


def check_device(probe, items, board_name, chip, cross_sub):
    """Refuse (ToolError) a device that cannot load the files; return warnings."""
    value = probe.get("mpy") or 0
    if not value:
        raise ToolError("the device reports no sys.implementation._mpy: this MicroPython cannot "
                        "import .mpy files")
    for item in items:
        if item.header:
            reason = mpy.incompatibility(value, item.header, item.remote)
            if reason:
                raise ToolError(reason)
    version, sub, arch = mpy.decode_sys_mpy(value)
    want = CHIPS[chip]["march"]
    if want and arch and mpy.arch_name(arch) != want:
        raise ToolError("the device runs MicroPython for %s, but board '%s' has chip %s (%s): "
                        "wrong board connected, or wrong BOARD=?"
                        % (mpy.arch_name(arch), board_name, chip, want))
    warnings = []
    running = tuple(probe.get("version") or ())
    if running and running < SUPPORTED:
        warnings.append("the device runs MicroPython %s; this project is tested with %d.%d and "
                        "newer" % (".".join(map(str, running)), *SUPPORTED))
    elif sub != cross_sub:
        warnings.append("the device's .mpy is v%d.%d, mpy-cross emits v%d.%d: bytecode loads "
                        "(the sub-version only matters for native code)"
                        % (version, sub, version, cross_sub))
    return warnings


def check_frozen(probe, names):
    """Refuse (ToolError) a device whose image does not hold every module in `names` frozen."""
    listed = set(probe.get("frozen") or ())
    missing = [name for name in names if name not in listed]
    if missing:
        raise ToolError("the board's image lacks %d of the %d modules that must be frozen in it "
                        "(%s%s), by its help('modules'): flash an image built with "
                        "manifest_firmware.py, or deploy without FROZEN=1 (--frozen)"
                        % (len(missing), len(names), ", ".join(missing[:4]),
                           ", ..." if len(missing) > 4 else ""))


# ---- main ------------------------------------------------------------------------------------


def _size(n):
    return "{:,}".format(n)


def main(argv=None):
    parser = ArgumentParser(
        prog="tools/deploy.py",
        description="Compile lib/ and firmware/ to .mpy, check the device can load them, copy "
                    "only what changed (and the merged board config as /board.json), reset.",
        epilog="Secrets: boards/NAME.secrets.json, boards/secrets.json and ./secrets.json "
               "(git-ignored) are deep-merged over boards/NAME.json. Exit status: 0 done, "
               "1 device or mpremote failure, 2 bad input or incompatible device, 12 internal error "
               "(a bug), 130 interrupted.")
    parser.add_argument("--version", action="version", version="%(prog)s " + version())
    parser.add_argument("--board", help="board name: boards/NAME.json")
    parser.add_argument("--port", help="serial port of the board, e.g. /dev/ttyUSB0")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (files, sizes, commands); write nothing")
    parser.add_argument("--force", action="store_true", help="copy every file, changed or not")
    parser.add_argument("--frozen", action="store_true",
                        help="the board's image has the library and the firmware frozen "
                             "(manifest_firmware.py): check that it does, copy only boot.py, "
                             "main.py, the config and the certificates, and remove copies of the "
                             "frozen modules an earlier deploy left")
    parser.add_argument("--boards-dir", default=str(ROOT / "boards"),
                        help="where board files live (default: boards/)")
    parser.add_argument("--build-dir", default=str(ROOT / "build" / "deploy"),
                        help="where compiled files are staged (default: build/deploy/)")
    parser.add_argument("--device-dir", metavar="DIR",
                        help="sync into this local folder instead of a board (tests, unix port)")
    parser.add_argument("--device-mpy", type=lambda s: int(s, 0), metavar="N",
                        help="with --device-dir: the sys.implementation._mpy the folder's "
                             "MicroPython reports (default: what mpy-cross emits for the chip)")
    parser.add_argument("--device-frozen", metavar="NAMES",
                        help="with --device-dir and --frozen: the modules the folder's MicroPython "
                             "has frozen, comma-separated as help('modules') names them "
                             "(mqtt/client,app,...; default: every module --frozen expects)")
    args = parser.parse_args(argv)

    try:
        config, info = load_config(args.board, args.boards_dir)
        chip = config["chip"]
        if chip == "unix" and not args.device_dir:
            raise ToolError("board '%s' is the unix port: deploy into its file system with "
                            "--device-dir DIR" % args.board)
        if not (args.port or args.device_dir or args.dry_run):
            raise ToolError("no serial port given (PORT=/dev/ttyUSB0; list them with "
                            "`.venv/bin/python -m serial.tools.list_ports`)")
        march = CHIPS[chip]["march"]
        cross_text, cross_version, cross_sub = mpy.mpy_cross_version(mpy.mpy_cross_command())
        if args.device_frozen is not None and not (args.device_dir and args.frozen):
            raise ToolError("--device-frozen goes with --device-dir and --frozen")
        files = device_files(config, args.boards_dir) if chip != "unix" else []
        items = stage(args.board, config, march, args.build_dir, files, args.frozen)
    except ToolError as e:
        return fail("deploy", e)
    frozen = frozen_remotes(config) if args.frozen else []
    names = [module_name(remote) for remote in frozen]
    obsolete = obsolete_copies(frozen)

    for warning in info["warnings"]:
        print("deploy: warning: " + warning, file=sys.stderr)
    if args.device_dir:
        value = args.device_mpy
        if value is None:  # what a MicroPython matching this mpy-cross reports on this chip
            value = mpy.encode_sys_mpy(cross_version, cross_sub, march or "x64")
        listed = names if args.device_frozen is None else \
            [n.strip() for n in args.device_frozen.split(",") if n.strip()]
        device = FolderDevice(args.device_dir, value, listed)
    else:
        device = MpremoteDevice(args.port or "PORT")
    sources = [shown_path(info["board_file"])] + [shown_path(p) for p in info["secrets"]]
    print("board '%s' (chip %s) -> %s" % (args.board, chip, device.label))
    print("config: %s%s -> %s" % (" + ".join(sources), " (%d secret value(s) merged, not shown)"
                                  % info["n_secrets"] if info["n_secrets"] else "", CONFIG))
    print("mpy-cross: %s%s" % (cross_text, ", -march=" + march if march else ""))
    if args.frozen:
        print("frozen: %d modules come from the board's image, not copied (%s)" % (
            len(names), ", ".join(names[:3] + ["..."] if len(names) > 3 else names)))

    # Dry run against a board: the board is not contacted, so plan as if it were empty.
    contact = not (args.dry_run and isinstance(device, MpremoteDevice))
    try:
        if contact:
            probe = device.probe(probed(items, obsolete), args.frozen)
            warnings = check_device(probe, items, args.board, chip, cross_sub)
            if args.frozen:
                check_frozen(probe, names)
            running = probe.get("version")
            print("device: %s.mpy %s" % ("MicroPython %s, " % ".".join(map(str, running))
                                         if running else "", mpy.describe_sys_mpy(probe["mpy"])))
            if args.frozen:
                print("image: all %d modules frozen in it" % len(names))
            for warning in warnings:
                print("deploy: warning: " + warning, file=sys.stderr)
        else:
            probe = {"manifest": None, "files": {}}
            print("device: not contacted (dry run); it must load .mpy v%d%s. A real run asks it "
                  "for the sha256 of each file and copies only what changed" % (
                      cross_version, " (arch %s)" % march if march else ""))
            if args.frozen:
                print("image: not checked (dry run); a real run refuses a board whose image "
                      "lacks any of them, and removes the copies of them it finds on the board "
                      "(X.mpy and X.py, in / and /lib)")
    except ToolError as e:
        return fail("deploy", e)
    except DeviceError as e:
        return fail("deploy", e, 1)

    copy, same, remove = plan(items, probe, args.force, obsolete)
    rmdirs = emptied_dirs(remove, frozen)
    print_plan(items, copy, same, remove, rmdirs)
    dirs = parents(item.remote for item in copy)
    manifest_local = Path(args.build_dir) / args.board / MANIFEST.lstrip("/")
    if args.dry_run:
        if isinstance(device, MpremoteDevice):
            print("commands (a real run skips the copies of unchanged files):")
            for cmd in device.commands(probed(items, obsolete), dirs, remove, copy,
                                       manifest_local, args.frozen, rmdirs):
                print("  " + shlex.join(cmd))
        print("dry run: nothing was written")
        return 0
    try:
        execute(device, items, copy, remove, dirs, probe.get("manifest"), manifest_local, rmdirs)
    except DeviceError as e:
        return fail("deploy", "%s (run deploy again: it resumes where this one stopped)" % e, 1)
    print("deployed: %d copied, %d unchanged, %d removed%s" % (
        len(copy), len(same), len(remove), "; board reset" if isinstance(device, MpremoteDevice)
        else ""))
    return 0


def print_plan(items, copy, same, remove, rmdirs=()):
    print("plan: %d to copy (%s bytes), %d unchanged, %d to remove" % (
        len(copy), _size(sum(i.size for i in copy)), len(same), len(remove)))
    width = max(len(i.remote) for i in items)
    for item in items:
        print("  %-9s %8s  %-*s  <- %s" % ("copy" if item in copy else "unchanged",
                                           _size(item.size), width, item.remote, item.source))
    for path in remove:
        print("  %-9s %8s  %s" % ("remove", "", path))
    for path in rmdirs:
        print("  %-9s %8s  %s/ (if that leaves it empty)" % ("remove", "", path))


def execute(device, items, copy, remove, dirs, old_manifest, manifest_local, rmdirs=()):
    """Carry out the plan, with progress; the manifest goes last. Raises DeviceError."""
    if remove:
        print("removing %d file(s)" % len(remove), flush=True)
        device.remove(remove, rmdirs)
    if dirs:
        device.mkdirs(dirs)
    for n, item in enumerate(copy, 1):
        print("[%d/%d] %s (%s bytes)" % (n, len(copy), item.remote, _size(item.size)), flush=True)
        device.put(item.local, item.remote)
    manifest = manifest_of(items)
    if manifest != old_manifest:
        manifest_local.write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")
        device.put(manifest_local, MANIFEST)
    device.reset()

if __name__ == "__main__":
    run_main("deploy", main)
