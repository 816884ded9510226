"""The host tools (validate_board, size, deploy, flash) never show a traceback: a bad input
is one line naming what is wrong, with the tool's exit status for its class; each tool has
--version, and all of them report the one version of the project."""
import re
import subprocess
import sys

import pytest

from conftest import ROOT

VERSION = re.search(r'__version__ = "(.+)"', (ROOT / "lib/mqtt/__init__.py").read_text()).group(1)
TOOLS = ["validate_board", "size", "deploy", "flash"]


def tool(name, *args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "tools" / (name + ".py")), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", TOOLS + ["mqttc"])
def test_version(name):
    r = tool(name, "--version")
    assert r.returncode == 0 and r.stdout.split()[1] == VERSION, r.stdout + r.stderr


def test_validate_board_takes_the_documented_relative_path():
    r = tool("validate_board", "boards/unix.json")
    assert r.returncode == 0 and r.stdout.strip() == "boards/unix.json: valid", r.stdout + r.stderr
    r = tool("validate_board", "unix.json", cwd=ROOT / "boards")
    assert r.returncode == 0 and r.stdout.strip() == "boards/unix.json: valid", r.stdout + r.stderr


def _bad_files(d):
    (d / "binary.json").write_bytes(b"\xff\xfe{")
    (d / "broken.json").write_text("{")
    (d / "list.json").write_text("[]")
    (d / "dir.json").mkdir()
    (d / "fw.bin").write_bytes(b"not a firmware")


CASES = [
    # (id, tool, arguments ({tmp}: a directory with bad files), status, words in stderr/stdout)
    ("vb-binary", "validate_board", ["{tmp}/binary.json"], 1, "not UTF-8 text"),
    ("vb-broken", "validate_board", ["{tmp}/broken.json"], 1, "not valid JSON: line 1"),
    ("vb-list", "validate_board", ["{tmp}/list.json"], 1, "must hold a JSON object"),
    ("vb-dir", "validate_board", ["{tmp}/dir.json"], 1, "cannot read"),
    ("vb-missing", "validate_board", ["{tmp}/none.json"], 1, "cannot read"),
    ("vb-option", "validate_board", ["--frob"], 2, "unrecognized arguments: --frob"),
    ("size-arch", "size", ["--arch", "frob"], 2, "unknown --arch 'frob'"),
    ("size-number", "size", ["--max-total", "lots"], 2, "invalid int value: 'lots'"),
    ("flash-no-board", "flash", [], 2, "no board given"),
    ("flash-dir-firmware", "flash", ["--board", "esp32-devkitc", "--firmware", "{tmp}/dir.json", "--dry-run"],
     2, "not found"),
    ("flash-not-firmware", "flash", ["--board", "esp32-devkitc", "--firmware", "{tmp}/fw.bin", "--dry-run"],
     2, "is not an ESP firmware image"),
    ("flash-option", "flash", ["--baud", "fast"], 2, "invalid int value"),
    ("deploy-unix", "deploy", ["--board", "unix"], 2, "deploy into its file system with --device-dir"),
    ("deploy-device-dir-is-file", "deploy", ["--board", "unix", "--device-dir", "{tmp}/fw.bin"], 1,
     "fw.bin/lib: not a directory"),
    ("deploy-no-build-dir", "deploy", ["--board", "esp32-devkitc", "--dry-run", "--build-dir", "/proc/none"], 1,
     "/proc/none: no such file or directory"),
]


@pytest.mark.parametrize("name,args,status,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_never_a_traceback(name, args, status, words, tmp_path):
    _bad_files(tmp_path)
    r = tool(name, *[a.format(tmp=tmp_path) for a in args])
    out = r.stdout + r.stderr
    assert r.returncode == status, out
    assert "Traceback" not in out and words in out, out
    assert len(r.stderr.splitlines()) <= 1, r.stderr


def test_a_closed_stdout_is_not_an_error():
    """`validate_board | head -1`: head exits, the tool's next write finds the pipe closed."""
    p = subprocess.Popen([sys.executable, str(ROOT / "tools" / "validate_board.py")], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(60) == 0 and b"Traceback" not in err, err
