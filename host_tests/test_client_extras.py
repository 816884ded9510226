"""What an application (the firmware) asks of the client besides MQTT itself, on both runtimes
and for both front ends, against a real Mosquitto: room() and stats() instead of reaching into
the store, disconnect(close_store=True) to let the flash ring go at the end, and wait_msg(ms)
as the application's idle wait - bounded by ms also while the broker cannot be reached."""
import sys
import time

from conftest import ROOT, Peer, free_port, ok

sys.path.insert(0, str(ROOT / "tools"))
from faultproxy import FaultProxy  # noqa: E402

# ARGS: the broker's port, a ring path.  FDS() counts this process's open files (the ring's
# file is one of them while the store is open).
PRELUDE = """
import sys, os
from mqtt import MQTTException, StoreFull
from mqtt.compat import ticks_ms, ticks_diff, sleep_ms
PORT = int(sys.argv[1])
RING = sys.argv[2]

def FDS():
    return len(os.listdir("/proc/self/fd"))

def show(st):
    print("STATS", " ".join("%s=%s" % (k, st[k]) for k in sorted(st)))
"""

# ---- room(), stats(), disconnect(close_store=True): the blocking client ----------------------

BLOCKING = """
from mqtt import MQTTClient
fds = FDS()
c = MQTTClient("extras", "127.0.0.1", PORT, store=RING, ring_size=16384, ring_capacity=4,
               reconnect=True, timeout_ms=300, backoff_ms=50, backoff_cap_ms=200)
print("OPEN", FDS() - fds)
print("ROOM", c.room())
for i in range(3):  # no link yet: into the ring
    c.publish("extras/t", "m%d" % i, qos=1)
print("ROOM", c.room())
c.publish("extras/t", "lost", qos=0)  # no link: dropped, counted
show(c.stats())
c.publish("extras/t", "m3", qos=1)
print("ROOM", c.room())
t = ticks_ms()
try:
    c.publish("extras/t", "m4", qos=1)
except StoreFull:
    print("FULL after", ticks_diff(ticks_ms(), t) >= 300)
c.connect(clean_session=False)
print("FLUSHED", c.flush(5000), "ROOM", c.room())
# the same client id from elsewhere: the broker drops our link, the client re-connects
other = MQTTClient("extras", "127.0.0.1", PORT)
other.connect(clean_session=False)
t = ticks_ms()
while c.reconnects == 0 and ticks_diff(ticks_ms(), t) < 5000:
    c.wait_msg(100)
other.close()
st = c.stats()
st["messages"] = -1  # a new dict each time: changing it changes nothing
show(c.stats())
c.disconnect(close_store=True)
print("CLOSED", FDS() - fds, c.is_connected())
c.disconnect(close_store=True)  # again: nothing to do
ram = MQTTClient("ram", "127.0.0.1", PORT, window=8)
print("RAM", ram.room(), "size" in ram.stats(), ram.stats()["capacity"])
"""


def stats(line):
    return dict(w.split("=") for w in line.split()[1:])


def test_room_stats_and_closing_the_store_blocking_client(rt, broker, peer_factory, tmp_path):
    peer = peer_factory(broker)
    peer.subscribe("extras/#", 1)
    out = ok(rt.run(PRELUDE + BLOCKING, args=(broker.port, tmp_path / "ring.bin")))
    lines = out.splitlines()
    assert lines[0] == "OPEN 1", out  # the ring's file
    assert [ln for ln in lines if ln.startswith("ROOM")] == ["ROOM 4", "ROOM 1", "ROOM 0"], out
    offline = stats(lines[3])
    assert offline["messages"] == "3" and offline["capacity"] == "4" and offline["size"] == "16384", out
    assert int(offline["free_bytes"]) < 16384 and offline["skipped"] == "0", out
    assert offline["reconnects"] == "0" and offline["dropped"] == "1", out
    assert "FULL after True" in lines, out
    assert "FLUSHED True ROOM 4" in lines, out
    after = stats([ln for ln in lines if ln.startswith("STATS")][1])
    assert after["messages"] == "0" and after["reconnects"] == "1" and after["dropped"] == "1", out
    assert "CLOSED 0 False" in lines, out  # the ring's file closed, connected or not
    assert lines[-1] == "RAM 8 False 8", out
    got = [m for t, m, q, r in peer.wait_for(4) if t == "extras/t"]
    assert got == [b"m0", b"m1", b"m2", b"m3"], got


