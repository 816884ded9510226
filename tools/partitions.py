#!/usr/bin/env python3
"""The partition table a board gets: MicroPython's generic layout for the board's flash size,
with a raw data partition for the flash ring cut from the end of the file system (vfs).

    .venv/bin/python tools/partitions.py --board NAME [--output FILE]
    (or: make partitions BOARD=NAME)

prints the table (and its ESP-IDF CSV form); --output also writes the binary table, the
0xC00 bytes `make flash` writes at flash 0x8000.

Keys of boards/NAME.json used here:
  chip            esp32, esp32s3 or esp32c3
  flash.size      "2MB", "4MB", "8MB", "16MB" or "32MB": which of MicroPython's generic tables
                  (default: the one the generic micropython.org firmware of the chip uses)
  ring.partition  label of the ring's partition (absent: no ring partition, the firmware's own
                  table is kept and the ring stays a file, ring.path)
  ring.size       bytes of the ring, a multiple of 4096: the partition's size

The layouts are MicroPython v1.25.0's ports/esp32/partitions-<N>MiB.csv. The generic firmware
builds use partitions-4MiB.csv (ports/esp32/boards/sdkconfig.base: ESP32_GENERIC and
ESP32_GENERIC_C3) and partitions-8MiB.csv (ESP32_GENERIC_S3/sdkconfig.board; its FLASH_4M variant
the 4MiB one). The binary format is ESP-IDF's (components/partition_table, documented with
gen_esp32part.py): 32-byte entries, an MD5 row, 0xFF up to 0xC00 bytes.
"""
import argparse
import hashlib
import re
import struct
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devtools import ROOT, ToolError, fail, shown_path  # noqa: E402
from devtools.boards import load_board  # noqa: E402

# ---- the format ----------------------------------------------------------------------------------

TABLE_OFFSET = 0x8000   # where the second-stage bootloader reads the table (ESP-IDF default)
TABLE_SIZE = 0xC00      # the table's bytes; the rest of its 4 KB sector stays erased
ENTRY = struct.Struct("<2sBBII16sI")  # magic, type, subtype, offset, size, label, flags
ENTRY_MAGIC = b"\xaa\x50"
MD5_MAGIC = b"\xeb\xeb"   # then 14 x 0xFF, then the MD5 of every entry before this row
SECTOR = 0x1000           # data partitions: 4 KB aligned (the NOR erase unit)
APP_ALIGN = 0x10000       # app partitions: 64 KB aligned (the flash MMU page)

TYPE_APP, TYPE_DATA = 0x00, 0x01
TYPE_NAMES = {TYPE_APP: "app", TYPE_DATA: "data"}
SUBTYPE_NAMES = {
    TYPE_APP: {0x00: "factory"},
    TYPE_DATA: {0x01: "phy", 0x02: "nvs", 0x06: "undefined", 0x81: "fat"},
}

# The ring's partition: type data (so esp32.Partition.find(esp32.Partition.TYPE_DATA,
# label=...) finds it; find() matches the label with ESP_PARTITION_SUBTYPE_ANY, so the subtype
# does not matter to the lookup) and subtype 0x06, ESP-IDF's "undefined": a data partition of no
# particular format. Nothing mounts or formats such a partition: MicroPython 1.25 looks its file
# system up by label ("vfs", "ffat": ports/esp32/modules/flashbdev.py) and romfs by label too,
# ESP-IDF's NVS, core dump and OTA code look for their own subtypes (0x02, 0x03, 0x00). The
# file-system subtypes would invite exactly what must not happen to the ring: 0x81 (fat, which
# MicroPython's own vfs carries) is what ESP-IDF's FAT/wear-levelling helpers and Arduino's FFat
# search for, 0x82/0x83 what SPIFFS and LittleFS helpers mount (and format when mounting fails).
RING_SUBTYPE = 0x06

RING_MIN = 12288          # 3 sectors; boards/schema.json's minimum of ring.size
VFS_KEEP = 0x40000        # the file system keeps at least 256 KB: the app, board.json, certs

