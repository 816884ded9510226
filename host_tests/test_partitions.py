"""The board's partition table (tools/partitions.py), make partitions, make flash with the table,
and the firmware's choice of the ring's store (the raw partition, or the file as a fallback).

The tables are read back here with a parser written from ESP-IDF's format (32-byte entries
AA 50 / type / subtype / offset / size / 16-byte label / flags, the MD5 row EB EB + 14 x FF + MD5,
0xFF up to 0xC00), not with the tool's own parser. MicroPython's generic layouts are compared with
ports/esp32/partitions-*.csv of the MicroPython 1.25 source that `make micropython` downloads.
No board is attached: the firmware side runs on the host board layer with an injected partition
finder (hostboard.set_partition_finder) and on the ESP32 board layer against a stub esp32 module.
"""
import csv
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import MICROPYTHON, ROOT
from test_deploy import CHIP_IDS, OFFSETS, esp_image, flash, partition_table as firmware_table, run
from test_firmware import STUBS

sys.path.insert(0, str(ROOT / "tools"))
import partitions  # noqa: E402

BOARDS = ROOT / "boards"
ESP_BOARDS = sorted(p.stem for p in BOARDS.glob("*.json")
                    if p.name != "schema.json" and not p.name.endswith("secrets.json")
                    and json.loads(p.read_text())["chip"] != "unix")
MB = 1 << 20
# The flash chips of the boards, from their data sheets (not from the board files).
FLASH_OF = {"esp32-devkitc": 4 * MB, "esp32-s3-devkitc-1": 8 * MB, "esp32-c3-devkitm-1": 4 * MB}
# MicroPython 1.25's partitions-4MiB.csv and -8MiB.csv, copied from its source: the vfs sizes.
VFS = {4 * MB: (0x200000, 0x200000), 8 * MB: (0x200000, 0x600000)}


def board(name):
    return json.loads((BOARDS / (name + ".json")).read_text())


# ---- an independent reader of the binary format ----------------------------------------------------


def read_table(data):
    """[(label, type, subtype, offset, size, flags)] from a binary table, asserting the format."""
    assert len(data) == 0xC00, "the table is 0xC00 bytes"
    rows, i = [], 0
    while data[i:i + 2] == b"\xaa\x50":
        magic, ptype, subtype, offset, size, label, flags = struct.unpack("<2sBBII16sI",
                                                                            data[i:i + 32])
        assert label.rstrip(b"\0") and b"\0" not in label.rstrip(b"\0"), label
        rows.append((label.rstrip(b"\0").decode("ascii"), ptype, subtype, offset, size, flags))
        i += 32
    md5_row = data[i:i + 32]
    assert md5_row[:2] == b"\xeb\xeb" and md5_row[2:16] == b"\xff" * 14, md5_row.hex()
    assert md5_row[16:] == hashlib.md5(data[:i]).digest(), "MD5 of the entries"
    assert data[i + 32:] == b"\xff" * (0xC00 - i - 32), "0xFF padding to 0xC00"
    return rows


def check_layout(rows, flash_bytes):
    """What the bootloader and esp_partition require: alignment, order, no overlap, fits."""
    end = 0x9000  # the table's own sector ends here
    for label, ptype, subtype, offset, size, flags in sorted(rows, key=lambda r: r[3]):
        assert ptype in (0, 1) and flags == 0, label
        assert offset % (0x10000 if ptype == 0 else 0x1000) == 0, (label, hex(offset))
        assert size > 0 and size % 0x1000 == 0, (label, hex(size))
        assert offset >= end, "%s at 0x%x overlaps what ends at 0x%x" % (label, offset, end)
        end = offset + size
    assert end <= flash_bytes
    assert len({r[0] for r in rows}) == len(rows)


def generate(name, tmp_path):
    out = tmp_path / (name + ".bin")
    status = partitions.main(["--board", name, "--output", str(out)])
    assert status == 0
    return out.read_bytes()