def test_disconnect_closes_the_store_also_while_the_broker_is_away(rt, tmp_path):
    """The deep-sleep path: nothing answers, the ring is still closed, and what it holds
    is there for the next client (the next boot)."""
    port = free_port()  # nobody listens: refused
    out = ok(rt.run(PRELUDE + """
from mqtt import MQTTClient
fds = FDS()
c = MQTTClient("away", "127.0.0.1", PORT, store=RING, ring_size=16384, reconnect=True, timeout_ms=200)
try:
    c.connect(clean_session=False)
except OSError as e:  # refused (MicroPython sees it only on the first send: still an OSError)
    print("DOWN")
c.publish("a/t", "kept", qos=2)
c.disconnect(100, close_store=True)
print("CLOSED", FDS() - fds)
c = MQTTClient("away", "127.0.0.1", PORT, store=RING, ring_size=16384)
print("NEXT", c.in_flight(), c.room())
""", args=(port, tmp_path / "ring.bin")))
    assert out.split() == ["DOWN", "CLOSED", "0", "NEXT", "1", "63"], out


# ---- the same for mqtt.aio ----------------------------------------------------------------------

AIO = """
import asyncio
from mqtt.aio import MQTTClient

async def main():
    fds = FDS()
    c = MQTTClient("extras-aio", "127.0.0.1", PORT, store=RING, ring_size=16384, ring_capacity=4,
                   reconnect=True, timeout_ms=300, backoff_ms=50, backoff_cap_ms=200)
    print("OPEN", FDS() - fds)
    print("ROOM", c.room())
    for i in range(3):
        await c.publish("extras/t", "m%d" % i, qos=1)
    print("ROOM", c.room())
    await c.publish("extras/t", "lost", qos=0)
    show(c.stats())
    await c.publish("extras/t", "m3", qos=1)
    print("ROOM", c.room())
    t = ticks_ms()
    try:
        await c.publish("extras/t", "m4", qos=1)
    except StoreFull:
        print("FULL after", ticks_diff(ticks_ms(), t) >= 300)
    await c.connect(clean_session=False)
    print("FLUSHED", await c.flush(5000), "ROOM", c.room())
    other = MQTTClient("extras-aio", "127.0.0.1", PORT)
    await other.connect(clean_session=False)
    t = ticks_ms()
    while c.reconnects == 0 and ticks_diff(ticks_ms(), t) < 5000:
        await asyncio.sleep(0.05)
    other.close()
    st = c.stats()
    st["messages"] = -1
    show(c.stats())
    await c.disconnect(close_store=True)
    await asyncio.sleep(0.1)  # (CPython's transports close their sockets in the next rounds)
    print("CLOSED", FDS() - fds, c.is_connected())
    await c.disconnect(close_store=True)
    ram = MQTTClient("ram", "127.0.0.1", PORT, window=8)
    print("RAM", ram.room(), "size" in ram.stats(), ram.stats()["capacity"])

asyncio.run(main())
"""


def test_room_stats_and_closing_the_store_asyncio_client(rt, broker, peer_factory, tmp_path):
    peer = peer_factory(broker)
    peer.subscribe("extras/#", 1)
    out = ok(rt.run(PRELUDE + AIO, args=(broker.port, tmp_path / "ring.bin")))
    lines = out.splitlines()
    assert lines[0] == "OPEN 1", out
    assert [ln for ln in lines if ln.startswith("ROOM")] == ["ROOM 4", "ROOM 1", "ROOM 0"], out
    offline = stats(lines[3])
    assert offline["messages"] == "3" and offline["capacity"] == "4" and offline["size"] == "16384", out
    assert offline["reconnects"] == "0" and offline["dropped"] == "1" and offline["overflow"] == "0", out
    assert "FULL after True" in lines, out
    assert "FLUSHED True ROOM 4" in lines, out
    after = stats([ln for ln in lines if ln.startswith("STATS")][1])
    assert after["messages"] == "0" and after["reconnects"] == "1" and after["dropped"] == "1", out
    assert "CLOSED 0 False" in lines, out
    assert lines[-1] == "RAM 8 False 8", out
    got = [m for t, m, q, r in peer.wait_for(4) if t == "extras/t"]
    assert got == [b"m0", b"m1", b"m2", b"m3"], got


