"""The 32-bit MicroPython unix port (build/bin/micropython32, `make micropython32`): the port
whose heap figures stand for an ESP32's (`make size`, tools/bench.py). Skipped when it is not
built. Checks that it really is 32-bit, what its ticks do, and that the library works on it
end to end against a real Mosquitto (RAM store and flash ring).

Ticks, as measured (MicroPython 1.25, ports/unix/unix_mphal.c + extmod/modtime.c): ticks_ms()
and ticks_us() are CLOCK_MONOTONIC (time since the host booted, not since the process started)
masked to the small-int range, which on 32-bit is 2^30. So ticks_ms() wraps every 2^30 ms
(~12.4 days) of host uptime and ticks_us() every 2^30 us (~17.9 minutes); ticks_diff() is
valid within +-2^29, as on an ESP32. A process does not start near the wrap, so tests that
need it must still inject a clock. (The 64-bit port masks to 2^62: it never wraps.)
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LIB, MPY_DIR, ROOT

MICROPYTHON32 = Path(os.environ.get("MICROPYTHON32") or ROOT / "build" / "bin" / "micropython32")
HEAP = "128K"
PERIOD = 1 << 30  # the tick period of a 32-bit port (small ints are 31-bit)

pytestmark = pytest.mark.skipif(not MICROPYTHON32.exists(),
                                reason="no 32-bit MicroPython unix port (make micropython32)")


def mp32(code, *args, timeout=30):
    """Run code on the 32-bit port with lib/ precompiled to .mpy (as on a device)."""
    env = dict(os.environ, MICROPYPATH=":".join([".frozen", str(MPY_DIR), str(LIB)]))
    return subprocess.run([str(MICROPYTHON32), "-X", "heapsize=" + HEAP, "-c", code, *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, timeout=timeout)


def ok(r):
    assert r.returncode == 0, "exit %s\nstdout:\n%s\nstderr:\n%s" % (
        r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"))
    return r.stdout.decode()


def test_word_size_is_32_bit():
    out = ok(mp32("""
import sys, gc
print(sys.maxsize)
print(sys.implementation._mpy)
x = 1 << 29; print(type(x + x).__name__)  # 2^30: past the 31-bit small ints, still an int
"""))
    maxsize, sys_mpy, big = out.split()
    assert int(maxsize) == 2 ** 31 - 1
    sys.path.insert(0, str(ROOT / "tools"))
    from devtools import mpy

    assert mpy.arch_name(mpy.decode_sys_mpy(int(sys_mpy))[2]) == "x86"
    assert big == "int"
    # and the ELF itself: class 1 = 32-bit, machine 3 = i386
    head = MICROPYTHON32.resolve().read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 1 and int.from_bytes(head[18:20], "little") == 3


def test_ticks_wrap_at_2_to_the_30_and_follow_clock_monotonic():
    mono = time.CLOCK_MONOTONIC
    before = time.clock_gettime_ns(mono)
    out = ok(mp32("""
from time import ticks_ms, ticks_us, ticks_add, ticks_diff
P = 1 << 30
t = ticks_ms(); u = ticks_us()
print(t, u)
assert 0 <= t < P and 0 <= u < P
assert ticks_add(P - 1, 1) == 0 and ticks_add(0, -1) == P - 1
assert ticks_diff(0, P - 1) == 1 and ticks_diff(P - 1, 0) == -1
assert ticks_diff(ticks_add(123, (P >> 1) - 1), 123) == (P >> 1) - 1
assert ticks_diff(123 + (P >> 1), 123) == -(P >> 1)   # 2^29 apart is out of range: reads as -2^29
try:
    ticks_add(0, P >> 1)   # a delta of 2^29 or more is refused
    raise AssertionError("ticks_add took a delta of 2^29")
except OverflowError:
    pass
print("ok")
"""))
    after = time.clock_gettime_ns(mono)
    lines = out.split("\n")
    t, u = map(int, lines[0].split())
    assert lines[-2] == "ok"
    # ticks are CLOCK_MONOTONIC modulo 2^30: since host boot, not process start
    lo_ms, hi_ms = before // 1000000, after // 1000000
    assert any(lo_ms <= t + k * PERIOD <= hi_ms for k in range(hi_ms // PERIOD + 2)), (t, lo_ms, hi_ms)
    lo_us, hi_us = before // 1000, after // 1000
    assert any(lo_us <= u + k * PERIOD <= hi_us for k in range(hi_us // PERIOD + 2)), (u, lo_us, hi_us)


PRELUDE = """
import sys
from mqtt import MQTTClient
got = []
def cb(topic, msg, retained, qos, dup):
    got.append((topic, msg, qos))
    print("MSG", topic.decode(), msg.decode(), qos)
"""


def test_publish_and_subscribe_through_mosquitto(broker, peer_factory):
    """QoS 0, 1 and 2 both ways between the library on the 32-bit port and a paho peer."""
    peer = peer_factory(broker)
    peer.subscribe("m32/out", 2)
    env = dict(os.environ, MICROPYPATH=":".join([".frozen", str(MPY_DIR), str(LIB)]))
    code = PRELUDE + """