@pytest.mark.parametrize("name", ESP_BOARDS)
def test_every_board_gets_a_valid_table_with_its_ring_partition(name, tmp_path, capsys):
    cfg = board(name)
    rows = read_table(generate(name, tmp_path))
    check_layout(rows, FLASH_OF[name])
    by_label = {r[0]: r for r in rows}
    assert [r[0] for r in rows] == ["nvs", "phy_init", "factory", "vfs", cfg["ring"]["partition"]]
    assert by_label["nvs"][1:5] == (1, 0x02, 0x9000, 0x6000)
    assert by_label["phy_init"][1:5] == (1, 0x01, 0xF000, 0x1000)
    assert by_label["factory"][1:5] == (0, 0x00, 0x10000, 0x1F0000)
    ring = by_label[cfg["ring"]["partition"]]
    vfs = by_label["vfs"]
    vfs_offset, vfs_size = VFS[FLASH_OF[name]]
    assert ring[1:3] == (1, 0x06)  # data, "undefined": no file system claims it
    assert ring[4] == cfg["ring"]["size"] and ring[4] % 4096 == 0
    assert vfs[1:3] == (1, 0x81) and vfs[3] == vfs_offset  # vfs keeps its place and subtype
    assert vfs[4] == vfs_size - cfg["ring"]["size"]  # ... and gives up the ring's bytes
    assert ring[3] == vfs[3] + vfs[4] and ring[3] + ring[4] == vfs_offset + vfs_size
    out = capsys.readouterr().out
    assert "%s, data, 0x06, 0x%x, 0x%x," % (ring[0], ring[3], ring[4]) in out  # the CSV form


@pytest.mark.parametrize("size", sorted(partitions.GENERIC, key=lambda s: int(s[:-2])))
def test_the_ring_is_cut_from_the_end_of_vfs_for_every_flash_size(size):
    cfg = {"board": "b", "chip": "esp32", "flash": {"offset": "0x1000", "size": size},
           "ring": {"path": "/ring.bin", "partition": "ring", "size": 12288}}
    generic = partitions.generic_layout(size)
    parts = partitions.layout(cfg)
    rows = read_table(partitions.to_binary(parts))
    check_layout(rows, partitions.FLASH_SIZES[size])
    assert rows[:3] == [(p.name, p.type, p.subtype, p.offset, p.size, 0) for p in generic[:3]]
    assert rows[3][3] == generic[3].offset and rows[3][4] == generic[3].size - 12288
    assert rows[4] == ("ring", 1, 0x06, generic[3].offset + generic[3].size - 12288, 12288, 0)
    # the most the vfs can give, and one sector more
    most = generic[3].size - partitions.VFS_KEEP
    assert partitions.layout(dict(cfg, ring=dict(cfg["ring"], size=most)))[-1].size == most
    with pytest.raises(partitions.PartitionError) as e:
        partitions.layout(dict(cfg, ring=dict(cfg["ring"], size=most + 4096)))
    assert e.value.key == "ring.size" and "more than the vfs of a %s flash can give" % size \
        in str(e.value)


@pytest.mark.parametrize("ring,key,words", [
    ({"size": 8192}, "ring.size", "too small"),
    ({"size": 20000}, "ring.size", "not a multiple of 4096"),
    ({"size": "64K"}, "ring.size", "integer"),
    ({"size": 1 << 21}, "ring.size", "more than the vfs"),
    ({"partition": "vfs"}, "ring.partition", "label MicroPython uses"),
    ({"partition": "Ring Buffer"}, "ring.partition", "partition label"),
    ({"partition": "r" * 17}, "ring.partition", "1..16"),
])
def test_a_bad_ring_setting_is_refused_naming_the_key(ring, key, words, tmp_path, capsys):
    cfg = board("esp32-devkitc")
    cfg["ring"].update(ring)
    d = tmp_path / "boards"
    d.mkdir()
    (d / "node.json").write_text(json.dumps(dict(cfg, board="node")))
    status = partitions.main(["--board", "node", "--boards-dir", str(d)])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "boards/node.json: %s: " % key in err and words in err, err


