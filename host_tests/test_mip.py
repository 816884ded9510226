"""mip/: the library precompiled to .mpy for `mip install`, so a board without PSRAM need not
compile the sources (which takes ~96 KB of heap on a 32-bit port; the .mpy load, with a ring open, in 64 KB)."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, MICROPYTHON, MICROPYTHON32, mip_install

BINARY = MICROPYTHON32 if MICROPYTHON32.exists() else MICROPYTHON


def test_mip_tree_is_what_lib_builds_to():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_mip.py"), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_mip_package_installs_with_mpremote_and_loads_in_a_small_heap(tmp_path):
    """mpremote's own mip code installs mip/package.json into a fake device file system; on
    the (32-bit) unix port the library then imports and opens a ring in a 64 KB heap, where
    the .py sources cannot even be compiled."""
    target = tmp_path / "lib"
    target.mkdir()
    mip_install(ROOT / "mip" / "package.json", target)
    got = sorted(p.name for p in (target / "mqtt").iterdir())
    assert got == sorted(p.stem + ".mpy" for p in (ROOT / "lib" / "mqtt").glob("*.py"))
    if not BINARY.exists():
        pytest.skip("no MicroPython unix port: run `make setup`")
    code = ("import mqtt, mqtt.ring, gc\n"
            "st = mqtt.ring.RingStore(%r, 3 * 4096, capacity=16)\n"
            "st.add(st.next_pid(), 1, False, b't', b'x')\n"
            "gc.collect(); print('OK', mqtt.__version__, gc.mem_free())\n" % str(tmp_path / "r.ring"))

    def run(path):
        return subprocess.run([str(BINARY), "-X", "heapsize=64K", "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, MICROPYPATH=str(path)), timeout=30)
    r = run(target)
    assert r.returncode == 0 and r.stdout.startswith("OK "), r.stdout + r.stderr
    if BINARY == MICROPYTHON32:
        src = run(ROOT / "lib")
        assert src.returncode != 0 and "MemoryError" in src.stderr, src.stdout + src.stderr