# MicroPython v1.25.0 ports/esp32/partitions-<N>MiB.csv, the tables without OTA.
_COMMON = (("nvs", TYPE_DATA, 0x02, 0x9000, 0x6000), ("phy_init", TYPE_DATA, 0x01, 0xF000, 0x1000))
GENERIC = {
    "2MB": _COMMON + (("factory", TYPE_APP, 0x00, 0x10000, 0x160000),
                      ("vfs", TYPE_DATA, 0x81, 0x170000, 0x50000)),
    "4MB": _COMMON + (("factory", TYPE_APP, 0x00, 0x10000, 0x1F0000),
                      ("vfs", TYPE_DATA, 0x81, 0x200000, 0x200000)),
    "8MB": _COMMON + (("factory", TYPE_APP, 0x00, 0x10000, 0x1F0000),
                      ("vfs", TYPE_DATA, 0x81, 0x200000, 0x600000)),
    "16MB": _COMMON + (("factory", TYPE_APP, 0x00, 0x10000, 0x1F0000),
                       ("vfs", TYPE_DATA, 0x81, 0x200000, 0xE00000)),
    "32MB": _COMMON + (("factory", TYPE_APP, 0x00, 0x10000, 0x1F0000),
                       ("vfs", TYPE_DATA, 0x81, 0x200000, 0x1E00000)),
}
FLASH_SIZES = {name: int(name[:-2]) << 20 for name in GENERIC}
# The layout of the generic firmware on micropython.org/download for each chip.
DEFAULT_FLASH_SIZE = {"esp32": "4MB", "esp32s3": "8MB", "esp32c3": "4MB"}
CSV_NAME = {"2MB": "partitions-2MiB.csv", "4MB": "partitions-4MiB.csv",
            "8MB": "partitions-8MiB.csv", "16MB": "partitions-16MiB.csv",
            "32MB": "partitions-32MiB.csv"}

LABEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,15}\Z")
# Labels MicroPython's tables and firmware use: never the ring's.
RESERVED_LABELS = ("nvs", "phy_init", "factory", "vfs", "ffat", "romfs", "otadata", "ota_0",
                   "ota_1")


@dataclass(frozen=True)
class Partition:
    name: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    @property
    def end(self):
        return self.offset + self.size


class PartitionError(ToolError):
    """A board-file key that cannot give a partition table: `key` names it."""

    def __init__(self, key, message):
        super().__init__("%s: %s" % (key, message))
        self.key, self.message = key, message


# ---- the board's table -----------------------------------------------------------------------


def flash_size(board):
    """The flash size name ("4MB") whose generic layout the board gets. Raises PartitionError."""
    chip = board.get("chip")
    if chip not in DEFAULT_FLASH_SIZE:
        raise PartitionError("chip", "%r has no partition table (%s only)"
                             % (chip, ", ".join(DEFAULT_FLASH_SIZE)))
    flash = board.get("flash") if isinstance(board.get("flash"), dict) else {}
    size = flash.get("size", DEFAULT_FLASH_SIZE[chip])
    if size not in GENERIC:
        raise PartitionError("flash.size", "must be one of %s (MicroPython's generic layouts), "
                             "got %r" % (", ".join(GENERIC), size))
    return size


def generic_layout(size):
    """MicroPython 1.25's partitions-<N>MiB.csv as Partitions."""
    return [Partition(*row) for row in GENERIC[size]]


def ring_settings(board):
    """(label, size) of the ring partition the board file asks for, or None. Raises
    PartitionError naming the key."""
    ring = board.get("ring") if isinstance(board.get("ring"), dict) else {}
    label = ring.get("partition")
    if label is None:
        return None
    if not isinstance(label, str) or not LABEL.match(label):
        raise PartitionError("ring.partition", "must be a partition label of 1..16 lower-case "
                             "letters, digits, '_' or '-' (got %r)" % (label,))
    if label in RESERVED_LABELS:
        raise PartitionError("ring.partition", "%r is a label MicroPython uses (%s): pick "
                             "another, e.g. \"ring\"" % (label, ", ".join(RESERVED_LABELS)))
    size = ring.get("size")
    if type(size) is float and size.is_integer():  # JSON Schema's integer admits 65536.0
        size = int(size)
    if type(size) is not int:
        raise PartitionError("ring.size", "must be an integer number of bytes (got %r)" % (size,))
    if size < RING_MIN:
        raise PartitionError("ring.size", "%d bytes is too small for the ring's partition "
                             "(at least %d: 3 sectors of 4096)" % (size, RING_MIN))
    if size % SECTOR:
        raise PartitionError("ring.size", "%d is not a multiple of 4096 (the flash sector): "
                             "the partition is erased sector by sector" % size)
    return label, size