# ---- wait_msg(ms) is bounded by ms while the broker cannot be reached -----------------------------
# With reconnect=True a connection attempt may take up to timeout_ms (here 1500 ms, longer
# than the waits): it is carried on from call to call, each call giving it only its own time.

WAITS = """
from mqtt import MQTTClient
got = []
c = MQTTClient("bounded", "127.0.0.1", PORT, keepalive=1, store=RING, ring_size=16384,
               reconnect=True, timeout_ms=1500, backoff_ms=50, backoff_cap_ms=400)
c.set_callback(lambda t, m: got.append(m))

def waits(ms, total):
    # the worst overrun of wait_msg(ms), calling it for `total` ms
    worst = -99999
    t0 = ticks_ms()
    while ticks_diff(ticks_ms(), t0) < total:
        t = ticks_ms()
        c.wait_msg(ms)
        worst = max(worst, ticks_diff(ticks_ms(), t) - ms)
    return worst
"""

REFUSED = WAITS + """
try:
    c.connect(clean_session=False, timeout_ms=300)
except (OSError, MQTTException):
    print("REFUSED")
for i in range(5):
    c.publish("b/t", "m%d" % i, qos=1)  # into the ring meanwhile
print("OVER", waits(300, 3000), waits(0, 500), waits(50, 1000), "STORED", c.in_flight())
"""


def test_wait_msg_is_bounded_while_nothing_listens(rt, tmp_path):
    port = free_port()  # closed: every attempt is refused at once
    out = ok(rt.run(PRELUDE + REFUSED, args=(port, tmp_path / "ring.bin"), timeout=30))
    print(rt.name, out)
    words = out.split()
    assert words[0] == "REFUSED", out
    overs = [int(w) for w in words[words.index("OVER") + 1:words.index("STORED")]]
    assert max(overs) < 150, "wait_msg overran its time by %s ms: %s" % (overs, out)
    assert words[-1] == "5", out


BLACKHOLE = WAITS + """
c.connect(clean_session=False)
c.subscribe("b/t", 1)
print("UP")
worst = waits(300, 6000)   # the link goes silent meanwhile, then comes back
t = ticks_ms()
while not got and ticks_diff(ticks_ms(), t) < 10000:
    worst = max(worst, waits(300, 300))
print("OVER", worst, "RECONNECTS", c.reconnects, "GOT", b"".join(got).decode() or "-")
c.disconnect(close_store=True)
"""


def test_wait_msg_is_bounded_through_a_black_hole_and_gets_traffic_after_it(rt, broker, tmp_path):
    """Up through a proxy, then the proxy forwards nothing and closes nothing: the missing
    PINGRESP ends the link; the attempts that follow get no CONNACK (the proxy holds them).
    Every wait_msg(300) returns within 300 ms all along; after the hole the client is back
    and a message published to it arrives."""
    with FaultProxy("127.0.0.1", broker.port) as px:
        p = rt.spawn(PRELUDE + BLACKHOLE, args=(px.port, tmp_path / "ring.bin"))
        try:
            assert p.stdout.readline().decode().strip() == "UP", p.stderr.read1().decode()
            px.blackhole(True)
            time.sleep(4)
            px.blackhole(False)
            peer = Peer(broker)
            try:
                deadline = time.monotonic() + 15
                while p.poll() is None and time.monotonic() < deadline:
                    peer.publish("b/t", "after", qos=1)
                    time.sleep(0.5)
            finally:
                peer.close()
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode == 0, err.decode()
    print(rt.name, out.decode())
    words = out.decode().split()
    assert int(words[words.index("OVER") + 1]) < 150, out
    assert int(words[words.index("RECONNECTS") + 1]) >= 1, out
    assert words[words.index("GOT") + 1].startswith("after"), out

