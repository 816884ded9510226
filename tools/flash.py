#!/usr/bin/env python3
"""Flash a MicroPython firmware image onto an ESP32-family board, safely.

    .venv/bin/python tools/flash.py --board NAME --port PORT --firmware FILE.bin [--dry-run]
    (or: make flash BOARD=NAME PORT=PORT FIRMWARE=FILE.bin [DRY_RUN=1])

Before anything touches the board, FILE is checked with esptool's image parser: it must be a
complete MicroPython download (bootloader + partition table + application, merged) built for the
board's chip, with valid checksums; anything else is refused with one line and exit status 2.
Then esptool erases the whole flash (the file system too) and writes FILE at the board's
`flash.offset`; esptool 5's write-flash verifies the written data by MD5 (the `--verify` flag of
older versions is gone: verification is always on). The chip and offset come from
boards/NAME.json, never from this file.

A board file with `ring.partition` gets its own partition table (tools/partitions.py:
MicroPython's generic layout with the flash ring's raw partition cut from the end of vfs). FILE's
own table must then be that generic layout; FILE is written in two pieces around the table's
sector (esptool refuses overlapping files) with the board's table at 0x8000 between them, all in
one write-flash. The pieces and the table are staged in build/flash/NAME/.
"""
import hashlib
import shlex
import struct
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devtools import ArgumentParser, ROOT, ToolError, fail, run_main, shown_path, venv_python, version  # noqa: E402
from devtools.boards import CHIPS, flash_offset, load_board  # noqa: E402
import partitions  # noqa: E402

IMAGE_MAGIC = 0xE9
# Where ESP-IDF (and so every MicroPython ESP32 build) puts the partition table in flash; the
# merged download holds it at this address minus the board's flash offset.
PARTITION_TABLE = partitions.TABLE_OFFSET
PARTITION_TABLE_SIZE = partitions.TABLE_SIZE
# A replaced table takes its whole sector: the firmware resumes after it.
AFTER_TABLE = PARTITION_TABLE + partitions.SECTOR
DEFAULT_BAUD = 460800


def download_url(chip):
    return "https://micropython.org/download/%s/" % CHIPS[chip]["download"]


def _load_image(data, chip, what, name):
    """Parse one ESP image (bootloader or application) with esptool and check it is for `chip`
    and undamaged. Returns a one-line description."""
    from esptool.bin_image import LoadFirmwareImage
    from esptool.targets import CHIP_DEFS

    if not data or data[0] != IMAGE_MAGIC:
        first = "0x%02x" % data[0] if data else "nothing"
        raise ToolError("%s: %s is not an ESP firmware image (it starts with %s, not the image "
                        "magic 0xe9)" % (name, what, first))
    try:
        image = LoadFirmwareImage(CHIPS[chip]["esptool"], data)
    except Exception as e:  # esptool raises FatalError, struct.error, RuntimeError, KeyError...
        raise ToolError("%s: %s is not a valid ESP image (%s)" % (name, what, e))
    want = CHIP_DEFS[CHIPS[chip]["esptool"]]
    if image.chip_id != want.IMAGE_CHIP_ID:
        other = next((c.CHIP_NAME for c in CHIP_DEFS.values()
                      if getattr(c, "IMAGE_CHIP_ID", None) == image.chip_id),
                     "an unknown chip (id %d)" % image.chip_id)
        raise ToolError("%s is firmware for %s, but the board's chip is %s: use the %s firmware "
                        "from %s" % (name, other, want.CHIP_NAME, want.CHIP_NAME,
                                     download_url(chip)))
    if image.checksum != image.calculate_checksum():
        raise ToolError("%s: %s checksum is wrong: the file is damaged, download it again"
                        % (name, what))
    if image.append_digest and image.stored_digest != image.calc_digest:
        raise ToolError("%s: %s SHA-256 is wrong: the file is damaged or truncated, download it "
                        "again" % (name, what))
    return "%s image for %s, %d segment(s), checksum%s ok" % (
        what, want.CHIP_NAME, len(image.segments), " and SHA-256" if image.append_digest else "")


