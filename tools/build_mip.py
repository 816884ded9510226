"""build_mip: the library precompiled for mip, in mip/ (committed, so that
`mip.install("github:OWNER/REPO/mip/package.json")` fetches .mpy files an ESP32 without
PSRAM can load: importing the library from .py sources needs ~96 KB of heap on a 32-bit
port just to compile it; the .mpy files load, with a ring open, in 64 KB).

    .venv/bin/python tools/build_mip.py          # rebuild mip/ from lib/mqtt
    .venv/bin/python tools/build_mip.py --check  # exit 1 if mip/ is not what lib/ builds to

The .mpy files hold bytecode only (no -march): every port whose MicroPython reads .mpy
version 6 loads them (MicroPython 1.23 and later).
"""
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib" / "mqtt"
OUT = ROOT / "mip"

sys.path.insert(0, str(ROOT / "tools"))
from devtools import ToolError  # noqa: E402
from devtools.mpy import compile_py, mpy_cross_command  # noqa: E402


def version():
    for line in (LIB / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise ToolError("no __version__ in lib/mqtt/__init__.py")


def build(out):
    cross = mpy_cross_command()
    urls = []
    for src in sorted(LIB.glob("*.py")):
        name = "mqtt/%s.mpy" % src.stem
        compile_py(cross, src, out / name, "mqtt/" + src.name)
        urls.append([name, name])  # relative to package.json (mip resolves it, forks work)
    pkg = {"urls": urls, "deps": [], "version": version()}
    (out / "package.json").write_text(json.dumps(pkg, indent=2) + "\n")
    return pkg


def tree(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def main(argv):
    try:
        if "--check" in argv:
            with tempfile.TemporaryDirectory() as tmp:
                build(Path(tmp))
                if tree(Path(tmp)) != (tree(OUT) if OUT.exists() else {}):
                    print("build_mip: mip/ is stale: run `make mip` and commit it", file=sys.stderr)
                    return 1
            print("build_mip: mip/ matches lib/mqtt")
            return 0
        for old in OUT.rglob("*.mpy") if OUT.exists() else ():
            old.unlink()
        pkg = build(OUT)
        print("build_mip: %d modules in mip/, version %s" % (len(pkg["urls"]), pkg["version"]))
        return 0
    except ToolError as e:
        print("build_mip: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
