"""The tick wrap: an ESP32's time.ticks_ms() wraps every 2^30 ms (~12.4 days) and ticks_diff()
is only valid within +-2^29 ms; the 64-bit unix port and CPython never wrap in a test's
lifetime.  So these tests swap the library's tick source (mqtt.compat.set_clock) for a 30-bit
one started just before the wrap, and run the session, the client against Mosquitto (QoS 1/2
publishing, keepalive pings, ack-timeout resends) and the firmware across it:
  cpython, micropython  an emulated 30-bit tick source (masking, as extmod/modtime.c does);
  micropython32         the 32-bit unix port's own 30-bit ticks, shifted to start just before
                        the wrap (skipped when that port is not built).
A comparison that is not wrap-safe (a plain `<` or subtraction on ticks) shows up as a resend
storm, a missing ping, a dropped link or a negative uptime."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import MICROPYTHON, ROOT, Runtime, ok

sys.path.insert(0, str(ROOT / "tools"))
from faultproxy import FaultProxy  # noqa: E402
from test_firmware import FIRMWARE, mpy_tree, on, stop, telemetry, wait_until  # noqa: E402,F401

MICROPYTHON32 = MICROPYTHON.parent / "micropython32" if not os.environ.get("MICROPYTHON32") \
    else __import__("pathlib").Path(os.environ["MICROPYTHON32"])
PERIOD = 1 << 30


class Runtime32(Runtime):
    """The 32-bit unix port, with lib/ precompiled as on the 64-bit one."""

    def __init__(self, tmp_path):
        Runtime.__init__(self, "micropython", tmp_path)
        self.native_ticks = True

    def argv(self, script, *args):
        return [str(MICROPYTHON32), "-X", "heapsize=" + self.heap, str(script), *map(str, args)]


@pytest.fixture(params=["cpython", "micropython", "micropython32"])
def wrt(request, tmp_path):
    if request.param == "micropython32":
        if not MICROPYTHON32.exists():
            pytest.skip("no 32-bit MicroPython unix port (make micropython32)")
        return Runtime32(tmp_path)
    if request.param == "micropython" and not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port missing at %s: run `make setup`" % MICROPYTHON)
    r = Runtime(request.param, tmp_path)
    r.native_ticks = False
    return r


def clock(start, native):
    """Script prelude: the library on a 30-bit tick source that reads `start` now.
    Defines START, ms(), diff(), add()."""
    return """
import time
from mqtt import compat
START = %d
if %r:  # the port's own 30-bit ticks, shifted (ticks_add takes deltas within +-2^29)
    _OFF = time.ticks_diff(START, time.ticks_ms())
    def ms():
        return time.ticks_add(time.ticks_ms(), _OFF)
    diff = time.ticks_diff
    add = time.ticks_add
else:  # emulated, as extmod/modtime.c computes them with a period of 2^30
    try:
        _rms, _rdiff = time.ticks_ms, time.ticks_diff
    except AttributeError:  # CPython
        _rms = lambda: time.monotonic_ns() // 1000000
        _rdiff = lambda a, b: a - b
    _T0 = _rms()
    def ms():
        return (START + _rdiff(_rms(), _T0)) & 0x3FFFFFFF
    def diff(a, b):
        return ((a - b + 0x20000000) & 0x3FFFFFFF) - 0x20000000
    def add(a, b):
        return (a + b) & 0x3FFFFFFF
compat.set_clock(ms, diff, add)
""" % (start, native)


# ---- the sans-I/O session, deterministic -------------------------------------------------------

SESSION = """
from mqtt.session import Session, ConnectionLost
from mqtt.store import MemoryStore
T = (1 << 30) - 1  # the last tick before the wrap

def session(keepalive, now):
    s = Session(MemoryStore(4), 4, 16384, 0, 1000, 1)
    s.connect("w", True, keepalive, now)
    s.written(s.txn)
    s.rx_space()[:4] = b"\\x20\\x02\\x00\\x00"  # CONNACK
    s.received(4)
    assert s.next_event(now)[0] == 1
    return s

# an ack deadline that falls after the wrap: not early, not never
s = session(0, T)
s.publish("t", "m", 1, False, T)
s.written(s.txn)
print("timer", s.next_timer(T))
s.tick(add(T, 999))
print("resends at +999", s.resends, "timer", s.next_timer(add(T, 999)))
s.tick(add(T, 1000))
print("resends at +1000", s.resends)
s.written(s.txn)
try:
    s.tick(add(T, 2000))
    print("no ConnectionLost")
except ConnectionLost as e:
    print("lost at +2000:", e)

# keepalive 10 s from 5 s before the wrap: PINGREQ 5 s after it; PINGRESP overdue 10 s later
t0 = add(T, -5000)
s = session(10, t0)
s.tick(add(T, 4999))
print("tx at +4999", s.txn, "timer", s.next_timer(add(T, 4999)))
s.tick(add(T, 5000))
print("tx at +5000", bytes(s.tx[:s.txn]))
s.written(s.txn)
s.tick(add(T, 14999))
try:
    s.tick(add(T, 15000))
    print("no ConnectionLost")
