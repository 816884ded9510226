"""Board files and their secrets.

A board file `boards/<name>.json` is committed; the keys these tools rely on are `board` (its
name), `chip` (one of CHIPS) and, except for the unix port, `flash.offset` (hex string: where the
MicroPython image goes, 0x1000 on the ESP32, 0x0 on the S3 and C3).

Secrets never go in the board file. They live in git-ignored JSON files that are deep-merged over
it at deploy time, later files winning:
    <boards-dir>/../secrets.json        (repository-wide, e.g. the MQTT password)
    <boards-dir>/secrets.json           (all boards)
    <boards-dir>/<name>.secrets.json    (this board, e.g. its Wi-Fi password)
"""
import json
import re
import subprocess
from pathlib import Path

from . import ROOT, ToolError, shown_path

# What the tools need to know per chip. `download` is the board name on
# micropython.org/download/ for the generic firmware of that chip; `march` is mpy-cross's
# -march for native code; `esptool` is esptool's --chip.
CHIPS = {
    "esp32": {"esptool": "esp32", "march": "xtensawin", "download": "ESP32_GENERIC"},
    "esp32s3": {"esptool": "esp32s3", "march": "xtensawin", "download": "ESP32_GENERIC_S3"},
    "esp32c3": {"esptool": "esp32c3", "march": "rv32imc", "download": "ESP32_GENERIC_C3"},
    "unix": {"esptool": None, "march": None, "download": None},
}

# Keys whose values are secrets: a board file (committed) must not hold them.
SECRET_KEY = re.compile(r"(password|passwd|secret|token|psk|private_key)$", re.I)
HEX = re.compile(r"^0x[0-9a-fA-F]+\Z")
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")  # also a directory name under build/
RESERVED_IN_SECRETS = ("board", "chip", "flash")


def board_names(boards_dir):
    d = Path(boards_dir)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json")
                  if p.name != "schema.json" and p.name != "secrets.json"
                  and not p.name.endswith(".secrets.json"))


def _load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ToolError("%s: not valid JSON (line %d: %s)" % (shown_path(path), e.lineno, e.msg))
    if not isinstance(data, dict):
        raise ToolError("%s: must hold a JSON object" % shown_path(path))
    return data


def load_board(name, boards_dir):
    """The board file, with the keys the tools depend on checked. Raises ToolError."""
    if not name:
        available = ", ".join(board_names(boards_dir)) or "none yet in %s" % shown_path(boards_dir)
        raise ToolError("no board given (BOARD=<name>; available: %s)" % available)
    if name.endswith(".json") and Path(name).resolve().parent == Path(boards_dir).resolve():
        name = Path(name).stem  # BOARD=boards/x.json means the same as BOARD=x (as for make run)
    if not NAME.match(name):
        raise ToolError("board name %r: use letters, digits, '-', '_' and '.' only (or a file in %s)"
                        % (name, shown_path(boards_dir)))
    path = Path(boards_dir) / (name + ".json")
    if not path.is_file():
        available = ", ".join(board_names(boards_dir)) or "none"
        raise ToolError("no board file %s (available boards: %s)" % (shown_path(path), available))
    board = _load_json(path)
    where = shown_path(path)
    if not isinstance(board.get("board"), str) or not board["board"]:
        raise ToolError('%s: "board" must be a non-empty string' % where)
    chip = board.get("chip")
    if chip not in CHIPS:
        raise ToolError('%s: "chip" is %r; expected one of %s' % (where, chip, ", ".join(CHIPS)))
    if chip != "unix":
        flash = board.get("flash")
        offset = flash.get("offset") if isinstance(flash, dict) else None
        if not isinstance(offset, str) or not HEX.match(offset):
            raise ToolError('%s: "flash": {"offset": "0x..."} (a hex string) is required for '
                            'chip %s' % (where, chip))
    return board


TLS_FILES = ("ca", "cert", "key")  # mqtt.tls keys naming files the device reads


def device_files(config, boards_dir):
    """[(dotted key, device path, local Path)] for the files the configuration names for the
    device (mqtt.tls.ca / cert / key). On an ESP32 chip the device path /X is deployed from
    <boards dir>/X; the unix port reads the path itself (relative to the repository root)."""
    mqtt = config.get("mqtt")
    tls = mqtt.get("tls") if isinstance(mqtt, dict) else None
    out = []
    for key in TLS_FILES if isinstance(tls, dict) else ():
        remote = tls.get(key)
        if isinstance(remote, str) and remote:
            if config.get("chip") == "unix":
                local = Path(remote) if Path(remote).is_absolute() else ROOT / remote
            else:
                local = Path(boards_dir) / remote.lstrip("/")
            out.append(("mqtt.tls." + key, remote, local))
    return out


def missing_files(config, boards_dir):
    """One line per file of device_files() that is not there to deploy."""
    return ["%s: no such file %s (for %s on the device: make deploy copies /X from %s/X)"
            % (key, shown_path(local), remote, shown_path(boards_dir)) if config.get("chip") != "unix"
            else "%s: no such file %s" % (key, shown_path(local))
            for key, remote, local in device_files(config, boards_dir) if not local.is_file()]