def _partitions(data, start, name, offset):
    """The partition table entries (name, type, subtype, offset, size) found at `start`."""
    table = data[start:start + PARTITION_TABLE_SIZE]
    entries = []
    for i in range(0, len(table) - 31, 32):
        entry = table[i:i + 32]
        if entry[:2] == b"\xaa\x50":
            _, ptype, subtype, poff, size, pname, _flags = struct.unpack("<2sBBII16sI", entry)
            entries.append((pname.rstrip(b"\0").decode("ascii", "replace"), ptype, subtype,
                            poff, size))
        elif entry[:2] == b"\xeb\xeb":  # MD5 of the entries before it
            if hashlib.md5(table[:i]).digest() != entry[16:]:
                raise ToolError("%s: the partition table's MD5 is wrong: the file is damaged, "
                                "download it again" % name)
        elif entry == b"\xff" * 32:
            break
        else:
            break  # not a table (or the end of a damaged one): judged below
    if not entries:
        raise ToolError("%s has no partition table at flash 0x%x (file offset 0x%x with the "
                        "board's flash.offset 0x%x): it is not a complete MicroPython firmware "
                        "(an app-only micropython.bin?), or flash.offset is wrong for it"
                        % (name, PARTITION_TABLE, start, offset))
    return entries


def check_image(data, chip, offset, name):
    """Check a merged MicroPython image for `chip`, to be written at `offset`. Returns (report
    lines, its partition table as (name, type, subtype, offset, size) tuples); raises ToolError
    naming the problem."""
    if offset >= PARTITION_TABLE:
        raise ToolError("flash.offset 0x%x is not before the partition table at 0x%x: check the "
                        "board file" % (offset, PARTITION_TABLE))
    report = ["bootloader    @0x%06x: %s"
              % (offset, _load_image(data, chip, "the bootloader", name))]
    table = _partitions(data, PARTITION_TABLE - offset, name, offset)
    report.append("partitions    @0x%06x: %s" % (PARTITION_TABLE, ", ".join(
        "%s@0x%x" % (p[0], p[3]) for p in table)))
    apps = [p for p in table if p[1] == 0]  # type 0 = app
    if not apps:
        raise ToolError("%s: the partition table has no application partition" % name)
    app_at = apps[0][3] - offset
    if app_at >= len(data):
        raise ToolError("%s is truncated: it ends at flash 0x%x, before the application at 0x%x: "
                        "download it again" % (name, offset + len(data), apps[0][3]))
    report.append("application   @0x%06x: %s" % (apps[0][3], _load_image(
        data[app_at:], chip, "the application", name)))
    return report, table


def board_table(board, firmware_table, name):
    """(flash size, Partitions, ring settings, binary) of the board's own partition table, or
    None when the board file asks for no ring partition. The firmware's table must be the
    generic layout the board's table is derived from. Raises ToolError."""
    if not partitions.ring_settings(board):
        return None
    size, parts, ring, data = partitions.board_table(board)
    generic = [(p.name, p.type, p.subtype, p.offset, p.size)
               for p in partitions.generic_layout(size)]
    if [tuple(p) for p in firmware_table] != generic:
        raise ToolError(
            "%s: its partition table (%s) is not MicroPython's generic %s (flash.size \"%s\"), "
            "which the board's table with the ring partition is made from: use the generic "
            "firmware for a %s flash, set flash.size to the firmware's, or remove ring.partition "
            "to keep the firmware's own table" % (
                name, ", ".join("%s@0x%x" % (p[0], p[3]) for p in firmware_table),
                partitions.CSV_NAME[size], size, size))
    return size, parts, ring, data