def test_flash_size_defaults_to_the_generic_firmware_layout_and_is_checked():
    base = {"board": "b", "ring": {"path": "/r", "partition": "ring", "size": 65536}}
    assert partitions.flash_size(dict(base, chip="esp32", flash={"offset": "0x1000"})) == "4MB"
    assert partitions.flash_size(dict(base, chip="esp32c3", flash={"offset": "0x0"})) == "4MB"
    assert partitions.flash_size(dict(base, chip="esp32s3", flash={"offset": "0x0"})) == "8MB"
    with pytest.raises(partitions.PartitionError) as e:
        partitions.flash_size(dict(base, chip="esp32", flash={"offset": "0x1000", "size": "3MB"}))
    assert e.value.key == "flash.size"
    # without ring.partition the table is MicroPython's own
    no_ring = {"board": "b", "chip": "esp32", "flash": {"offset": "0x1000"},
               "ring": {"path": "/r", "size": 65536}}
    assert partitions.layout(no_ring) == partitions.generic_layout("4MB")


def test_the_rules_agree_with_the_schema_and_the_device_validator():
    schema = json.loads((BOARDS / "schema.json").read_text())
    ring = schema["properties"]["ring"]["properties"]
    assert ring["size"]["minimum"] == partitions.RING_MIN
    assert ring["size"]["multipleOf"] == partitions.SECTOR
    assert ring["partition"]["not"]["enum"] == list(partitions.RESERVED_LABELS)
    assert ring["partition"]["pattern"].split("$")[0] + "$" == \
        partitions.LABEL.pattern.replace("\\Z", "$")
    assert schema["properties"]["flash"]["properties"]["size"]["enum"] == list(partitions.GENERIC)
    sys.path.insert(0, str(ROOT / "firmware"))
    try:
        import validate
    finally:
        sys.path.pop(0)
    assert validate.RESERVED_LABELS == partitions.RESERVED_LABELS
    assert validate.FLASH_SIZES == tuple(partitions.GENERIC)


def _micropython_source():
    cache = os.environ.get("CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ringmqtt")
    found = sorted(Path(cache, "src").glob("micropython_1.25.*.orig.tar.xz"))
    return found[-1] if found else None


def test_the_layouts_are_micropython_1_25s_generic_tables():
    """partitions-<N>MiB.csv of MicroPython 1.25's source, and which one each generic firmware
    (ESP32_GENERIC, _C3: sdkconfig.base; _S3: its sdkconfig.board) is built with."""
    tarball = _micropython_source()
    if tarball is None:
        pytest.skip("no cached MicroPython 1.25 source (make micropython)")
    types = {"app": 0, "data": 1}
    subtypes = {"factory": 0, "phy": 1, "nvs": 2, "fat": 0x81}
    with tarfile.open(tarball) as tar:
        def text(path):
            member = next(m for m in tar.getmembers() if m.name.endswith("/ports/esp32/" + path))
            return tar.extractfile(member).read().decode()

        for size, csv_name in partitions.CSV_NAME.items():
            rows = [r for r in csv.reader(io.StringIO(text(csv_name)))
                    if r and not r[0].lstrip().startswith("#")]
            parsed = [(r[0].strip(), types[r[1].strip()], subtypes[r[2].strip()],
                       int(r[3], 0), int(r[4], 0)) for r in rows]
            assert parsed == [(p.name, p.type, p.subtype, p.offset, p.size)
                              for p in partitions.generic_layout(size)], csv_name
        base = text("boards/sdkconfig.base")
        s3 = text("boards/ESP32_GENERIC_S3/sdkconfig.board")
    used = lambda cfg: re.search(r'PARTITION_TABLE_CUSTOM_FILENAME="([^"]+)"', cfg).group(1)
    assert used(base) == partitions.CSV_NAME[partitions.DEFAULT_FLASH_SIZE["esp32"]]
    assert used(base) == partitions.CSV_NAME[partitions.DEFAULT_FLASH_SIZE["esp32c3"]]
    assert used(s3) == partitions.CSV_NAME[partitions.DEFAULT_FLASH_SIZE["esp32s3"]]


