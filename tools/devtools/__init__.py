"""Helpers shared by the host-side device tools (tools/flash.py, tools/deploy.py, tools/size.py).

CPython only: these run on the developer's machine, never on the board.
- boards.py: board files (boards/<name>.json), secrets merging, validation, chip facts.
- mpy.py:    mpy-cross invocation and the .mpy version/architecture rules of MicroPython.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ToolError(Exception):
    """A problem the user must fix (bad input, mismatch): reported as one line, exit status 2."""


def fail(tool, err, status=2):
    print("%s: error: %s" % (tool, err), file=sys.stderr)
    return status


def shown_path(path):
    """A path as the user would type it: relative to the current directory when inside it."""
    # abspath, not resolve(): resolving .venv/bin/python would leave the venv.
    full = os.path.abspath(path)
    rel = os.path.relpath(full, os.getcwd())
    return full if rel == ".." or rel.startswith(".." + os.sep) else rel


def venv_python():
    """The interpreter running this tool (.venv's under `make`), to run esptool and mpremote."""
    return shown_path(sys.executable)