except ConnectionLost as e:
    print("lost at +15000:", e)
"""


def test_session_deadlines_hold_across_the_wrap_at_2_to_the_30_minus_1(wrt):
    out = ok(wrt.run(clock(PERIOD - 1, wrt.native_ticks) + SESSION)).splitlines()
    assert out == [
        "timer 1000",
        "resends at +999 0 timer 1",
        "resends at +1000 1",
        "lost at +2000: no PUBACK for packet id 1 within 1000 ms",
        "tx at +4999 0 timer 1",
        "tx at +5000 b'\\xc0\\x00'",
        "lost at +15000: no PINGRESP within 10000 ms",
    ]


# ---- the client against Mosquitto ---------------------------------------------------------------

PUBLISH = """
import sys
from mqtt import MQTTClient
c = MQTTClient("wrap-pub", "127.0.0.1", int(sys.argv[1]), keepalive=60, ack_timeout_ms=1000)
c.connect()
t0 = ms()
n = 0
wrapped = False
while diff(ms(), t0) < 3500:  # the wrap comes 2 s in
    c.publish("wrap/q1", "m%d" % n, qos=1)
    c.publish("wrap/q2", "m%d" % n, qos=2)
    n += 1
    c.check_msg()
    compat.sleep_ms(50)
    wrapped = wrapped or ms() < START
assert c.flush(5000), "not everything acknowledged"
print("sent", n, "resends", c.session.resends, "wrapped", wrapped, "connected", c.is_connected())
c.disconnect()
"""


def test_publish_qos1_and_qos2_across_the_wrap(wrt, broker, peer_factory):
    peer = peer_factory(broker)
    peer.subscribe("wrap/#", 2)
    out = ok(wrt.run(clock(PERIOD - 2000, wrt.native_ticks) + PUBLISH, args=[broker.port])).split()
    n = int(out[1])
    assert n > 20 and out[2:] == ["resends", "0", "wrapped", "True", "connected", "True"], out
    got = peer.wait_for(2 * n)
    for topic in ("wrap/q1", "wrap/q2"):
        assert sorted(m for t, m, q, r in got if t == topic) == sorted(b"m%d" % i for i in range(n)), topic


KEEPALIVE = """
import sys
from mqtt import MQTTClient
lines = []
c = MQTTClient("wrap-ping", "127.0.0.1", int(sys.argv[1]), keepalive=1, trace=lambda l: lines.append(l))
c.connect()
t0 = ms()
wrapped = False
while diff(ms(), t0) < 4500:  # the wrap comes 2 s in
    c.wait_msg(200)
    wrapped = wrapped or ms() < START
print("pings", sum(1 for l in lines if l == "> PINGREQ"), "pongs", sum(1 for l in lines if l == "< PINGRESP"),
      "wrapped", wrapped, "connected", c.is_connected())
c.disconnect()
"""


def test_keepalive_pings_go_on_across_the_wrap(wrt, broker):
    out = ok(wrt.run(clock(PERIOD - 2000, wrt.native_ticks) + KEEPALIVE, args=[broker.port])).split()
    pings, pongs = int(out[1]), int(out[3])
    assert 3 <= pings <= 5 and pongs >= pings - 1, out
    assert out[4:] == ["wrapped", "True", "connected", "True"], out


RESEND = """
import sys, json
from mqtt import MQTTClient
ev = []
t = [0]
def tr(line):
    if line.startswith("> PUBLISH") or line.startswith("> PUBREL"):
        ev.append((diff(ms(), t[0]), ms() < START - 100000, line.split()[1] + (" dup" if "dup=1" in line else "")))
c = MQTTClient("wrap-ack", "127.0.0.1", int(sys.argv[1]), ack_timeout_ms=1000, retries=1, trace=tr)
c.connect()
t[0] = ms()
c.publish("wrap/a1", "one", qos=1)
c.publish("wrap/a2", "two", qos=2)
done = c.flush(5000)
print(json.dumps({"done": done, "before_wrap": t[0] > START - 100000, "resends": c.session.resends,
                  "reconnects": c.reconnects, "connected": c.is_connected(), "ev": ev}))
