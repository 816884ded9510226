# mqttc from a checkout: `python3 tools/mqttc.py ...` and `micropython tools/mqttc.py ...`
# (Contract 2).  The command itself is the package lib/mqttc; this launcher only puts lib/ (and on
# the unix port the precompiled build/mpy, which loads in far less RAM) on the import
# path, so no environment variable is needed.  Installed with pip, the `mqttc` command
# runs lib/mqttc directly.
import sys


def _paths():
    here = sys.argv[0] if sys.argv and sys.argv[0] else ""
    try:
        here = __file__
    except NameError:
        pass
    if sys.implementation.name != "micropython":
        import os

        here = os.path.realpath(here)  # a symlink to tools/mqttc.py finds lib/ too
    d = here.rsplit("/", 1)[0] if "/" in here else "."
    root = d.rsplit("/", 1)[0] if "/" in d else (".." if d == "." else ".")
    sys.path.insert(0, root + "/lib")
    if sys.implementation.name == "micropython" and _mpy_fresh(root):
        sys.path.insert(0, root + "/build/mpy")  # precompiled by `make` (tools/build_mpy.py)


def _mpy_fresh(root):
    """True if build/mpy holds an up-to-date .mpy for every module of lib/mqtt and lib/mqttc."""
    import os

    try:
        names = [p + "/" + n for p in ("mqtt", "mqttc") for n in os.listdir(root + "/lib/" + p) if n.endswith(".py")]
        for name in names:
            if os.stat(root + "/build/mpy/" + name[:-3] + ".mpy")[8] < os.stat(root + "/lib/" + name)[8]:
                return False
        return True
    except OSError:
        return False


_paths()
try:
    from mqttc import run
except MemoryError:  # the sources compile in the heap: `make mpy` precompiles them
    sys.stderr.write("mqttc: not enough memory to load mqttc: run `make mpy` (precompiled, it needs "
                     "less) or give MicroPython more heap (micropython -X heapsize=1M ...)\n")
    sys.exit(12)
run()
