"""Flash and deploy tooling, tested without a board (docs/flash-and-deploy.md says what that
leaves unverified).

- flash: synthetic ESP32 / S3 / C3 images built here byte by byte (not with esptool) are accepted
  for their own chip and refused for another, as are garbage, damaged and app-only files; the
  esptool commands parse with the pinned esptool.
- deploy: the plan, the .mpy compatibility rule, and the hash-based sync against a folder that
  stands in for the device; the device-side scripts run on the MicroPython unix port, and a whole
  deploy runs through the real mpremote CLI against a fake board (raw REPL on a pseudo-terminal,
  code executed by the unix port). Deploy to a frozen image (--frozen): the folder's "image" is
  named by --device-frozen, the fake board's is the unix port's own help('modules') (optionally
  with names added) or that of the 32-bit port with manifest_firmware.py frozen, when built.
- packaging: package.json installs with mpremote's mip and imports; manifest.py freezes every
  library module; the .mpy deploy produces imports on the unix port.
- size: every module is reported.
"""
import hashlib
import importlib.util
import io
import json
import os
import platform
import re
import select
import shutil
import struct
import subprocess
import sys
import threading
import tty
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
MICROPYTHON = Path(os.environ.get("MICROPYTHON") or ROOT / "build" / "bin" / "micropython")


def lib_modules():
    return sorted(p.name for p in (ROOT / "lib" / "mqtt").glob("*.py"))