c.disconnect()
"""


def test_ack_timeout_resends_once_across_the_wrap(wrt, broker, peer_factory):
    """The PUBACK and the PUBCOMP are lost on the way (a proxy drops them): the PUBLISH (DUP)
    and the PUBREL go again one ack timeout later - which falls after the wrap."""
    peer = peer_factory(broker)
    peer.subscribe("wrap/#", 2)
    with FaultProxy("127.0.0.1", broker.port) as proxy:
        proxy.drop("PUBACK", 1, "b2c")
        proxy.drop("PUBCOMP", 1, "b2c")
        r = json.loads(ok(wrt.run(clock(PERIOD - 500, wrt.native_ticks) + RESEND, args=[proxy.port])))
    assert r["done"] and r["before_wrap"] and r["resends"] == 2 and r["connected"], r
    ev = r["ev"]
    kinds = [k for _, _, k in ev]
    assert kinds == ["PUBLISH", "PUBLISH", "PUBREL", "PUBLISH dup", "PUBREL"], ev
    at = {k: t for t, _, k in ev}
    assert 900 <= at["PUBLISH dup"] <= 1600, ev  # one ack timeout after the first send...
    assert all(wrapped for t, wrapped, k in ev[3:]), ev  # ...which is after the wrap
    pubrels = [t for t, _, k in ev if k == "PUBREL"]
    assert 900 <= pubrels[1] - pubrels[0] <= 1600, ev
    got = peer.wait_for(2)
    assert (b"two", 2) in [(m, q) for t, m, q, _ in got] and [m for t, m, q, _ in got].count(b"two") == 1


# ---- the firmware -------------------------------------------------------------------------------

# runtime.py (imported by app.py) takes its ticks from MicroPython's time module (the library
# loads only after the configuration is checked): imported before the clock is swapped, so
# that set_clock finds it.
FIRMWARE_MAIN = """
app.main()
"""


def test_firmware_runs_across_the_wrap_with_a_growing_uptime(tmp_path, broker, peer_factory, mpy_tree):
    """The firmware (always-on, sensors every 0.2 s, health every second) started 2 s before
    the wrap: the schedule keeps its pace, the uptime in every health report and log line grows."""
    for name in ("cpython", "micropython"):
        prelude = clock(PERIOD - 2000, False)
        script = tmp_path / ("main-%s.py" % name)
        script.write_text("import app\n" + prelude + FIRMWARE_MAIN)
        uid = "wrap%s" % name[:2]
        args = ["--board", "boards/unix.json", "--broker", "127.0.0.1", "--port", str(broker.port),
                "--ring", str(tmp_path / ("ring-%s.bin" % name)), "--uid", uid, "--period", "0.2",
                "--set", "health.period_s=1"]
        env = dict(os.environ)
        if name == "micropython":  # on the 32-bit port, as the firmware tests (the ESP32's word size)
            port = MICROPYTHON32 if MICROPYTHON32.exists() else MICROPYTHON
            argv = [str(port), "-X", "heapsize=128K", str(script)] + args
            env["MICROPYPATH"] = ".frozen:%s" % mpy_tree
        else:
            argv = [sys.executable, "-u", str(script)] + args
            env["PYTHONPATH"] = "%s:%s" % (ROOT / "lib", FIRMWARE)
        peer = peer_factory(broker)
        prefix = "sensors/" + uid
        peer.subscribe(prefix + "/#", 2)
        p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: len(on(peer, prefix + "/health")) >= 5, 20, "5 health reports", p)
        err = stop(p)
        ups = [json.loads(m)["uptime_s"] for m, q, r in on(peer, prefix + "/health")]
        assert ups == sorted(ups) and ups[-1] >= 3 and all(u >= 0 for u in ups), (name, ups, err)
        stamps = [float(line[1:line.index("]")]) for line in err.splitlines() if line.startswith("[")]
        assert stamps == sorted(stamps), (name, stamps)
        got = telemetry(peer, prefix)
        seq = sorted(b["seq"] for s, b, q in got)  # one sequence for both sensors
        per = {s: sum(1 for x, b, q in got if x == s) for s in ("temperature", "counter")}
        # 0.2 s period for >= 4 s: about 20 readings each, none skipped or bunched by the wrap
        # (the last few may still have been in flight - QoS 2 after QoS 1 - when it was stopped)
        missing = set(range(seq[0], seq[-1] + 1)) - set(seq)
        assert all(m > seq[-1] - 4 for m in missing) and min(per.values()) >= 15, (name, seq, per)


UPTIME = """
now = [START]
compat.set_clock(lambda: now[0], diff, add)
seen = [runtime.uptime_ms()]
for step in range(40):  # 40 x 2^28 ms: ten tick periods, each step within ticks_diff's range
    now[0] = add(now[0], (1 << 28) + 7)
    seen.append(runtime.uptime_ms())
print(seen[0], seen[-1] == 40 * ((1 << 28) + 7), all(b > a for a, b in zip(seen, seen[1:])))
"""


def test_uptime_counts_past_2_to_the_29_ms_and_many_wraps(rt):
    """ticks_diff(now, boot) would turn negative 2^29 ms (6.2 days) after boot on an ESP32."""
    script = rt.script("import runtime\n" + clock(PERIOD - 1, False) + UPTIME)
    env = rt.env()
    key = "MICROPYPATH" if rt.name == "micropython" else "PYTHONPATH"
    env[key] += ":" + str(FIRMWARE)
    r = subprocess.run(rt.argv(script), cwd=ROOT, env=env, capture_output=True, timeout=30)
    assert ok(r).split() == ["0", "True", "True"]
