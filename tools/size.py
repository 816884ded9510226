#!/usr/bin/env python3
"""Footprint report: the .mpy size of every library module for the ESP32 (or another target),
and with --heap the heap it takes.

    .venv/bin/python tools/size.py [--arch xtensawin] [--firmware] [--max-total BYTES] [--heap]
    (or: make size [MAX_TOTAL=BYTES], which adds --heap; SIZE_HEAP=0 leaves it out)

Each lib/mqtt module is compiled with mpy-cross (as deploy does) into a temporary directory and
its .mpy size printed, with the total. This is the flash the library takes on the device's file
system; frozen into firmware it costs about the same in ROM. With --max-total the exit status is
1 when the total is over the budget.

--heap (the default when the environment has SIZE_HEAP=1, as `make size` sets it) also runs
the library and the firmware on the MicroPython unix ports against a Mosquitto of its own:
heap after import (without and with the flash ring), with 16 QoS 1 messages in flight, and the
smallest heap the firmware works in with each ESP32 board file. The 32-bit port
(build/bin/micropython32, `make micropython32`) has an ESP32's word size: its figures are the
ones that count; the 64-bit port's are shown beside them. Both load lib/mqtt and firmware/ as
.mpy files, as `make deploy` installs them. A third column comes from the 32-bit port with
the library and the firmware frozen into it (build/bin/micropython32-frozen, `make
micropython32-frozen`; `make size` builds it, or rebuilds it when they changed), as a
production image carries them. About 70 s (tools/bench.py does the measuring).
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devtools import ArgumentParser, ROOT, ToolError, fail, run_main, shown_path, version  # noqa: E402
from devtools import mpy  # noqa: E402

BUDGET = 10240  # the architecture's target for the library's ESP32 .mpy: <= 10 KB


def measure(tree, arch, tmp):
    """[(module path, .py bytes, .mpy bytes)] for every .py under tree."""
    cmd = mpy.mpy_cross_command()
    rows = []
    for src in sorted(Path(tree).rglob("*.py")):
        if "__pycache__" in src.parts:
            continue
        rel = src.relative_to(tree.parent).as_posix()
        dst = Path(tmp) / (rel[:-3] + ".mpy")
        mpy.compile_py(cmd, src, dst, rel, arch)
        rows.append((rel, src.stat().st_size, dst.stat().st_size))
    return rows


def main(argv=None):
    parser = ArgumentParser(
        prog="tools/size.py",
        description="Print the .mpy size of each lib/mqtt module (and the total) for a target.")
    parser.add_argument("--version", action="version", version="%(prog)s " + version())
    parser.add_argument("--arch", default="xtensawin",
                        help="mpy-cross -march (default xtensawin: ESP32 and ESP32-S3; "
                             "rv32imc: ESP32-C3; 'none': bytecode only)")
    parser.add_argument("--firmware", action="store_true",
                        help="also list firmware/ (the device app), in its own total")
    parser.add_argument("--max-total", type=int, metavar="BYTES",
                        help="exit 1 when the library total is over BYTES")
    parser.add_argument("--heap", action=argparse.BooleanOptionalAction,
                        default=os.environ.get("SIZE_HEAP") == "1",
                        help="also measure heap figures on the unix ports (needs mosquitto; "
                             "default: on when SIZE_HEAP=1, as `make size` sets)")
    args = parser.parse_args(argv)
    arch = None if args.arch == "none" else args.arch
    if arch and arch not in mpy.ARCHS:
        return fail("size", "unknown --arch %r (one of: none, %s)"
                    % (args.arch, ", ".join(a for a in mpy.ARCHS if a)))

    trees = [("library", ROOT / "lib" / "mqtt")]
    if args.firmware:
        trees.append(("firmware", ROOT / "firmware"))
    try:
        cross_text = mpy.mpy_cross_version(mpy.mpy_cross_command())[0]
        with tempfile.TemporaryDirectory() as tmp:
            tables = [(label, tree, measure(tree, arch, tmp) if tree.is_dir() else None)
                      for label, tree in trees]
    except ToolError as e:
        return fail("size", e)

    print("%s, -march=%s" % (cross_text, arch or "none (bytecode only)"))
    totals = {}
    for label, tree, rows in tables:
        if rows is None:
            print("\n%s: %s does not exist" % (label, shown_path(tree)))
            continue
        width = max([len(r[0]) for r in rows] + [len(label) + 6])
        print("\n%-*s %9s %9s" % (width, label + " module", ".py B", ".mpy B"))
        for rel, py_size, mpy_size in rows:
            print("%-*s %9d %9d" % (width, rel, py_size, mpy_size))
        totals[label] = sum(r[2] for r in rows)
        print("%-*s %9d %9d" % (width, "total", sum(r[1] for r in rows), totals[label]))
    total = totals.get("library", 0)
    print("\nlibrary .mpy total: %d bytes (architecture target <= %d: %s)"
          % (total, BUDGET, "within" if total <= BUDGET else "over by %d" % (total - BUDGET)))
    status = 0
    if args.heap:
        status = heap_report()
    if args.max_total is not None and total > args.max_total:
        print("size: library .mpy total %d bytes is over --max-total %d"
              % (total, args.max_total), file=sys.stderr)
        return 1
    return status


def heap_report():
    """Print the heap tables (tools/bench.py measures); 1 when something could not be measured."""
    import shutil
    import bench

    ports = bench.unix_ports()
    if not any(bits == 32 for bits, _ in ports):
        print("size: no 32-bit unix port at %s: run `make micropython32` (heap figures from the "
              "64-bit port are not an ESP32's)" % shown_path(bench.MICROPYTHON32), file=sys.stderr)
        if not ports:
            return 1
    if not shutil.which("mosquitto"):
        return fail("size", "the heap figures need mosquitto (make setup)")
    print("\nheap (MicroPython unix ports; lib/mqtt and firmware/ as bytecode .mpy files, or "
          "frozen into the port)\n")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            broker = bench.Broker(tmp)
            figs = bench.heap_figures(broker.start(), tmp)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            return fail("size", "heap figures: %s" % e)
        finally:
            bench._cleanup()
    for line in bench.heap_table(figs):
        print(line)
    print()
    for note in bench.heap_notes(figs):
        print(note)
    errors = [r["error"] for b in figs.values()
              for r in list(b["lib"].values()) + list(b.get("firmware", {}).values()) if "error" in r]
    for e in errors:
        print("size: heap: %s" % e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    run_main("size", main)