def stage_pieces(data, offset, table, stage_dir):
    """The image cut around the partition table's sector, and the board's table: three files in
    stage_dir, returned as [(flash address, path)]."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    pieces = [(offset, "firmware-until-0x%x.bin" % PARTITION_TABLE,
               data[:PARTITION_TABLE - offset]),
              (PARTITION_TABLE, "partition-table.bin", table),
              (AFTER_TABLE, "firmware-from-0x%x.bin" % AFTER_TABLE, data[AFTER_TABLE - offset:])]
    out = []
    for address, filename, content in pieces:
        path = stage_dir / filename
        path.write_bytes(content)
        out.append((address, shown_path(path)))
    return out


def commands(chip, port, offset, firmware, baud, pieces=None):
    """esptool's command lines: erase, then write `firmware` at `offset`, or with `pieces`
    ([(address, file)]: the image around the board's partition table) those, in one write."""
    esptool = [venv_python(), "-m", "esptool", "--chip", CHIPS[chip]["esptool"], "--port", port]
    files = ["0x%x" % offset, firmware]
    if pieces:
        files = [arg for address, path in pieces for arg in ("0x%x" % address, path)]
    return [esptool + ["erase-flash"], esptool + ["--baud", str(baud), "write-flash"] + files]


def main(argv=None):
    parser = ArgumentParser(
        prog="tools/flash.py",
        description="Check a MicroPython firmware image against the board's chip, then erase "
                    "the board's flash and write the image at the board's offset (esptool).",
        epilog="Firmware: download the .bin for your board from https://micropython.org/download/ "
               "(ESP32_GENERIC, ESP32_GENERIC_S3, ESP32_GENERIC_C3, ...), MicroPython 1.25 or "
               "newer. Serial ports: `.venv/bin/python -m serial.tools.list_ports`. Exit status: "
               "0 done, 1 esptool failed, 2 bad input or mismatch (nothing written), 12 internal "
               "error (a bug), 130 interrupted.")
    parser.add_argument("--version", action="version", version="%(prog)s " + version())
    parser.add_argument("--board", help="board name: boards/NAME.json gives chip and offset")
    parser.add_argument("--port", help="serial port of the board, e.g. /dev/ttyUSB0")
    parser.add_argument("--firmware", help="MicroPython firmware .bin (the merged download)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the image and print the esptool commands; touch no device")
    parser.add_argument("--boards-dir", default=str(ROOT / "boards"),
                        help="where board files live (default: boards/)")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                        help="baud rate for writing (default %d)" % DEFAULT_BAUD)
    parser.add_argument("--build-dir", default=str(ROOT / "build" / "flash"),
                        help="where the partition table and the image pieces are staged "
                             "(default: build/flash/)")
    args = parser.parse_args(argv)

    try:
        board = load_board(args.board, args.boards_dir)
        chip = board["chip"]
        if chip == "unix":
            raise ToolError("board '%s' is the MicroPython unix port: there is nothing to flash"
                            % args.board)
        if not args.firmware:
            raise ToolError("no firmware given (FIRMWARE=<file.bin>): download it from %s"
                            % download_url(chip))
        firmware = Path(args.firmware)
        if not firmware.is_file():
            raise ToolError("firmware file %s not found: download it from %s"
                            % (args.firmware, download_url(chip)))
        if not args.port and not args.dry_run:
            raise ToolError("no serial port given (PORT=/dev/ttyUSB0; list them with "
                            "`.venv/bin/python -m serial.tools.list_ports`)")
        offset = flash_offset(board)
        data = firmware.read_bytes()
        report, firmware_table = check_image(data, chip, offset, shown_path(firmware))
        own = board_table(board, firmware_table, shown_path(firmware))
    except partitions.PartitionError as e:
        return fail("flash", "boards/%s.json: %s" % (args.board, e))
    except ToolError as e:
        return fail("flash", e)

    print("board '%s': chip %s, MicroPython image at flash offset 0x%x"
          % (args.board, chip, offset))
    print("firmware %s (%d bytes) is a complete image for this chip:"
          % (shown_path(firmware), firmware.stat().st_size))
    for line in report:
        print("  " + line)
    pieces = None
    if own:
        size, parts, ring, table = own
        pieces = stage_pieces(data, offset, table, Path(args.build_dir) / args.board)
        print("the board's partition table replaces the firmware's at 0x%x: %s with the ring "
              "partition %r (%d bytes) cut from the end of vfs (make partitions BOARD=%s):"
              % (PARTITION_TABLE, partitions.CSV_NAME[size], ring[0], ring[1], args.board))
        print(partitions.describe(parts, size, ring))
        print("the image goes in two pieces around the table's sector (staged in %s)"
              % shown_path(Path(args.build_dir) / args.board))
    cmds = commands(chip, args.port or "PORT", offset, shown_path(firmware), args.baud, pieces)
    print("%s (erases the whole flash, files and the ring included; write-flash verifies by "
          "MD5):" % ("would run" if args.dry_run else "running"))
    for cmd in cmds:
        print("  " + shlex.join(cmd))
    if args.dry_run:
        print("dry run: no device was touched")
        return 0
    for step, cmd in enumerate(cmds, 1):
        print("[%d/%d] %s" % (step, len(cmds), shlex.join(cmd)), flush=True)
        status = subprocess.run(cmd).returncode
        if status:
            print("flash: error: esptool exited with status %d (is the board on %s? hold BOOT "
                  "while it connects if it does not answer)" % (status, args.port),
                  file=sys.stderr)
            return 1
    print("flashed and verified. MicroPython formats its file system (vfs) on the first boot. "
          "Next: make deploy BOARD=%s PORT=%s" % (args.board, args.port))
    return 0


if __name__ == "__main__":
    run_main("flash", main)