def _load(name):
    spec = importlib.util.spec_from_file_location("devtool_" + name, TOOLS / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flash = _load("flash")
deploy = _load("deploy")
size = _load("size")
from conftest import mip_install  # noqa: E402
from devtools import mpy  # noqa: E402  (tools/ is on sys.path once a tool is loaded)
from devtools.boards import deep_merge  # noqa: E402

needs_micropython = pytest.mark.skipif(not MICROPYTHON.exists(),
                                       reason="no MicroPython unix port (make micropython)")


def run(tool, argv, capsys):
    status = tool.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def micropython(code, path, cwd=None):
    env = dict(os.environ, MICROPYPATH=".frozen:%s" % path)
    return subprocess.run([str(MICROPYTHON), "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=30)


# ---- fixtures: board files -------------------------------------------------------------------

BOARDS = {
    "devkit": {"board": "devkit", "chip": "esp32", "flash": {"offset": "0x1000"},
               "wifi": {"ssid": "lab"}, "mqtt": {"host": "192.168.1.10", "user": "sensor"}},
    "s3": {"board": "s3", "chip": "esp32s3", "flash": {"offset": "0x0"}},
    "c3": {"board": "c3", "chip": "esp32c3", "flash": {"offset": "0x0"}},
    "host": {"board": "host", "chip": "unix"},
}
WIFI_SECRET = "correct-horse-battery"


@pytest.fixture
def boards(tmp_path):
    d = tmp_path / "boards"
    d.mkdir()
    for name, board in BOARDS.items():
        (d / (name + ".json")).write_text(json.dumps(board))
    (d / "devkit.secrets.json").write_text(json.dumps({"wifi": {"password": WIFI_SECRET}}))
    return d


@pytest.fixture(autouse=True)
def src_root(tmp_path, monkeypatch):
    """A copy of lib/ plus a small firmware/ of our own, which deploy compiles instead of the
    repository's (firmware/ has its own tests; these need a tree that holds still)."""
    root = tmp_path / "src"
    shutil.copytree(ROOT / "lib", root / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    fw = root / "firmware"
    (fw / "sensors").mkdir(parents=True)
    (fw / "boot.py").write_text("# boot\n")
    (fw / "main.py").write_text("import app\napp.run()\n")
    (fw / "app.py").write_text("def run():\n    return 42\n")
    (fw / "sensors" / "__init__.py").write_text("")
    (fw / "sensors" / "bme.py").write_text("def read():\n    return 21.5\n")
    monkeypatch.setattr(deploy, "ROOT", root)
    return root


def deploy_to_folder(boards, device, capsys, *extra):
    return run(deploy, ["--board", "devkit", "--boards-dir", boards, "--device-dir", device,
                        "--build-dir", device.parent / "build", *extra], capsys)


# ---- synthetic firmware images (written from the format, independently of esptool) ----------

CHIP_IDS = {"esp32": 0, "esp32s3": 9, "esp32c3": 5}  # the image header's chip id field
OFFSETS = {"esp32": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0}


def esp_image(chip_id, payload=b"\x00" * 16, digest=True):
    """One ESP image: common header, extended header, one segment, checksum, SHA-256."""
    out = struct.pack("<BBBBI", 0xE9, 1, 2, 0x20, 0x40080000)
    out += struct.pack("<BBBBHBHH4sB", 0xEE, 0, 0, 0, chip_id, 0, 0, 0xFFFF, b"\0" * 4,
                       1 if digest else 0)
    out += struct.pack("<II", 0x3FFB0000, len(payload)) + payload
    checksum = 0xEF
    for byte in payload:
        checksum ^= byte
    out += b"\0" * (15 - len(out) % 16) + bytes([checksum])
    return out + (hashlib.sha256(out).digest() if digest else b"")


def partition_table(entries):
    table = b"".join(struct.pack("<2sBBII16sI", b"\xaa\x50", ptype, subtype, offset, size,
                                 name.encode(), 0)
                     for name, ptype, subtype, offset, size in entries)
    table += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(table).digest()
    return table + b"\xff" * (0xC00 - len(table))


def firmware(chip, app_chip=None, offset=None):
    """A merged MicroPython-style download: bootloader, partition table at 0x8000, app."""
    offset = OFFSETS[chip] if offset is None else offset
    image = bytearray(b"\xff" * (0x10000 - offset))
    boot = esp_image(CHIP_IDS[chip], b"BOOT" * 8)
    image[:len(boot)] = boot
    table = partition_table([("nvs", 1, 2, 0x9000, 0x6000), ("phy_init", 1, 1, 0xF000, 0x1000),
                             ("factory", 0, 0, 0x10000, 0x1F0000),
                             ("vfs", 1, 0x81, 0x200000, 0x200000)])
    image[0x8000 - offset:0x8000 - offset + len(table)] = table
    return bytes(image) + esp_image(CHIP_IDS[app_chip or chip], b"MicroPython app!" * 4)


# ---- flash -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chip,board", [("esp32", "devkit"), ("esp32s3", "s3"), ("esp32c3", "c3")])
def test_flash_accepts_a_complete_image_for_the_boards_chip_at_the_boards_offset(
        chip, board, boards, tmp_path, capsys):
    fw = tmp_path / ("%s.bin" % chip)
    fw.write_bytes(firmware(chip))
    status, out, err = run(flash, ["--board", board, "--port", "/dev/ttyUSB7", "--firmware", fw,
                                   "--boards-dir", boards, "--dry-run"], capsys)
    assert status == 0, err
    assert "bootloader" in out and "factory@0x10000" in out and "application" in out
    offset = "0x%x" % OFFSETS[chip]
    assert "-m esptool --chip %s --port /dev/ttyUSB7 erase-flash" % chip in out
    assert "write-flash %s %s" % (offset, fw) in out
    assert "dry run: no device was touched" in out


@pytest.mark.parametrize("image_chip,board,app_chip", [
    ("esp32s3", "devkit", None), ("esp32", "s3", None), ("esp32c3", "s3", None),
    ("esp32", "devkit", "esp32s3"),  # right bootloader, wrong application
])
def test_flash_refuses_firmware_for_another_chip(image_chip, board, app_chip, boards, tmp_path,
                                                 capsys):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(firmware(image_chip, app_chip, offset=OFFSETS[BOARDS[board]["chip"]]))
    status, out, err = run(flash, ["--board", board, "--port", "/dev/ttyUSB0", "--firmware", fw,
                                   "--boards-dir", boards], capsys)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    names = {"esp32": "ESP32", "esp32s3": "ESP32-S3", "esp32c3": "ESP32-C3"}
    assert "firmware for %s" % names[app_chip or image_chip] in err
    assert "chip is %s" % names[BOARDS[board]["chip"]] in err


@pytest.mark.parametrize("content,reason", [
    (b"", "not an ESP firmware image"),
    (b"PK\x03\x04 this is a zip file, not firmware" * 10, "not an ESP firmware image"),
    (bytes(range(256)) * 300, "not an ESP firmware image"),
    # the magic, then a segment longer than the file
    (b"\xe9\x01\x02\x20" + b"\0" * 20 + struct.pack("<II", 0x3FFB0000, 1 << 30) + b"abc",
     "not a valid ESP image"),
    (b"\xe9\x05\x02\x20" + b"\0" * 100, "checksum is wrong"),  # parses, but it is no image
])
def test_flash_refuses_a_file_that_is_not_an_image(content, reason, boards, tmp_path, capsys):
    fw = tmp_path / "junk.bin"
    fw.write_bytes(content)
    status, out, err = run(flash, ["--board", "devkit", "--port", "/dev/ttyUSB0", "--firmware",
                                   fw, "--boards-dir", boards], capsys)
    assert status == 2 and out == ""
    assert reason in err and len(err.strip().splitlines()) == 1


def _damaged(image, at):
    image = bytearray(image)
    image[at] ^= 0xFF
    return bytes(image)


@pytest.mark.parametrize("make,reason", [
    (lambda: _damaged(firmware("esp32"), 40), "damaged"),  # a bootloader byte: checksum
    (lambda: firmware("esp32")[:-10], "damaged or truncated"),  # the app's SHA-256 cut short
    (lambda: firmware("esp32")[:0x9000], "truncated"),  # the application is missing
    (lambda: _damaged(firmware("esp32"), 0x7000 + 5), "partition table's MD5"),
    (lambda: esp_image(0, b"app only" * 4), "no partition table"),  # micropython.bin, not merged
    (lambda: firmware("esp32", offset=0x0), "no partition table"),  # built for another offset
])
def test_flash_refuses_damaged_or_incomplete_images(make, reason, boards, tmp_path, capsys):
    fw = tmp_path / "bad.bin"
    fw.write_bytes(make())
    status, out, err = run(flash, ["--board", "devkit", "--port", "/dev/ttyUSB0", "--firmware",
                                   fw, "--boards-dir", boards], capsys)
    assert status == 2, out
    assert reason in err and len(err.strip().splitlines()) == 1


def test_flash_input_errors_are_one_line_with_the_fix(boards, tmp_path, capsys):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(firmware("esp32"))
    cases = [
        ([], "available: c3, devkit, host, s3"),
        (["--board", "nope"], "no board file"),
        (["--board", "host", "--firmware", fw], "nothing to flash"),
        (["--board", "devkit", "--port", "/dev/x"], "micropython.org/download/ESP32_GENERIC/"),
        (["--board", "s3", "--port", "/dev/x", "--firmware", tmp_path / "missing.bin"],
         "micropython.org/download/ESP32_GENERIC_S3/"),
        (["--board", "devkit", "--firmware", fw], "no serial port given"),
    ]
    for argv, expected in cases:
        status, out, err = run(flash, argv + ["--boards-dir", boards], capsys)
        assert status == 2 and expected in err and len(err.strip().splitlines()) == 1, argv


def test_flash_runs_exactly_the_commands_the_dry_run_prints(boards, tmp_path, capsys,
                                                            monkeypatch):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(firmware("esp32c3"))
    argv = ["--board", "c3", "--port", "/dev/ttyACM0", "--firmware", fw, "--boards-dir", boards]
    status, planned, _ = run(flash, argv + ["--dry-run"], capsys)
    ran = []
    monkeypatch.setattr(flash.subprocess, "run",
                        lambda cmd: ran.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    status, out, err = run(flash, argv, capsys)
    assert status == 0, err
    assert [c[c.index("--chip"):] for c in ran] == [
        ["--chip", "esp32c3", "--port", "/dev/ttyACM0", "erase-flash"],
        ["--chip", "esp32c3", "--port", "/dev/ttyACM0", "--baud", "460800", "write-flash", "0x0",
         str(fw)]]
    for cmd in ran:
        assert " ".join(cmd) in planned
    monkeypatch.setattr(flash.subprocess, "run",
                        lambda cmd: subprocess.CompletedProcess(cmd, 2))
    status, out, err = run(flash, argv, capsys)
    assert status == 1 and "esptool exited with status 2" in err


def test_flash_commands_are_valid_for_the_pinned_esptool(tmp_path):
    """Each command parses (command names and options of esptool 5) and fails only at opening
    the absent serial port."""
    fw = tmp_path / "fw.bin"
    fw.write_bytes(firmware("esp32"))
    for cmd in flash.commands("esp32", str(tmp_path / "no-such-port"), 0x1000, str(fw), 460800):
        out = subprocess.run([sys.executable] + cmd[1:], capture_output=True, text=True,
                             timeout=60)
        text = out.stdout + out.stderr
        assert "Could not open" in text and "no-such-port" in text, text
        assert "No such command" not in text and "No such option" not in text


# ---- .mpy compatibility ----------------------------------------------------------------------


def test_sys_mpy_encoding_matches_the_unix_port_and_mpy_cross(tmp_path):
    text, version, sub = mpy.mpy_cross_version(mpy.mpy_cross_command())
    assert (version, sub) == (6, 3), text  # mpy-cross 1.29 (toolchain.md)
    src = tmp_path / "m.py"
    src.write_text("x = 1\n")
    mpy.compile_py(mpy.mpy_cross_command(), src, tmp_path / "m.mpy", "m.py", "xtensawin")
    header = mpy.read_header(tmp_path / "m.mpy")
    assert header[:3] == (6, 0, 0)  # bytecode only: no arch, so no sub-version either
    assert mpy.encode_sys_mpy(6, 3, "xtensawin") == 6 | (3 | 10 << 2) << 8
    assert mpy.decode_sys_mpy(mpy.encode_sys_mpy(6, 3, "rv32imc")) == (6, 3, 11)
    if MICROPYTHON.exists() and platform.machine() == "x86_64":
        out = micropython("import sys; print(sys.implementation._mpy)", tmp_path)
        assert mpy.decode_sys_mpy(int(out.stdout)) == (6, 3, mpy.ARCHS.index("x64"))


def test_mpy_loader_rule():
    esp32 = mpy.encode_sys_mpy(6, 3, "xtensawin")
    bytecode, native = (6, 0, 0, 31), (6, 3, 10, 31)
    assert mpy.incompatibility(esp32, bytecode, "a") is None
    assert mpy.incompatibility(esp32, native, "a") is None
    assert mpy.incompatibility(mpy.encode_sys_mpy(6, 2, "xtensawin"), bytecode, "a") is None
    assert "v6 but the device loads v5" in mpy.incompatibility(
        mpy.encode_sys_mpy(5, 0, "xtensawin"), bytecode, "a")
    assert "native code for .mpy v6.3 but the device is v6.2" in mpy.incompatibility(
        mpy.encode_sys_mpy(6, 2, "xtensawin"), native, "a")
    assert "xtensawin native code but the device runs rv32imc" in mpy.incompatibility(
        mpy.encode_sys_mpy(6, 3, "rv32imc"), native, "a")
    armv7em = mpy.encode_sys_mpy(6, 3, "armv7em")  # Thumb runs code for older Thumb variants
    assert mpy.incompatibility(armv7em, (6, 3, mpy.ARCHS.index("armv6m"), 31), "a") is None
    assert mpy.incompatibility(armv7em, (6, 3, mpy.ARCHS.index("armv7emdp"), 31), "a")


@pytest.mark.parametrize("device_mpy,reason", [
    (mpy.encode_sys_mpy(5, 0, "xtensawin"), "is .mpy v6 but the device loads v5"),
    (mpy.encode_sys_mpy(6, 3, "rv32imc"), "runs MicroPython for rv32imc, but board 'devkit' has "
                                          "chip esp32"),
    (0, "cannot import .mpy files"),
])
def test_deploy_refuses_a_device_that_cannot_load_the_files(device_mpy, reason, boards, tmp_path,
                                                            capsys):
    device = tmp_path / "device"
    device.mkdir()
    status, out, err = deploy_to_folder(boards, device, capsys, "--device-mpy", device_mpy)
    assert status == 2 and reason in err
    assert list(device.iterdir()) == []  # refused before anything was written


def test_deploy_only_warns_about_an_older_sub_version_for_bytecode(boards, tmp_path, capsys):
    device = tmp_path / "device"
    status, out, err = deploy_to_folder(boards, device, capsys, "--device-mpy",
                                        mpy.encode_sys_mpy(6, 2, "xtensawin"))
    assert status == 0 and "bytecode loads" in err
    assert (device / "lib" / "mqtt" / "client.mpy").exists()


# ---- deploy: plan and sync -------------------------------------------------------------------


def test_deploy_dry_run_prints_files_sizes_and_commands_and_touches_nothing(boards, tmp_path,
                                                                           capsys):
    build = tmp_path / "build"
    status, out, err = run(deploy, ["--board", "devkit", "--port", "/dev/ttyUSB0", "--dry-run",
                                    "--boards-dir", boards, "--build-dir", build], capsys)
    assert status == 0, err
    for name in lib_modules():
        remote = "/lib/mqtt/%s.mpy" % name[:-3]
        size_ = (build / "devkit" / remote.lstrip("/")).stat().st_size
        assert re.search(r"copy +%s +%s +<- \S*lib/mqtt/%s" % (
            format(size_, ","), re.escape(remote), re.escape(name)), out), name
        assert "fs cp -f %s :%s" % (build / "devkit" / remote.lstrip("/"), remote) in out
    assert "/board.json" in out and "1 secret value(s) merged, not shown" in out
    assert "mpremote connect /dev/ttyUSB0 exec" in out and "resume reset" in out
    assert "dry run: nothing was written" in out
    assert WIFI_SECRET not in out + err


def test_deploy_firmware_layout(boards, src_root, tmp_path, capsys):
    device = tmp_path / "device"
    status, out, err = deploy_to_folder(boards, device, capsys)
    assert status == 0, err
    files = sorted(p.relative_to(device).as_posix() for p in device.rglob("*") if p.is_file())
    assert files == sorted([".deploy.json", "board.json", "boot.py", "main.py", "app.mpy",
                            "sensors/__init__.mpy", "sensors/bme.mpy"]
                           + ["lib/mqtt/%s.mpy" % n[:-3] for n in lib_modules()])
    assert (device / "main.py").read_text() == "import app\napp.run()\n"


def test_deploy_merges_secrets_in_order_into_board_json(boards, tmp_path, capsys):
    (tmp_path / "secrets.json").write_text(json.dumps({"mqtt": {"password": "repo-wide"}}))
    (boards / "secrets.json").write_text(json.dumps({"mqtt": {"password": "all-boards",
                                                              "user": "fleet"}}))
    device = tmp_path / "device"
    status, out, err = deploy_to_folder(boards, device, capsys)
    assert status == 0, err
    config = json.loads((device / "board.json").read_text())
    assert config == deep_merge(BOARDS["devkit"], {
        "wifi": {"password": WIFI_SECRET}, "mqtt": {"password": "all-boards", "user": "fleet"}})
    assert "(4 secret value(s) merged, not shown)" in out
    assert WIFI_SECRET not in out + err and "all-boards" not in out + err


def _copied(out):
    return re.findall(r"^\[\d+/\d+\] (\S+)", out, re.M)


def test_deploy_copies_only_what_changed(boards, src_root, tmp_path, capsys):
    device = tmp_path / "device"
    status, out, _ = deploy_to_folder(boards, device, capsys)
    assert status == 0 and len(_copied(out)) == len(lib_modules()) + 6
    manifest = (device / ".deploy.json").stat().st_mtime_ns

    status, out, _ = deploy_to_folder(boards, device, capsys)
    assert status == 0 and _copied(out) == [] and "0 copied" in out
    assert (device / ".deploy.json").stat().st_mtime_ns == manifest  # not even the manifest

    codec = src_root / "lib" / "mqtt" / "codec.py"
    codec.write_text(codec.read_text() + "\n_DEPLOY_TEST = 1\n")
    status, out, _ = deploy_to_folder(boards, device, capsys)
    assert _copied(out) == ["/lib/mqtt/codec.mpy"]

    (src_root / "firmware" / "main.py").write_text("import app\napp.run()  # v2\n")
    (boards / "devkit.secrets.json").write_text(json.dumps({"wifi": {"password": "rotated!"}}))
    status, out, _ = deploy_to_folder(boards, device, capsys)
    assert sorted(_copied(out)) == ["/board.json", "/main.py"]

    # Deleted or changed behind deploy's back (even keeping the size): the device's hash tells.
    (device / "lib" / "mqtt" / "store.mpy").unlink()
    (device / "app.mpy").write_bytes(b"M\x06\x00\x1f truncated")
    bme = device / "sensors" / "bme.mpy"
    bme.write_bytes(bytes(len(bme.read_bytes())))
    status, out, _ = deploy_to_folder(boards, device, capsys)
    assert sorted(_copied(out)) == ["/app.mpy", "/lib/mqtt/store.mpy", "/sensors/bme.mpy"]
    status, out, _ = deploy_to_folder(boards, device, capsys, "--force")
    assert len(_copied(out)) == len(lib_modules()) + 6


def test_a_deploy_cut_short_is_completed_by_the_next(boards, tmp_path, capsys, monkeypatch):
    """E.g. the hardware watchdog resets the board mid-deploy: what was copied stays copied."""
    device = tmp_path / "device"
    put, calls = deploy.FolderDevice.put, []

    def flaky(self, local, remote):
        calls.append(remote)
        if len(calls) == 4:
            raise deploy.DeviceError("board reset")
        put(self, local, remote)

    monkeypatch.setattr(deploy.FolderDevice, "put", flaky)
    status, out, err = deploy_to_folder(boards, device, capsys)
    assert status == 1 and "run deploy again" in err
    assert not (device / ".deploy.json").exists()
    monkeypatch.setattr(deploy.FolderDevice, "put", put)
    status, out, err = deploy_to_folder(boards, device, capsys)
    assert status == 0 and _copied(out)[0] == calls[3]
    assert len(_copied(out)) == len(lib_modules()) + 6 - 3


def test_deploy_removes_only_its_own_stale_files_and_shadowing_sources(boards, src_root,
                                                                       tmp_path, capsys):
    device = tmp_path / "device"
    (device / "data").mkdir(parents=True)
    (device / "data" / "mqtt.ring").write_bytes(b"\xff" * 4096)  # the app's store: not ours
    (device / "lib" / "mqtt").mkdir(parents=True)
    (device / "lib" / "mqtt" / "codec.py").write_text("# an old copy, imported before .mpy\n")
    status, out, _ = deploy_to_folder(boards, device, capsys)
    assert status == 0 and re.search(r"remove +/lib/mqtt/codec\.py", out)
    assert not (device / "lib" / "mqtt" / "codec.py").exists()

    (src_root / "firmware" / "sensors" / "bme.py").unlink()
    status, out, _ = deploy_to_folder(boards, device, capsys)
    assert re.search(r"remove +/sensors/bme\.mpy", out) and _copied(out) == []
    assert not (device / "sensors" / "bme.mpy").exists()
    assert "/sensors/bme.mpy" not in json.loads((device / ".deploy.json").read_text())["files"]
    assert (device / "data" / "mqtt.ring").read_bytes() == b"\xff" * 4096


# ---- deploy to a board with the library and the firmware frozen (--frozen) ------------------
# The folder device's image "has" the modules named by --device-frozen (default: all it needs);
# on the unix port and through mpremote the probe's help('modules') is read (further below).

FIRMWARE_MODULES = ["app", "sensors/__init__", "sensors/bme"]  # src_root's firmware, compiled


def frozen_names():
    return sorted(["mqtt/" + n[:-3] for n in lib_modules()] + FIRMWARE_MODULES)


def _tree(device):
    """Every file and directory under the folder device: {relative path: bytes or None}."""
    return {p.relative_to(device).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(device.rglob("*"))}


def _removed(out):
    return re.findall(r"^  remove +(\S+)", out, re.M)


def test_frozen_deploy_copies_only_what_the_image_does_not_hold(boards, tmp_path, capsys):
    board = dict(BOARDS["devkit"], mqtt={"host": "h", "tls": {"ca": "/certs/ca.pem",
                                                              "cert": "/certs/me.crt",
                                                              "key": "/certs/me.key"}})
    (boards / "devkit.json").write_text(json.dumps(board))
    (boards / "certs").mkdir()
    for name in ("ca.pem", "me.crt", "me.key"):
        (boards / "certs" / name).write_text("PEM " + name)
    device = tmp_path / "device"
    status, out, err = deploy_to_folder(boards, device, capsys, "--frozen")
    assert status == 0, err
    assert "frozen: %d modules come from the board's image, not copied" % len(frozen_names()) in out
    assert "image: all %d modules frozen in it" % len(frozen_names()) in out
    files = ["board.json", "boot.py", "main.py", "certs/ca.pem", "certs/me.crt", "certs/me.key"]
    assert sorted(_copied(out)) == sorted("/" + f for f in files)
    assert sorted(p for p, data in _tree(device).items() if data is not None) == sorted(
        files + [".deploy.json"])
    assert sorted(json.loads((device / ".deploy.json").read_text())["files"]) == sorted(
        "/" + f for f in files)
    assert not list((tmp_path / "build").rglob("*.mpy"))  # the frozen modules are not compiled
    status, out, err = deploy_to_folder(boards, device, capsys, "--frozen")
    assert status == 0 and _copied(out) == [] and _removed(out) == []


def test_frozen_deploy_to_the_unix_port_keeps_the_host_board_layer(boards, src_root, tmp_path,
                                                                   capsys):
    """manifest_firmware.py does not freeze hostboard.py and hostsim.py: on the unix port (the
    frozen 32-bit port) they are still deployed, as .mpy."""
    for name in ("hostboard.py", "hostsim.py"):
        (src_root / "firmware" / name).write_text("X = 1\n")
    device = tmp_path / "hd"
    status, out, err = run(deploy, ["--board", "host", "--boards-dir", boards, "--device-dir",
                                    device, "--build-dir", tmp_path / "hb", "--frozen"], capsys)
    assert status == 0, err
    assert sorted(_copied(out)) == ["/board.json", "/boot.py", "/hostboard.mpy", "/hostsim.mpy",
                                    "/main.py"]
    assert "frozen: %d modules" % len(frozen_names()) in out


def test_frozen_deploy_removes_the_copies_that_would_shadow_the_image(boards, tmp_path, capsys):
    """What a plain deploy left (firmware .mpy in /, before .frozen in sys.path; lib/mqtt .mpy in
    /lib, after it) and source copies of frozen modules go, one line each, with the directories
    they leave empty but /lib; the rest of the file system stays."""
    device = tmp_path / "device"
    status, out, err = deploy_to_folder(boards, device, capsys)
    assert status == 0, err
    plain = _tree(device)
    (device / "app.py").write_text("# copied by hand\n")
    (device / "lib" / "mqtt" / "codec.py").write_text("# mip install of the sources\n")
    (device / "lib" / "other.mpy").write_bytes(b"M\x06\x00\x1f not ours")
    (device / "data").mkdir()
    (device / "data" / "mqtt.ring").write_bytes(b"\xff" * 4096)

    status, out, err = deploy_to_folder(boards, device, capsys, "--frozen")
    assert status == 0, err
    stale = sorted(["/app.mpy", "/app.py", "/sensors/__init__.mpy", "/sensors/bme.mpy",
                    "/lib/mqtt/codec.py"] + ["/lib/mqtt/%s.mpy" % n[:-3] for n in lib_modules()])
    assert _removed(out) == stale + ["/lib/mqtt/", "/sensors/"]
    assert "%d to remove" % len(stale) in out and "%d removed" % len(stale) in out
    assert _copied(out) == []  # boot.py, main.py and board.json are already there
    assert sorted(_tree(device)) == [".deploy.json", "board.json", "boot.py", "data",
                                     "data/mqtt.ring", "lib", "lib/other.mpy", "main.py"]
    assert sorted(json.loads((device / ".deploy.json").read_text())["files"]) == [
        "/board.json", "/boot.py", "/main.py"]
    status, out, err = deploy_to_folder(boards, device, capsys, "--frozen")
    assert status == 0 and _removed(out) == [] and "0 removed" in out

    # A plain deploy is what it was: it puts everything back as .mpy and removes nothing.
    status, out, err = deploy_to_folder(boards, device, capsys)
    assert status == 0 and _removed(out) == [] and "frozen:" not in out and "image:" not in out
    tree = _tree(device)
    assert {p: d for p, d in tree.items() if p in plain} == plain
    assert sorted(set(tree) - set(plain)) == ["data", "data/mqtt.ring", "lib/other.mpy"]


@pytest.mark.parametrize("listed,missing", [
    ("", "lacks %d of the %d modules" % (len(frozen_names()), len(frozen_names()))),
    ("mqtt/client,sensors/bme,app", "lacks %d of the %d modules" % (len(frozen_names()) - 3,
                                                                    len(frozen_names()))),
    (",".join(n for n in frozen_names() if n != "sensors/bme"),
     "lacks 1 of the %d modules that must be frozen in it (sensors/bme)" % len(frozen_names())),
])
def test_frozen_deploy_refuses_an_image_without_the_frozen_modules(listed, missing, boards,
                                                                   tmp_path, capsys):
    device = tmp_path / "device"
    status, out, err = deploy_to_folder(boards, device, capsys)
    assert status == 0, err
    before = _tree(device)
    status, out, err = deploy_to_folder(boards, device, capsys, "--frozen", "--device-frozen",
                                        listed)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert missing in err and "manifest_firmware.py" in err and "FROZEN=1" in err
    assert _tree(device) == before  # refused before anything was written or removed


def test_frozen_deploy_dry_run_lists_the_image_and_compiles_nothing(boards, tmp_path, capsys):
    build = tmp_path / "build"
    argv = ["--board", "devkit", "--port", "/dev/ttyUSB0", "--dry-run", "--boards-dir", boards,
            "--build-dir", build]
    status, out, err = run(deploy, argv + ["--frozen"], capsys)
    assert status == 0, err
    assert sorted(_copied_in_plan(out)) == ["/board.json", "/boot.py", "/main.py"]
    assert 'help("modules")' in out and "image: not checked (dry run)" in out
    assert re.findall(r"fs cp -f \S+ :(\S+)", out) == [
        "/boot.py", "/main.py", "/board.json", "/.deploy.json"]
    assert not list(build.rglob("*.mpy")) and "dry run: nothing was written" in out
    # without --frozen: not a word of it
    status, out, err = run(deploy, argv, capsys)
    assert status == 0 and "help(" not in out and "frozen:" not in out and "image:" not in out
    status, out, err = deploy_to_folder(boards, tmp_path / "d", capsys, "--device-frozen", "app")
    assert status == 2 and "--device-frozen goes with --device-dir and --frozen" in err


def _copied_in_plan(out):
    return re.findall(r"^  copy +[\d,]+ +(\S+)", out, re.M)


@needs_micropython
def test_deployed_mpy_imports_on_the_unix_port(boards, tmp_path, capsys):
    device = tmp_path / "device"
    status, _, err = deploy_to_folder(boards, device, capsys)
    assert status == 0, err
    out = micropython("import mqtt, mqtt.ring, mqtt.codec\n"
                      "print(mqtt.__version__, mqtt.codec.__file__, mqtt.MQTTClient.__name__)",
                      device / "lib", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    version, where, name = out.stdout.split()
    assert where.endswith("codec.mpy") and name == "MQTTClient"
    assert version == re.search(r'__version__ = "(.+)"',
                                (ROOT / "lib/mqtt/__init__.py").read_text()).group(1)


@needs_micropython
def test_device_scripts_run_on_micropython_like_the_folder_device(boards, src_root, tmp_path,
                                                                  capsys):
    device = tmp_path / "device"
    deploy_to_folder(boards, device, capsys)
    (device / "lib" / "mqtt" / "codec.py").write_text("# shadow\n")
    paths = ["/lib/mqtt/codec.py", "/lib/mqtt/nope.py"]
    out = micropython(deploy.probe_script(str(device), paths), tmp_path)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith(deploy.PROBE_MARK)]
    assert out.returncode == 0 and line, out.stderr
    on_mpy = json.loads(line[0][len(deploy.PROBE_MARK):])
    folder = deploy.FolderDevice(device, 0).probe(paths)
    assert on_mpy["manifest"] == folder["manifest"] and on_mpy["files"] == folder["files"]
    assert on_mpy["files"]["/lib/mqtt/codec.py"] == [9, hashlib.sha256(b"# shadow\n").hexdigest()]
    assert on_mpy["files"]["/lib/mqtt/nope.py"] is None
    assert len(on_mpy["files"]) == len(paths) + len(on_mpy["manifest"]["files"])
    assert on_mpy["version"][:2] >= [1, 25]

    micropython(deploy.mkdirs_script(str(device), ["/a", "/a/b", "/lib"]), tmp_path)
    micropython(deploy.remove_script(str(device), ["/lib/mqtt/codec.py", "/missing"]), tmp_path)
    assert (device / "a" / "b").is_dir() and not (device / "lib" / "mqtt" / "codec.py").exists()


@needs_micropython
def test_frozen_probe_and_removal_scripts_run_on_micropython(boards, src_root, tmp_path, capsys):
    """The frozen probe's help('modules') as the unix port prints it (its image freezes asyncio)
    reads back as names; the removal script removes directories only once they are empty."""
    device = tmp_path / "device"
    deploy_to_folder(boards, device, capsys)
    paths = ["/app.mpy", "/app.py", "/main.py"]
    out = micropython(deploy.probe_script(str(device), paths, frozen=True), tmp_path)
    assert out.returncode == 0, out.stderr
    probe = deploy.parse_probe(out.stdout, frozen=True)
    assert {"asyncio/__init__", "asyncio/core", "json", "sys"} <= set(probe["frozen"])
    assert "Plus" not in probe["frozen"] and deploy.PROBE_MARK.strip() not in probe["frozen"]
    assert probe["files"] == deploy.FolderDevice(device, 0).probe(paths, frozen=True)["files"]
    plain = micropython(deploy.probe_script(str(device), paths), tmp_path)
    assert "frozen" not in deploy.parse_probe(plain.stdout) and "asyncio" not in plain.stdout

    (device / "sensors" / "keep.txt").write_text("not ours")
    files = ["/lib/mqtt/%s.mpy" % n[:-3] for n in lib_modules()] + ["/sensors/bme.mpy",
                                                                    "/sensors/__init__.mpy"]
    micropython(deploy.remove_script(str(device), files, ["/lib/mqtt", "/sensors"]), tmp_path)
    assert not (device / "lib" / "mqtt").exists() and (device / "lib").is_dir()
    assert sorted(p.name for p in (device / "sensors").iterdir()) == ["keep.txt"]


# ---- deploy through the real mpremote CLI, against a fake board ------------------------------

DRIVER = r"""
import sys, io
rd, wr, g = sys.stdin.buffer, sys.stdout.buffer, {}
while True:
    n = rd.readline()
    if not n:
        break
    n = int(n)
    if n < 0:
        g = {}
        continue
    code = b""
    while len(code) < n:
        code += rd.read(n - len(code))
    err = b""
    try:
        exec(code.decode(), g)
    except BaseException as e:
        s = io.StringIO()
        sys.print_exception(e, s)
        err = s.getvalue().encode()
    wr.write(b"\x04" + err + b"\x04")
"""


class FakeBoard:
    """A MicroPython board on a pseudo-terminal (a serial port to mpremote): it speaks the raw
    REPL and raw-paste protocols, and runs the code on the unix port in one interpreter whose
    globals live on between commands, as a board's do. It reports `pretend_mpy` as its
    sys.implementation._mpy to deploy's probe, to pass for an ESP32, and, given `pretend_frozen`,
    those names in its help('modules') too, to pass for an image with them frozen. `micropython`
    is the unix port it runs (e.g. the one with the library and the firmware frozen)."""
    BANNER = b"raw REPL; CTRL-B to exit\r\n>"
    WINDOW = 256

    def __init__(self, pretend_mpy=None, pretend_frozen=None, micropython=MICROPYTHON):
        self.pretend_mpy, self.pretend_frozen = pretend_mpy, pretend_frozen
        self.resets, self.soft_resets = 0, 0
        self.proc = subprocess.Popen([str(micropython), "-c", DRIVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self.master, self.slave = os.openpty()  # the slave stays open between mpremote runs
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.stopped, self.pending = False, b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self):
        self.stopped = True
        self.thread.join(timeout=5)
        os.close(self.master)
        os.close(self.slave)
        self.proc.stdin.close()
        self.proc.wait(timeout=10)

    def _call(self, n, code=b""):
        self.proc.stdin.write(b"%d\n" % n + code)
        self.proc.stdin.flush()

    def _run(self, code):
        if "machine.reset()" in code:  # `mpremote reset`; the unix port has no machine.reset
            self.resets += 1
            self._call(-1)
            return b"", b""
        self._call(len(code.encode()), code.encode())
        parts = [b"", b""]
        for i in range(2):
            while True:
                c = self.proc.stdout.read(1)
                if c in (b"\x04", b""):
                    break
                parts[i] += c
        lines = []
        for line in parts[0].splitlines(keepends=True):
            if self.pretend_mpy is not None and line.startswith(deploy.PROBE_MARK.encode()):
                probe = json.loads(line[len(deploy.PROBE_MARK):])
                probe["mpy"] = self.pretend_mpy
                line = (deploy.PROBE_MARK + json.dumps(probe) + "\n").encode()
            lines.append(line)
            if self.pretend_frozen and line.strip() == deploy.FROZEN_MARK.encode():
                lines.append((" ".join(self.pretend_frozen) + "\n").encode())
        return b"".join(lines), parts[1]

    def _byte(self):
        while not self.pending:
            if self.stopped:
                raise EOFError
            if select.select([self.master], [], [], 0.1)[0]:
                self.pending = os.read(self.master, 4096)
        c, self.pending = self.pending[0], self.pending[1:]
        return c

    def _send(self, data):
        while data:
            data = data[os.write(self.master, data):]

    def _serve(self):
        try:
            self._session()
        except (EOFError, OSError):
            pass

    def _session(self):
        byte, send = self._byte, self._send
        raw, buf = False, bytearray()
        while True:
            c = byte()
            if c == 0x01:  # ctrl-A: raw REPL
                raw, buf = True, bytearray()
                send(self.BANNER)
            elif c == 0x02:  # ctrl-B: friendly REPL
                raw = False
            elif c == 0x03:  # ctrl-C
                buf = bytearray()
            elif not raw:
                continue
            elif c == 0x04 and not buf:  # ctrl-D on an empty line: soft reset
                self.soft_resets += 1
                self._call(-1)
                send(b"soft reboot\r\n" + self.BANNER)
            elif c == 0x04:
                send(b"OK")
                out, err = self._run(buf.decode())
                buf = bytearray()
                send(out + b"\x04" + err + b"\x04>")
            elif c == 0x05 and not buf:  # ctrl-E A ctrl-A: raw paste, flow controlled
                if byte() != ord("A") or byte() != 0x01:
                    continue
                send(b"R\x01" + struct.pack("<H", self.WINDOW))
                code, n = bytearray(), 0
                while True:
                    c = byte()
                    if c == 0x04:
                        break
                    code.append(c)
                    n += 1
                    if n % self.WINDOW == 0:
                        send(b"\x01")
                send(b"\x04")
                out, err = self._run(code.decode())
                send(out + b"\x04" + err + b"\x04>")
            else:
                buf.append(c)


@pytest.fixture
def emulated(monkeypatch, tmp_path):
    """deploy's MpremoteDevice, with every device path under tmp_path/device (the unix port
    runs on this machine's file system)."""
    device = tmp_path / "device"
    device.mkdir()

    class Emulated(deploy.MpremoteDevice):
        def __init__(self, port):
            super().__init__(port, root=str(device))

    monkeypatch.setattr(deploy, "MpremoteDevice", Emulated)
    return device


@needs_micropython
def test_deploy_through_mpremote_to_a_fake_board(boards, src_root, emulated, tmp_path, capsys):
    board = FakeBoard(pretend_mpy=mpy.encode_sys_mpy(6, 3, "xtensawin"))
    try:
        argv = ["--board", "devkit", "--port", board.port, "--boards-dir", boards,
                "--build-dir", tmp_path / "build"]
        status, out, err = run(deploy, argv, capsys)
        assert status == 0, out + err
        assert len(_copied(out)) == len(lib_modules()) + 5 + 1 and board.resets == 1
        staged = tmp_path / "build" / "devkit"
        for path in staged.rglob("*"):
            if path.is_file():
                assert (emulated / path.relative_to(staged)).read_bytes() == path.read_bytes()
        assert json.loads((emulated / "board.json").read_text())["wifi"]["password"] == WIFI_SECRET

        status, out, err = run(deploy, argv, capsys)
        assert status == 0 and _copied(out) == [] and board.resets == 2
        assert board.soft_resets == 2  # once per deploy, by the first mpremote command
    finally:
        board.close()


@needs_micropython
@pytest.mark.skipif(platform.machine() != "x86_64", reason="expects the unix port to be x64")
def test_deploy_through_mpremote_refuses_the_wrong_board(boards, emulated, tmp_path, capsys):
    board = FakeBoard()  # reports the unix port's own _mpy: x64, not an ESP32
    try:
        status, out, err = run(deploy, ["--board", "devkit", "--port", board.port, "--boards-dir",
                                        boards, "--build-dir", tmp_path / "build"], capsys)
        assert status == 2 and "runs MicroPython for x64, but board 'devkit' has chip esp32" in err
        assert list(emulated.iterdir()) == [] and board.resets == 0
    finally:
        board.close()


@needs_micropython
def test_frozen_deploy_through_mpremote_to_a_fake_board(boards, src_root, emulated, tmp_path,
                                                        capsys):
    """Stale copies of frozen modules on the board go, boot.py, main.py and the config come; a
    board whose help('modules') (the unix port's own: asyncio, ssl...) lacks them is refused."""
    esp32 = mpy.encode_sys_mpy(6, 3, "xtensawin")
    for stale in ("app.mpy", "lib/mqtt/codec.mpy", "sensors/bme.mpy", "sensors/__init__.mpy"):
        (emulated / stale).parent.mkdir(parents=True, exist_ok=True)
        (emulated / stale).write_bytes(b"M\x06\x00\x1f stale")
    argv = ["--board", "devkit", "--port", None, "--boards-dir", boards, "--build-dir",
            tmp_path / "build", "--frozen"]
    board = FakeBoard(pretend_mpy=esp32)  # MicroPython for an ESP32, but none of ours frozen
    try:
        argv[3] = board.port
        status, out, err = run(deploy, argv, capsys)
        assert status == 2 and len(err.strip().splitlines()) == 1, out + err
        assert "lacks %d of the %d modules" % (len(frozen_names()), len(frozen_names())) in err
        assert board.resets == 0 and (emulated / "app.mpy").exists()
    finally:
        board.close()
    board = FakeBoard(pretend_mpy=esp32, pretend_frozen=frozen_names())
    try:
        argv[3] = board.port
        status, out, err = run(deploy, argv, capsys)
        assert status == 0, out + err
        assert sorted(_copied(out)) == ["/board.json", "/boot.py", "/main.py"]
        assert _removed(out) == ["/app.mpy", "/lib/mqtt/codec.mpy", "/sensors/__init__.mpy",
                                 "/sensors/bme.mpy", "/lib/mqtt/", "/sensors/"]
        assert sorted(_tree(emulated)) == [".deploy.json", "board.json", "boot.py", "lib",
                                           "main.py"]
        assert board.resets == 1
        status, out, err = run(deploy, argv, capsys)
        assert status == 0 and _copied(out) == [] and _removed(out) == [] and board.resets == 2
    finally:
        board.close()


MICROPYTHON32_FROZEN = Path(os.environ.get("MICROPYTHON32_FROZEN")
                            or ROOT / "build" / "bin" / "micropython32-frozen")


def _frozen_port_problem():
    if not MICROPYTHON32_FROZEN.exists():
        return "no frozen 32-bit port (make micropython32-frozen)"
    import bench  # tools/ is on sys.path

    return bench.frozen_port_problem()


@needs_micropython
def test_frozen_deploy_accepts_the_image_manifest_firmware_py_builds(boards, emulated, tmp_path,
                                                                     capsys, monkeypatch):
    """The board is the 32-bit unix port with manifest_firmware.py frozen (make
    micropython32-frozen): its own help('modules') holds every module --frozen leaves to it."""
    problem = _frozen_port_problem()
    if problem:
        pytest.skip(problem)
    monkeypatch.setattr(deploy, "ROOT", ROOT)  # the repository's lib/ and firmware/, as frozen
    board = FakeBoard(pretend_mpy=mpy.encode_sys_mpy(6, 3, "xtensawin"),
                      micropython=MICROPYTHON32_FROZEN)
    try:
        status, out, err = run(deploy, ["--board", "devkit", "--port", board.port, "--frozen",
                                        "--boards-dir", boards, "--build-dir", tmp_path / "build"],
                               capsys)
        assert status == 0, out + err
        names = [deploy.module_name(r) for r in deploy.frozen_remotes(BOARDS["devkit"])]
        assert sorted(names) == sorted(["mqtt/" + n[:-3] for n in lib_modules()]
                                       + [n[:-3] for n in _firmware_modules()])
        assert "image: all %d modules frozen in it" % len(names) in out
        assert sorted(_copied(out)) == ["/board.json", "/boot.py", "/main.py"]
    finally:
        board.close()


def test_deploy_reports_a_port_without_micropython(boards, tmp_path, capsys):
    status, out, err = run(deploy, ["--board", "devkit", "--port", tmp_path / "no-such-port",
                                    "--boards-dir", boards, "--build-dir", tmp_path / "b"], capsys)
    assert status == 1 and "mpremote failed" in err


# ---- board files and secrets -----------------------------------------------------------------


@pytest.mark.parametrize("board,secrets,reason", [
    ({"board": "x", "flash": {"offset": "0x1000"}}, None, '"chip" is None'),
    ({"board": "x", "chip": "esp8266"}, None, "expected one of esp32, esp32s3, esp32c3, unix"),
    ({"board": "x", "chip": "esp32"}, None, '"flash": {"offset": "0x..."}'),
    ({"board": "x", "chip": "esp32", "flash": {"offset": 4096}}, None, "hex string"),
    ({"chip": "unix"}, None, '"board" must be a non-empty string'),
    ({"board": "x", "chip": "unix"}, {"chip": "esp32"}, "a secrets file may not set chip"),
    ({"board": "x", "chip": "unix"}, [1, 2], "must hold a JSON object"),
])
def test_deploy_validates_the_board_file_and_secrets(board, secrets, reason, tmp_path, capsys):
    d = tmp_path / "boards"
    d.mkdir()
    (d / "x.json").write_text(json.dumps(board))
    if secrets is not None:
        (d / "x.secrets.json").write_text(json.dumps(secrets))
    status, out, err = run(deploy, ["--board", "x", "--boards-dir", d, "--device-dir",
                                    tmp_path / "dev", "--build-dir", tmp_path / "b"], capsys)
    assert status == 2 and reason in err and len(err.strip().splitlines()) == 1


def test_deploy_validates_against_the_schema_without_printing_secrets(boards, tmp_path, capsys):
    schema = {"type": "object", "required": ["board", "chip", "wifi"],
              "properties": {"wifi": {"type": "object", "required": ["ssid", "password"],
                                      "properties": {"password": {"type": "string",
                                                                  "minLength": 64}}}}}
    (boards / "schema.json").write_text(json.dumps(schema))
    status, out, err = deploy_to_folder(boards, tmp_path / "device", capsys)
    assert status == 2 and "wifi.password: fails 'minLength'" in err
    assert WIFI_SECRET not in err
    schema["properties"]["wifi"]["properties"]["password"]["minLength"] = 8
    (boards / "schema.json").write_text(json.dumps(schema))
    status, out, err = deploy_to_folder(boards, tmp_path / "device", capsys)
    assert status == 0, err
    status, out, err = run(deploy, ["--board", "s3", "--boards-dir", boards, "--dry-run"], capsys)
    assert status == 2 and "'wifi' is a required property" in err


def test_deploy_warns_about_secrets_in_the_board_file(boards, tmp_path, capsys):
    board = dict(BOARDS["devkit"], mqtt={"host": "h", "password": "in-the-open"})
    (boards / "devkit.json").write_text(json.dumps(board))
    status, out, err = deploy_to_folder(boards, tmp_path / "device", capsys)
    assert status == 0 and "holds secret values (mqtt.password)" in err


def test_deploy_warns_about_secrets_files_git_would_commit(boards, tmp_path, capsys):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q", str(tmp_path)], check=True)
    status, out, err = deploy_to_folder(boards, tmp_path / "device", capsys)
    assert status == 0 and "devkit.secrets.json is not git-ignored" in err
    (tmp_path / ".gitignore").write_text("boards/*.secrets.json\n")
    status, out, err = deploy_to_folder(boards, tmp_path / "device", capsys)
    assert "git" not in err
    subprocess.run(git + ["add", "-f", "boards/devkit.secrets.json"], cwd=tmp_path, check=True)
    status, out, err = deploy_to_folder(boards, tmp_path / "device", capsys)
    assert "devkit.secrets.json is tracked by git" in err


def test_deploy_copies_the_certificates_and_leaves_out_the_host_board_layer(boards, src_root, tmp_path,
                                                                           capsys):
    """mqtt.tls names device paths; /X comes from boards/X.  hostboard.py and hostsim.py (the
    host's board layer) are never loaded on a board: they stay behind."""
    for name in ("hostboard.py", "hostsim.py", "esp32board.py"):
        (src_root / "firmware" / name).write_text("X = 1\n")
    board = dict(BOARDS["devkit"], mqtt={"host": "h", "tls": {"ca": "/certs/ca.pem", "cert": "/certs/me.crt",
                                                              "key": "/certs/me.key"}})
    (boards / "devkit.json").write_text(json.dumps(board))
    (boards / "certs").mkdir()
    for name in ("ca.pem", "me.crt"):
        (boards / "certs" / name).write_text("PEM " + name)
    device = tmp_path / "device"
    status, out, err = deploy_to_folder(boards, device, capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "mqtt.tls.key: no such file %s (for /certs/me.key on the device" % (boards / "certs" / "me.key") in err
    (boards / "certs" / "me.key").write_text("PEM me.key")
    status, out, err = deploy_to_folder(boards, device, capsys)
    assert status == 0, err
    for name in ("ca.pem", "me.crt", "me.key"):
        assert (device / "certs" / name).read_text() == "PEM " + name
    assert "(mqtt.tls.key)" in out
    assert (device / "esp32board.mpy").exists()
    assert not (device / "hostboard.mpy").exists() and not (device / "hostsim.mpy").exists()
    # the unix port's board layer is the host's: there they are deployed
    host = dict(BOARDS["host"], mqtt={"host": "h"})
    (boards / "host.json").write_text(json.dumps(host))
    status, out, err = run(deploy, ["--board", "host", "--boards-dir", boards, "--device-dir", tmp_path / "hd",
                                    "--build-dir", tmp_path / "hb"], capsys)
    assert status == 0 and (tmp_path / "hd" / "hostboard.mpy").exists(), err


def test_deep_merge():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"c": 3, "e": 4}, "d": {"x": 1}}) \
        == {"a": {"b": 1, "c": 3, "e": 4}, "d": {"x": 1}}


# ---- packaging -------------------------------------------------------------------------------


def _package():
    return json.loads((ROOT / "package.json").read_text())


def _version():
    return re.search(r'__version__ = "(.+)"', (ROOT / "lib/mqtt/__init__.py").read_text()).group(1)


def test_package_json_lists_every_library_module_with_well_formed_urls():
    package = _package()
    assert set(package) == {"urls", "deps", "version"} and package["deps"] == []
    assert package["version"] == _version()
    targets = [target for target, _ in package["urls"]]
    assert sorted(targets) == ["mqtt/" + n for n in lib_modules()]
    assert len(set(targets)) == len(targets)
    for target, url in package["urls"]:
        # Relative to package.json, so mip.install("github:OWNER/REPO") works from any fork.
        assert url == "lib/" + target and (ROOT / url).is_file()
        # What the device's mip and mpremote make of it (base = the package.json's directory):
        full = "https://raw.githubusercontent.com/OWNER/REPO/HEAD/" + url
        parsed = urllib.parse.urlsplit(full)
        assert parsed.scheme == "https" and parsed.netloc and " " not in full


def test_package_json_installs_with_mpremote_mip_and_imports(tmp_path):
    """mpremote's own mip code resolves the relative URLs of our package.json (as a local file)
    and installs into a fake device file system; the result imports on the unix port."""
    target = tmp_path / "lib"
    target.mkdir()
    mip_install(ROOT / "package.json", target)
    assert sorted(p.name for p in (target / "mqtt").iterdir()) == lib_modules()
    if MICROPYTHON.exists():
        out = micropython("import mqtt; print(mqtt.__version__)", target, cwd=tmp_path)
        assert out.stdout.strip() == _version(), out.stderr


def _run_manifest(path):
    """Execute a manifest with stand-ins for MicroPython's manifest functions; returns the
    frozen target paths (what `import` names) and the metadata."""
    frozen, meta = [], {}
    base = path.parent

    def package(name, files=None, base_path=".", opt=None):
        pkg_dir = base / base_path / name
        if files is None:
            files = [p.relative_to(pkg_dir).as_posix() for p in pkg_dir.rglob("*.py")]
        frozen.extend("%s/%s" % (name, f) for f in files)

    def module(name, base_path=".", opt=None):
        assert (base / base_path / name).is_file()
        frozen.append(name)

    def include(manifest_path, **kwargs):
        frozen.extend(_run_manifest(base / manifest_path)[0])

    def metadata(**kwargs):
        meta.update(kwargs)

    code = compile(path.read_text(), str(path), "exec")
    exec(code, {"package": package, "module": module, "include": include, "metadata": metadata,
                "require": lambda *a, **k: None, "options": None})
    return sorted(frozen), meta


def test_frozen_manifest_lists_every_library_module():
    frozen, meta = _run_manifest(ROOT / "manifest.py")
    assert frozen == ["mqtt/" + n for n in lib_modules()]
    assert meta["version"] == _version() == _package()["version"]


def _firmware_modules():
    """What a frozen production image carries of firmware/: every module `make deploy` puts on
    an ESP32 but boot.py and main.py (run by name from the file system)."""
    return sorted(p.name for p in (ROOT / "firmware").glob("*.py")
                  if p.name not in deploy.KEEP_SOURCE + deploy.HOST_ONLY)


def test_firmware_manifest_freezes_the_library_and_the_deployed_firmware_modules():
    frozen, _ = _run_manifest(ROOT / "manifest_firmware.py")
    assert frozen == sorted(["mqtt/" + n for n in lib_modules()] + _firmware_modules())


def _micropython_source_tarball():
    cache = os.environ.get("CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ringmqtt")
    found = sorted(Path(cache, "src").glob("micropython_*.orig.tar.xz"))
    return found[-1] if found else None


def test_frozen_manifest_with_micropythons_own_manifest_processor(tmp_path):
    """tools/manifestfile.py of the MicroPython source that `make micropython` downloaded."""
    tarball = _micropython_source_tarball()
    if tarball is None:
        pytest.skip("no cached MicroPython source (make micropython)")
    import tarfile

    with tarfile.open(tarball) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/tools/manifestfile.py"))
        (tmp_path / "manifestfile.py").write_bytes(tar.extractfile(member).read())
    spec = importlib.util.spec_from_file_location("mp_manifestfile", tmp_path / "manifestfile.py")
    manifestfile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(manifestfile)
    manifest = manifestfile.ManifestFile(manifestfile.MODE_FREEZE, dict.fromkeys(
        ("MPY_DIR", "MPY_LIB_DIR", "PORT_DIR", "BOARD_DIR"), str(tmp_path)))
    manifest.execute(str(ROOT / "manifest.py"))
    frozen = sorted(out.target_path for out in manifest.files())
    assert frozen == ["mqtt/" + n for n in lib_modules()]
    assert all(out.kind == manifestfile.KIND_FREEZE_AS_MPY for out in manifest.files())
    assert manifest.metadata().version == _version()
    # and manifest_firmware.py, which includes it (the frozen 32-bit port freezes this one)
    manifest = manifestfile.ManifestFile(manifestfile.MODE_FREEZE, dict.fromkeys(
        ("MPY_DIR", "MPY_LIB_DIR", "PORT_DIR", "BOARD_DIR"), str(tmp_path)))
    manifest.execute(str(ROOT / "manifest_firmware.py"))
    assert sorted(out.target_path for out in manifest.files()) == sorted(
        ["mqtt/" + n for n in lib_modules()] + _firmware_modules())


# ---- size ------------------------------------------------------------------------------------


def test_size_reports_every_module_and_the_total(capsys):
    status, out, err = run(size, ["--arch", "xtensawin"], capsys)
    assert status == 0, err
    rows = dict(re.findall(r"^(mqtt/\S+\.py) +\d+ +(\d+)$", out, re.M))
    assert sorted(rows) == ["mqtt/" + n for n in lib_modules()]
    total = int(re.search(r"^total +\d+ +(\d+)$", out, re.M).group(1))
    assert total == sum(map(int, rows.values())) and "-march=xtensawin" in out
    status, out, err = run(size, ["--max-total", total - 1], capsys)
    assert status == 1 and "over --max-total" in err
    assert run(size, ["--max-total", total], capsys)[0] == 0


# ---- make targets ----------------------------------------------------------------------------


def test_make_targets_pass_board_port_firmware_and_dry_run():
    makefile = (ROOT / "Makefile").read_text()
    files = [] if re.search(r"^-?include +mk/deploy\.mk", makefile, re.M) else \
        ["-f", "Makefile", "-f", "mk/deploy.mk"]

    def dry(*args):
        out = subprocess.run(["make", "-n", *files, *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [ln for ln in out.stdout.splitlines() if "tools/" in ln and ".venv/bin/python" in ln]

    assert dry("flash", "BOARD=devkit", "PORT=/dev/ttyUSB0", "FIRMWARE=fw.bin", "DRY_RUN=1") == [
        '.venv/bin/python tools/flash.py --board "devkit" --port "/dev/ttyUSB0" '
        '--firmware "fw.bin" --dry-run']
    assert dry("deploy", "BOARD=devkit", "PORT=/dev/ttyUSB0", "DRY_RUN=0") == [
        '.venv/bin/python tools/deploy.py --board "devkit" --port "/dev/ttyUSB0"']
    assert dry("deploy", "BOARD=devkit", "PORT=/dev/ttyUSB0", "FROZEN=1") == [
        '.venv/bin/python tools/deploy.py --board "devkit" --port "/dev/ttyUSB0" --frozen']
    assert dry("deploy", "BOARD=devkit", "PORT=/dev/ttyUSB0", "FROZEN=0") == [
        '.venv/bin/python tools/deploy.py --board "devkit" --port "/dev/ttyUSB0"']
    assert dry("size", "MAX_TOTAL=30000") == [
        ".venv/bin/python tools/size.py --arch xtensawin --max-total 30000"]
