"""Helpers shared by the host-side device tools (tools/flash.py, tools/deploy.py, tools/size.py).

CPython only: these run on the developer's machine, never on the board.
- boards.py: board files (boards/<name>.json), secrets merging, validation, chip facts.
- mpy.py:    mpy-cross invocation and the .mpy version/architecture rules of MicroPython.
"""
import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Exit status every tool gives these classes (beside its own 0, 1 and 2, see its --help)
EXIT_INTERNAL = 12  # a bug: an exception nobody expected (the number mqttc uses too)
EXIT_INTERRUPTED = 130  # Ctrl-C


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


def version():
    """The one version of the project: lib/mqtt's __version__ (library, firmware and tools)."""
    text = (ROOT / "lib" / "mqtt" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'__version__ = "(.+)"', text).group(1)


def run_main(tool, main):
    """Run a tool's main() as a command and exit with its status. Whatever happens, the user
    sees one line, never a traceback: Ctrl-C, a closed stdout (`| head`: not an error), an
    OSError main() did not expect (status 1: the tool could not do its job), or a bug."""
    try:
        status = main()
    except KeyboardInterrupt:
        print("%s: interrupted" % tool, file=sys.stderr)
        status = EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        status = 0
    except ToolError as e:
        status = fail(tool, e)
    except OSError as e:
        what = (e.strerror or str(e)).lower()
        if getattr(e, "filename", None):
            what = "%s: %s" % (shown_path(e.filename), what)
        status = fail(tool, what, 1)
    except Exception as e:  # noqa: BLE001 - the last line of defence, named as such
        status = fail(tool, "internal error: %s: %s (a bug: please report it)" % (type(e).__name__, e),
                      EXIT_INTERNAL)
    sys.exit(status)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error told in one line (exit status 2, as argparse's)."""

    def error(self, message):
        self.exit(2, "%s: error: %s (see %s --help)\n" % (self.prog, message, self.prog))
