"""Precompile lib/mqtt and the mqttc command (lib/mqttc) to .mpy bytecode in build/mpy
(only what changed), as a device runs it.  The unix port loads these with less RAM than
compiling the sources (mqttc does not fit a 128 KB heap as source).

    .venv/bin/python tools/build_mpy.py
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mqtt", "mqttc")
OUT = ROOT / "build" / "mpy"

sys.path.insert(0, str(ROOT / "tools"))
from devtools.mpy import compile_py, mpy_cross_command  # noqa: E402  (the deploy tool's mpy-cross)


def build():
    cross = None
    for pkg in PACKAGES:
        src_dir = ROOT / "lib" / pkg
        out = OUT / pkg
        out.mkdir(parents=True, exist_ok=True)
        for src in sorted(src_dir.glob("*.py")):
            dst = out / (src.stem + ".mpy")
            if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
                cross = cross or mpy_cross_command()
                compile_py(cross, src, dst, pkg + "/" + src.name)
        for dst in out.glob("*.mpy"):
            if not (src_dir / (dst.stem + ".py")).exists():
                dst.unlink()  # a module that no longer exists must not linger


if __name__ == "__main__":
    build()