def test_make_partitions_prints_the_table():
    out = subprocess.run(["make", "--no-print-directory", "partitions", "BOARD=esp32-devkitc"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(re.search(r"^\s+ring\s+data\s+undefined \(0x06\)\s+0x3f0000\s+0x400000\s+64 KB", ln)
               for ln in lines), out.stdout
    assert any(re.search(r"^\s+vfs\s+data\s+fat \(0x81\)\s+0x200000\s+0x3f0000\s+1984 KB", ln)
               for ln in lines), out.stdout
    assert "vfs, data, fat, 0x200000, 0x1f0000," in lines
    assert "ring, data, 0x06, 0x3f0000, 0x10000," in lines
    assert "partitions-4MiB.csv" in out.stdout
    bad = subprocess.run(["make", "--no-print-directory", "partitions", "BOARD=unix"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "has no partition table" in bad.stderr


# ---- make flash with the board's table ------------------------------------------------------------


def merged_image(chip, table_rows):
    """A merged MicroPython-style download whose own table is `table_rows`."""
    offset = OFFSETS[chip]
    image = bytearray(b"\xff" * (0x10000 - offset))
    boot = esp_image(CHIP_IDS[chip], b"BOOT" * 8)
    image[:len(boot)] = boot
    table = firmware_table(table_rows)
    image[0x8000 - offset:0x8000 - offset + len(table)] = table
    return bytes(image) + esp_image(CHIP_IDS[chip], b"MicroPython app!" * 4)


def generic_rows(size):
    return [(p.name, p.type, p.subtype, p.offset, p.size) for p in partitions.generic_layout(size)]


@pytest.fixture
def ring_boards(tmp_path):
    d = tmp_path / "boards"
    d.mkdir()
    for name in ESP_BOARDS:
        (d / (name + ".json")).write_text((BOARDS / (name + ".json")).read_text())
    return d


@pytest.mark.parametrize("name", ESP_BOARDS)
def test_flash_writes_the_image_with_the_boards_table_at_0x8000(name, ring_boards, tmp_path,
                                                               capsys):
    cfg = board(name)
    chip, offset = cfg["chip"], int(cfg["flash"]["offset"], 16)
    fw = tmp_path / "fw.bin"
    image = merged_image(chip, generic_rows(cfg["flash"]["size"]))
    fw.write_bytes(image)
    build = tmp_path / "build"
    status, out, err = run(flash, ["--board", name, "--port", "/dev/ttyUSB3", "--firmware", fw,
                                   "--boards-dir", ring_boards, "--build-dir", build,
                                   "--dry-run"], capsys)
    assert status == 0, err
    stage = build / name
    head, table, tail = (stage / "firmware-until-0x8000.bin", stage / "partition-table.bin",
                         stage / "firmware-from-0x9000.bin")
    write = [ln for ln in out.splitlines() if "esptool" in ln and "write-flash" in ln]
    assert len(write) == 1
    assert write[0].endswith("write-flash 0x%x %s 0x8000 %s 0x9000 %s" % (offset, head, table,
                                                                          tail)), write[0]
    assert "erase-flash" in out and "dry run: no device was touched" in out
    # the pieces are the image around the table's sector, the table is the board's
    assert head.read_bytes() == image[:0x8000 - offset]
    assert tail.read_bytes() == image[0x9000 - offset:]
    assert table.read_bytes() == partitions.to_binary(partitions.layout(cfg))
    rows = read_table(table.read_bytes())
    assert rows[-1][:3] == ("ring", 1, 0x06) and rows[-1][4] == cfg["ring"]["size"]
    assert "ring      data" in out  # the table is shown


def test_flash_with_the_table_runs_what_the_dry_run_prints_and_esptool_accepts_it(
        ring_boards, tmp_path, capsys, monkeypatch):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(merged_image("esp32", generic_rows("4MB")))
    argv = ["--board", "esp32-devkitc", "--port", str(tmp_path / "no-such-port"), "--firmware",
            fw, "--boards-dir", ring_boards, "--build-dir", tmp_path / "build"]
    status, planned, _ = run(flash, argv + ["--dry-run"], capsys)
    assert status == 0
    ran = []
    monkeypatch.setattr(flash.subprocess, "run",
                        lambda cmd: ran.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    status, out, err = run(flash, argv, capsys)
    assert status == 0, err
    assert len(ran) == 2 and all(" ".join(cmd) in planned for cmd in ran)
    assert "formats its file system" in out
    monkeypatch.undo()
    # esptool 5.6 parses the write (no overlap between the three files) and stops only at the port
    result = subprocess.run([sys.executable] + ran[1][1:], capture_output=True, text=True,
                            timeout=60)
    text = result.stdout + result.stderr
    assert "Could not open" in text and "no-such-port" in text, text
    assert "overlap" not in text.lower()


@pytest.mark.parametrize("rows,words", [
    (generic_rows("8MB"), 'generic partitions-4MiB.csv (flash.size "4MB")'),
    ([("nvs", 1, 2, 0x9000, 0x4000), ("otadata", 1, 0, 0xD000, 0x2000),
      ("phy_init", 1, 1, 0xF000, 0x1000), ("ota_0", 0, 0x10, 0x10000, 0x180000),
      ("ota_1", 0, 0x11, 0x190000, 0x180000), ("vfs", 1, 0x81, 0x310000, 0xF0000)],
     "otadata@0xd000"),
])
def test_flash_refuses_firmware_whose_table_is_not_the_generic_layout(rows, words, ring_boards,
                                                                       tmp_path, capsys):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(merged_image("esp32", rows))
    status, out, err = run(flash, ["--board", "esp32-devkitc", "--port", "/dev/ttyUSB0",
                                   "--firmware", fw, "--boards-dir", ring_boards,
                                   "--build-dir", tmp_path / "build", "--dry-run"], capsys)
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert words in err and "remove ring.partition" in err


def test_flash_refuses_a_ring_the_vfs_cannot_give(ring_boards, tmp_path, capsys):
    cfg = board("esp32-c3-devkitm-1")
    cfg["flash"]["size"] = "2MB"
    cfg["ring"]["size"] = 1 << 20
    (ring_boards / "esp32-c3-devkitm-1.json").write_text(json.dumps(cfg))
    fw = tmp_path / "fw.bin"
    fw.write_bytes(merged_image("esp32c3", generic_rows("2MB")))
    status, out, err = run(flash, ["--board", "esp32-c3-devkitm-1", "--firmware", fw,
                                   "--boards-dir", ring_boards, "--dry-run"], capsys)
    assert status == 2
    assert "boards/esp32-c3-devkitm-1.json: ring.size: 1048576 bytes is more than the vfs of a " \
           "2MB flash can give" in err


def test_flash_without_ring_partition_keeps_the_firmwares_table(ring_boards, tmp_path, capsys):
    cfg = board("esp32-devkitc")
    del cfg["ring"]["partition"]
    (ring_boards / "esp32-devkitc.json").write_text(json.dumps(cfg))
    fw = tmp_path / "fw.bin"
    fw.write_bytes(merged_image("esp32", generic_rows("4MB")))
    status, out, err = run(flash, ["--board", "esp32-devkitc", "--firmware", fw, "--boards-dir",
                                   ring_boards, "--build-dir", tmp_path / "build", "--dry-run"],
                           capsys)
    assert status == 0, err
    assert "write-flash 0x1000 %s" % fw in out and "0x8000" not in out.split("would run")[1]
    assert not (tmp_path / "build").exists()


def test_make_flash_passes_the_board_and_dry_run():
    out = subprocess.run(["make", "-n", "flash", "BOARD=esp32-devkitc", "PORT=/dev/ttyUSB0",
                          "FIRMWARE=fw.bin", "DRY_RUN=1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '.venv/bin/python tools/flash.py --board "esp32-devkitc" --port "/dev/ttyUSB0" ' \
           '--firmware "fw.bin" --dry-run' in out.stdout


# ---- the firmware's store: the partition, or the file with one warning -------------------------------


class FakePartition:
    """A block device with esp32.Partition's protocol, in RAM."""

    def __init__(self, size, block=4096):
        self.data = bytearray(b"\xff" * size)
        self.block = block

    def readblocks(self, n, buf, off=0):
        start = n * self.block + off
        buf[:] = self.data[start:start + len(buf)]

    def writeblocks(self, n, buf, off=0):
        start = n * self.block + off
        for i, b in enumerate(buf):
            self.data[start + i] &= b  # NOR: a program only clears bits

    def ioctl(self, op, arg):
        if op == 4:
            return len(self.data) // self.block
        if op == 5:
            return self.block
        if op == 6:
            self.data[arg * self.block:(arg + 1) * self.block] = b"\xff" * self.block
            return 0
        return None


@pytest.fixture
def host_board():
    sys.path.insert(0, str(ROOT / "firmware"))
    try:
        import board
        import hostboard
    finally:
        sys.path.pop(0)
    yield board
    hostboard.set_partition_finder(None)


RING = {"path": "/ring.bin", "partition": "ring", "size": 65536, "capacity": 64}


def test_ring_store_takes_the_partition_when_the_board_has_it(host_board):
    import hostboard

    part = FakePartition(65536)
    asked = []
    hostboard.set_partition_finder(lambda label: asked.append(label) or
                                   ([part] if label == "ring" else []))
    lines = []
    assert host_board.ring_store(RING, lines.append) is part
    assert asked == ["ring"] and lines == []
    assert host_board.partition_bytes(part) == 65536


def test_ring_store_falls_back_to_the_file_with_one_warning(host_board):
    import hostboard

    hostboard.set_partition_finder(lambda label: [])
    lines = []
    assert host_board.ring_store(RING, lines.append) == "/ring.bin"
    assert len(lines) == 1
    assert "warning" in lines[0] and "'ring'" in lines[0] and "/ring.bin" in lines[0]


def test_ring_store_on_the_host_is_the_file_and_silent(host_board):
    lines = []
    assert host_board.ring_store(RING, lines.append) == "/ring.bin"  # no finder: no table
    no_partition = {k: v for k, v in RING.items() if k != "partition"}
    import hostboard

    hostboard.set_partition_finder(lambda label: pytest.fail("asked for a partition"))
    assert host_board.ring_store(no_partition, lines.append) == "/ring.bin"
    assert lines == []


def test_ring_store_notes_a_partition_of_another_size(host_board):
    import hostboard

    part = FakePartition(32768)
    hostboard.set_partition_finder(lambda label: [part])
    lines = []
    assert host_board.ring_store(RING, lines.append) is part
    assert len(lines) == 1 and "32768 bytes, ring.size says 65536" in lines[0]


# The whole boot (options, board file, board.init, the device's start) up to MQTTClient, which
# is replaced by a recorder: what store= the firmware hands the library.
BOOT_DRIVER = """
import sys
sys.path[:0] = ["firmware", "lib"]
import hostboard
import mqtt

class FakePartition:
    def __init__(self, size):
        self.size = size
    def readblocks(self, n, buf, off=0):
        pass
    def writeblocks(self, n, buf, off=0):
        pass
    def ioctl(self, op, arg):
        return {4: self.size // 4096, 5: 4096}.get(op)

class Recorder:
    def __init__(self, client_id, server, port=0, *args, store=None, ring_size=None, **kw):
        if isinstance(store, str):
            print("STORE file", store, ring_size)
        else:
            print("STORE partition", store.size, ring_size)
        sys.exit(0)

mqtt.MQTTClient = Recorder
mode = sys.argv.pop(1)
if mode != "none":
    asked = []
    def finder(label):
        asked.append(label)
        print("FIND", label)
        return [FakePartition(int(mode))] if mode != "missing" and label == "ring" else []
    hostboard.set_partition_finder(finder)
import app
app.main(sys.argv[1:])
"""


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_the_firmware_hands_the_partition_or_the_file_to_the_client(runtime, tmp_path):
    if runtime == "micropython" and not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port missing at %s: run `make setup`" % MICROPYTHON)
    driver = tmp_path / "boot.py"
    driver.write_text(BOOT_DRIVER)
    ring = tmp_path / "ring.bin"
    common = ["--board", "boards/esp32-devkitc.json", "--broker", "127.0.0.1", "--port", "1",
              "--ring", str(ring), "--uid", "t1",
              "--set", "safe_mode.flag_file=%s" % (tmp_path / "safe_mode")]
    python = [str(MICROPYTHON)] if runtime == "micropython" else [sys.executable, "-u"]

    def boot(mode):
        r = subprocess.run(python + [str(driver), mode] + common, cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.splitlines(), [ln for ln in r.stderr.splitlines() if "ring" in ln]

    out, log = boot("65536")  # the board has the partition: the client gets it
    assert out == ["FIND ring", "STORE partition 65536 65536"], out
    assert not [ln for ln in log if "warning" in ln]
    out, log = boot("missing")  # flashed without our table: the file, and one warning
    assert out == ["FIND ring", "STORE file %s 65536" % ring], out
    warnings = [ln for ln in log if "warning" in ln]
    assert len(warnings) == 1 and "no flash partition 'ring'" in warnings[0], log
    assert str(ring) in warnings[0]
    out, log = boot("none")  # the host as it runs: no partition table, the file, silently
    assert out == ["STORE file %s 65536" % ring] and not [ln for ln in log if "warning" in ln]


def test_the_esp32_board_layer_finds_the_partition_by_label(tmp_path):
    """esp32board.find_partition asks esp32.Partition.find for a data partition by label (any
    subtype), under CPython with sys.platform "esp32" and stub hardware modules (test_firmware's,
    whose esp32.Partition.find answers from STUB_PARTITIONS)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in STUBS.items():
        (stubs / name).write_text(text)
    script = ("import board\nlines = []\nstore = board.ring_store(%r, lines.append)\n"
              "print(type(store).__name__, getattr(store, 'label', store), len(lines))\n"
              "for line in lines: print(line)\n" % RING)
    env = dict(os.environ, STUB_DIR=str(stubs),
               PYTHONPATH=":".join([str(stubs), str(ROOT / "firmware"), str(ROOT / "lib")]))

    def ask(partitions_on_flash):
        env["STUB_PARTITIONS"] = partitions_on_flash
        r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    assert ask("vfs:2031616,ring:65536") == ["Partition ring 0"]
    assert "Partition.find 1 255 ring" in (stubs / "hw.log").read_text()
    out = ask("vfs:2097152")
    assert out[0] == "str /ring.bin 1" and "no flash partition 'ring'" in out[1]


def test_board_is_a_name_or_its_file_for_every_tool():
    """BOARD= means the same for every make target: a name, or the file boards/<name>.json
    (make run takes either too: tools/run_firmware.sh)."""
    import subprocess
    import sys
    tool = [sys.executable, str(ROOT / "tools" / "partitions.py"), "--board"]
    by_name = subprocess.run(tool + ["esp32-devkitc"], capture_output=True, text=True, timeout=30)
    by_file = subprocess.run(tool + ["boards/esp32-devkitc.json"], capture_output=True, text=True, timeout=30,
                             cwd=ROOT)
    assert by_name.returncode == 0 and by_file.returncode == 0, by_file.stderr
    assert by_name.stdout.split("\n", 1)[1] == by_file.stdout.split("\n", 1)[1]
    run = subprocess.run(["tools/run_firmware.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, BOARD="unix", RUN_SECONDS="2", RUNTIME="cpython"))
    assert run.returncode == 0 and "/status online" in run.stdout, run.stdout + run.stderr