def layout(board):
    """The board's partitions: the generic layout for flash.size, and with ring.partition the
    ring's partition at the end of what was vfs, vfs shrunk by ring.size. Raises
    PartitionError."""
    size = flash_size(board)
    parts = generic_layout(size)
    ring = ring_settings(board)
    if ring is None:
        return parts
    label, ring_size = ring
    vfs = parts[-1]  # the last in every generic table (the 2MB one ends it at 0x1c0000)
    assert vfs.name == "vfs"
    most = vfs.size - VFS_KEEP
    if ring_size > most:
        raise PartitionError("ring.size", "%d bytes is more than the vfs of a %s flash can give "
                             "(at most %d: the vfs is %d bytes and keeps at least %d for the "
                             "app's files)" % (ring_size, size, most, vfs.size, VFS_KEEP))
    shrunk = replace(vfs, size=vfs.size - ring_size)
    return parts[:-1] + [shrunk, Partition(label, TYPE_DATA, RING_SUBTYPE, shrunk.end, ring_size)]


def problems(board):
    """[(key, message)] for validate_board: what keeps this ESP32 board file from getting a
    table (nothing for a board without ring.partition, or for the unix port)."""
    if board.get("chip") not in DEFAULT_FLASH_SIZE:
        return []
    try:
        layout(board)
    except PartitionError as e:
        return [(e.key, e.message)]
    return []


def check(parts, size_bytes):
    """The rules the bootloader and esp_partition apply, for a table we build. Raises
    ToolError."""
    names = set()
    end = TABLE_OFFSET + SECTOR
    for p in sorted(parts, key=lambda p: p.offset):
        align = APP_ALIGN if p.type == TYPE_APP else SECTOR
        if p.offset % align or p.size % SECTOR or p.size <= 0:
            raise ToolError("partition %s: offset 0x%x / size 0x%x not aligned to 0x%x"
                            % (p.name, p.offset, p.size, align))
        if p.offset < end:
            raise ToolError("partition %s at 0x%x overlaps what precedes it (up to 0x%x)"
                            % (p.name, p.offset, end))
        if p.name in names or len(p.name.encode()) > 16:
            raise ToolError("partition label %r is repeated or longer than 16 bytes" % p.name)
        names.add(p.name)
        end = p.end
    if end > size_bytes:
        raise ToolError("the partitions end at 0x%x, beyond the 0x%x bytes of flash"
                        % (end, size_bytes))


# ---- binary and text forms ------------------------------------------------------------------


def to_binary(parts):
    """The table as the bootloader reads it at 0x8000: TABLE_SIZE bytes."""
    entries = b"".join(ENTRY.pack(ENTRY_MAGIC, p.type, p.subtype, p.offset, p.size,
                                  p.name.encode("ascii"), p.flags) for p in parts)
    table = entries + MD5_MAGIC + b"\xff" * 14 + hashlib.md5(entries).digest()
    if len(table) > TABLE_SIZE - ENTRY.size:  # keep room for the 0xFF end-of-table row
        raise ToolError("too many partitions for one table")
    return table + b"\xff" * (TABLE_SIZE - len(table))


def parse(data):
    """Partitions from a binary table (for round trips and the firmware's own table). Raises
    ToolError when it is not a valid table."""
    parts = []
    for i in range(0, min(len(data), TABLE_SIZE), ENTRY.size):
        row = data[i:i + ENTRY.size]
        if row[:2] == ENTRY_MAGIC:
            _, ptype, subtype, offset, size, label, flags = ENTRY.unpack(row)
            parts.append(Partition(label.rstrip(b"\0").decode("ascii", "replace"), ptype, subtype,
                                   offset, size, flags))
        elif row[:2] == MD5_MAGIC:
            if row[16:] != hashlib.md5(data[:i]).digest():
                raise ToolError("the partition table's MD5 is wrong")
            return parts
        else:
            break
    raise ToolError("no MD5 row after %d partition entries: not a complete table" % len(parts))