def flash_offset(board):
    return int(board["flash"]["offset"], 16)


def secrets_paths(name, boards_dir):
    d = Path(boards_dir)
    candidates = [d.parent / "secrets.json", d / "secrets.json", d / (name + ".secrets.json")]
    return [p for p in candidates if p.is_file()]


def deep_merge(base, over):
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def secret_keys(obj, prefix=""):
    """Dotted paths of non-empty values under secret-looking keys."""
    found = []
    for key, value in obj.items():
        path = prefix + str(key)
        if isinstance(value, dict):
            found += secret_keys(value, path + ".")
        elif SECRET_KEY.search(str(key)) and value not in ("", None):
            found.append(path)
    return found


def _git_warnings(paths):
    """Secrets files that git would commit: tracked ones, or ones no .gitignore rule covers."""
    warnings = []
    for path in paths:
        cwd = str(path.parent)
        try:
            tracked = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=cwd,
                                     capture_output=True).returncode == 0
            ignored = subprocess.run(["git", "check-ignore", "-q", path.name], cwd=cwd,
                                     capture_output=True).returncode == 0
            inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=cwd,
                                    capture_output=True).returncode == 0
        except OSError:  # no git
            return warnings
        if tracked:
            warnings.append("%s is tracked by git: `git rm --cached` it (and change its "
                            "secrets if it was ever committed)" % shown_path(path))
        elif inside and not ignored:
            warnings.append("%s is not git-ignored: add it to .gitignore before it is committed"
                            % shown_path(path))
    return warnings


def load_config(name, boards_dir):
    """Board file + secrets, validated. Returns (merged, info) where info has the files used,
    the count of secret values merged and warnings. Raises ToolError."""
    board = load_board(name, boards_dir)
    board_file = Path(boards_dir) / (name + ".json")
    warnings = []
    if board["board"] != name:
        warnings.append('%s: "board" is %r, not the file name %r'
                        % (shown_path(board_file), board["board"], name))
    leaked = secret_keys(board)
    if leaked:
        warnings.append("%s holds secret values (%s): move them to %s (git-ignored)"
                        % (shown_path(board_file), ", ".join(leaked),
                           shown_path(Path(boards_dir) / (name + ".secrets.json"))))
    merged = board
    paths = secrets_paths(name, boards_dir)
    loaded = []
    for path in paths:
        secrets = _load_json(path)
        clash = [k for k in RESERVED_IN_SECRETS if k in secrets]
        if clash:
            raise ToolError("%s: a secrets file may not set %s (they belong in the board file)"
                            % (shown_path(path), ", ".join(clash)))
        loaded.append(secrets)
        merged = deep_merge(merged, secrets)
    warnings += _git_warnings(paths)
    _validate_schema(merged, board_file, paths, Path(boards_dir) / "schema.json", loaded)
    missing = missing_files(merged, boards_dir)
    if missing:
        raise ToolError("; ".join(missing))
    # a client key is a secret like a password: it must not be committed
    warnings += _git_warnings([local for key, _, local in device_files(merged, boards_dir)
                               if key == "mqtt.tls.key" and merged["chip"] != "unix"])
    return merged, {"board_file": board_file, "secrets": paths,
                    "n_secrets": sum(_count_leaves(s) for s in loaded), "warnings": warnings}


def _count_leaves(obj):
    return sum(_count_leaves(v) if isinstance(v, dict) else 1 for v in obj.values())


def _string_leaves(objs):
    out = []
    for obj in objs:
        for value in obj.values():
            out += _string_leaves([value]) if isinstance(value, dict) else (
                [value] if isinstance(value, str) and value else [])
    return out


def _from_secrets(path, loaded):
    """True when the value at `path` (a list of keys) was set by one of the secrets files."""
    for secrets in loaded:
        node = secrets
        for key in path:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            return True
    return False


def _validate_schema(config, board_file, secrets, schema_path, loaded):
    """jsonschema validation of the merged config, when the boards directory has a schema."""
    if not schema_path.is_file():
        return
    import jsonschema

    schema = _load_json(schema_path)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ToolError("%s: not a valid JSON schema: %s" % (shown_path(schema_path), e.message))
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        sources = " + ".join(shown_path(p) for p in [board_file] + list(secrets))
        lines = []
        for e in errors:
            path = list(e.absolute_path)
            # Messages quote the offending value: never print one that came from a secrets file.
            message = ("fails %r of the schema (value from a secrets file, not shown)" % e.validator
                       if path and _from_secrets(path, loaded) else e.message)
            for value in _string_leaves(loaded):  # e.g. a whole object quoted at the top level
                message = message.replace(repr(value), "'***'")
            lines.append("%s: %s" % (".".join(str(p) for p in path) or "(top level)", message))
        raise ToolError("%s does not match %s: %s"
                        % (sources, shown_path(schema_path), "; ".join(lines)))