c = MQTTClient("m32-e2e", "127.0.0.1", int(sys.argv[1]), keepalive=30)
c.set_callback(cb, details=True)
c.connect()
assert c.subscribe("m32/in", 2) == 2
print("READY")
for q in (0, 1, 2):
    c.publish("m32/out", "out-q%d" % q, qos=q)
assert c.flush(5000)
while len(got) < 3:
    c.wait_msg()
c.disconnect()
print("DONE")
"""
    p = subprocess.Popen([str(MICROPYTHON32), "-X", "heapsize=" + HEAP, "-c", code, str(broker.port)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == b"READY", p.stderr.read().decode(errors="replace")
        for q in (0, 1, 2):
            peer.publish("m32/in", "in-q%d" % q, qos=q)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err.decode(errors="replace")
    msgs = [line.split()[1:] for line in out.decode().splitlines() if line.startswith("MSG")]
    assert sorted(msgs) == [["m32/in", "in-q%d" % q, str(q)] for q in (0, 1, 2)]
    got = peer.wait_for(3)
    assert sorted((t, m, q) for t, m, q, _ in got) == [("m32/out", b"out-q%d" % q, q) for q in (0, 1, 2)]


def test_flash_ring_store_delivers_every_message(broker, peer_factory, tmp_path):
    """The ring's records carry CRC-32s, which exceed a 32-bit port's small ints (2^30)."""
    peer = peer_factory(broker)
    peer.subscribe("m32/ring", 1)
    ring = tmp_path / "ring.bin"
    code = """
import sys
from mqtt import MQTTClient
c = MQTTClient("m32-ring", "127.0.0.1", int(sys.argv[1]), store=sys.argv[2], window=8)
c.connect()
for i in range(40):
    c.publish("m32/ring", "r%d" % i, qos=1)
assert c.flush(10000)
c.disconnect()
c = MQTTClient("m32-ring", "127.0.0.1", int(sys.argv[1]), store=sys.argv[2], window=8)
print("PENDING", c.in_flight())   # reopened: the ring has nothing left to send
"""
    out = ok(mp32(code, broker.port, ring))
    assert "PENDING 0" in out
    got = peer.wait_for(40)
    assert [m for _, m, _, _ in got] == [b"r%d" % i for i in range(40)]


# ---- the 32-bit port with the library and the firmware frozen --------------------------------

MICROPYTHON32_FROZEN = Path(os.environ.get("MICROPYTHON32_FROZEN")
                            or ROOT / "build" / "bin" / "micropython32-frozen")


def _frozen_port_problem():
    """None when the frozen port is there and froze what lib/ and firmware/ hold now (it is built
    by `make size` / `make micropython32-frozen`, never by `make test`)."""
    if not MICROPYTHON32_FROZEN.exists():
        return "no frozen 32-bit port (make micropython32-frozen)"
    sys.path.insert(0, str(ROOT / "tools"))
    import bench

    return bench.frozen_port_problem()


def test_frozen_port_imports_the_frozen_library_and_round_trips(broker, peer_factory, tmp_path):
    """With MICROPYPATH just .frozen, mqtt and the firmware modules come from the image (a frozen
    module's __file__ is its name there, not a path), the library's heap after import is within
    the issue's 16 KB, and a QoS 1 round trip through Mosquitto works."""
    problem = _frozen_port_problem()
    if problem:
        pytest.skip(problem)
    peer = peer_factory(broker)
    peer.subscribe("m32f/out", 1)
    code = """
import gc, sys
gc.collect()
base = gc.mem_alloc()
from mqtt import MQTTClient
gc.collect()
print("HEAP", gc.mem_alloc() - base)
import mqtt, mqtt.client, mqtt.session, config, sensors
for m in (mqtt, mqtt.client, mqtt.session, config, sensors):
    print("FILE", m.__file__)
print("PATH", sys.path)
got = []
c = MQTTClient("m32f-e2e", "127.0.0.1", int(sys.argv[1]), keepalive=30)
c.set_callback(lambda t, m: got.append((t, m)))
c.connect()
c.subscribe("m32f/loop", 1)
c.publish("m32f/loop", "back", qos=1)
c.publish("m32f/out", "out", qos=1)
assert c.flush(5000)
while not got:
    c.wait_msg()
print("GOT", got[0][0].decode(), got[0][1].decode())
c.disconnect()
"""
    r = subprocess.run([str(MICROPYTHON32_FROZEN), "-X", "heapsize=" + HEAP, "-c", code,
                        str(broker.port)], cwd=tmp_path, capture_output=True, timeout=30,
                       env=dict(os.environ, MICROPYPATH=".frozen"))
    out = ok(r).splitlines()
    assert [line.split(None, 1)[1] for line in out if line.startswith("FILE")] == [
        "mqtt/__init__.py", "mqtt/client.py", "mqtt/session.py", "config.py", "sensors.py"]
    assert next(line for line in out if line.startswith("PATH")) == "PATH ['', '.frozen']"
    heap = int(next(line for line in out if line.startswith("HEAP")).split()[1])
    assert 0 < heap <= 16384
    assert "GOT m32f/loop back" in out
    assert [m for _, m, _, _ in peer.wait_for(1)] == [b"out"]