def _subtype_name(p):
    return SUBTYPE_NAMES.get(p.type, {}).get(p.subtype, "0x%02x" % p.subtype)


def to_csv(parts):
    """ESP-IDF's CSV form (gen_esp32part.py reads it). The ring's subtype is written as a
    number: older ESP-IDF versions do not know the name "undefined"."""
    lines = ["# Name, Type, SubType, Offset, Size, Flags"]
    for p in parts:
        subtype = "0x%02x" % p.subtype if p.subtype == RING_SUBTYPE else _subtype_name(p)
        lines.append("%s, %s, %s, 0x%x, 0x%x," % (p.name, TYPE_NAMES[p.type], subtype,
                                                    p.offset, p.size))
    return "\n".join(lines) + "\n"


def describe(parts, size, ring=None):
    """A table for people, one line per partition."""
    original_vfs = generic_layout(size)[-1]
    rows = [("name", "type", "subtype", "offset", "end", "size", "")]
    for p in parts:
        note = ""
        if p.name == "vfs":
            note = "littlefs, MicroPython's file system"
            if p.size != original_vfs.size:
                note += " (%d KB in %s, less the ring)" % (original_vfs.size // 1024,
                                                          CSV_NAME[size])
        elif ring and p.name == ring[0]:
            note = "the flash ring, raw (esp32.Partition)"
        elif p.type == TYPE_APP:
            note = "MicroPython"
        rows.append((p.name, TYPE_NAMES[p.type], "%s (0x%02x)" % (_subtype_name(p), p.subtype),
                     "0x%06x" % p.offset, "0x%06x" % p.end, "%d KB" % (p.size // 1024), note))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    out = []
    for r in rows:
        cells = [r[i].rjust(widths[i]) if i == 5 else r[i].ljust(widths[i]) for i in range(6)]
        out.append(("  " + "  ".join(cells) + "  " + r[6]).rstrip())
    return "\n".join(out)


def board_table(board):
    """(flash size name, partitions, ring settings or None, binary) for a board file. Raises
    ToolError / PartitionError."""
    size = flash_size(board)
    parts = layout(board)
    check(parts, FLASH_SIZES[size])
    data = to_binary(parts)
    if parse(data) != parts:  # the round trip: what we write is what we meant
        raise ToolError("internal error: the binary table does not read back as built")
    return size, parts, ring_settings(board), data


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="tools/partitions.py",
        description="Print the partition table a board gets (MicroPython's generic layout for "
                    "its flash size, with the flash ring's raw partition cut from the end of "
                    "vfs); --output writes the binary table that make flash writes at 0x8000.")
    parser.add_argument("--board", help="board name: boards/NAME.json")
    parser.add_argument("--boards-dir", default=str(ROOT / "boards"),
                        help="where board files live (default: boards/)")
    parser.add_argument("--output", metavar="FILE", help="write the binary table (0xC00 bytes)")
    args = parser.parse_args(argv)
    try:
        board = load_board(args.board, args.boards_dir)
        if board["chip"] == "unix":
            raise ToolError("board '%s' is the MicroPython unix port: it has no partition table "
                            "(the ring is the file ring.path)" % args.board)
        size, parts, ring, data = board_table(board)
    except ToolError as e:
        return fail("partitions", "boards/%s.json: %s" % (args.board, e)
                    if isinstance(e, PartitionError) else e)
    print("board '%s': chip %s, %s flash: MicroPython 1.25's %s%s"
          % (args.board, board["chip"], size, CSV_NAME[size],
             ", with the ring partition %r (%d bytes) cut from the end of vfs" % ring
             if ring else ""))
    print(describe(parts, size, ring))
    if not ring:
        print("no ring.partition in the board file: make flash keeps the firmware's own table "
              "and the ring is the file %s on vfs" % (board.get("ring") or {}).get("path", "?"))
    print("CSV (ESP-IDF gen_esp32part format):")
    sys.stdout.write(to_csv(parts))
    print("binary: 0x%x bytes at flash 0x%x, MD5 of the entries %s"
          % (len(data), TABLE_OFFSET, hashlib.md5(data[:ENTRY.size * len(parts)]).hexdigest()))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        print("written to %s" % shown_path(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
