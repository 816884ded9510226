"""tools/faultproxy.py against a real Mosquitto: forwarding, cut, black hole, delay, MQTT-aware
drop/duplicate, counters and the CLI. Proxied clients are raw sockets sending hand-built MQTT
3.1.1 packets, so every byte on the wire is known exactly."""
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import types

import pytest

from conftest import ROOT, free_port

sys.path.insert(0, str(ROOT / "tools"))
from faultproxy import FaultProxy, split_packets  # noqa: E402

# ---- hand-built MQTT 3.1.1 packets -------------------------------------------------------


def _rl(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(x):
    x = x.encode() if isinstance(x, str) else x
    return struct.pack("!H", len(x)) + x


def pkt(first, body=b""):
    return bytes([first]) + _rl(len(body)) + body


def connect_pkt(cid, keepalive=60, clean=True, will=None):
    flags = 0x02 if clean else 0
    payload = _s(cid)
    if will:
        flags |= 0x04
        payload += _s(will[0]) + _s(will[1])
    return pkt(0x10, _s("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload)


def publish_pkt(topic, payload, qos=0, pid=1, dup=False):
    body = _s(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return pkt(0x30 | (0x08 if dup else 0) | (qos << 1), body)


def subscribe_pkt(pid, topic, qos):
    return pkt(0x82, struct.pack("!H", pid) + _s(topic) + bytes([qos]))


def ack(kind, pid):
    first = {"PUBACK": 0x40, "PUBREC": 0x50, "PUBREL": 0x62, "PUBCOMP": 0x70}[kind]
    return pkt(first, struct.pack("!H", pid))


PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
CONNACK_OK = b"\x20\x02\x00\x00"
DISCONNECT = b"\xe0\x00"


class Raw:
    """A raw-socket MQTT client that reads whole packets with a bounded wait."""

    def __init__(self, port, host="127.0.0.1"):
        self.s = socket.create_connection((host, port), timeout=5)
        self.buf = bytearray()

    def send(self, data):
        self.s.sendall(data)

    def recv_packet(self, timeout=3.0):
        """The next whole packet; None on timeout; b"" when the connection closed."""
        deadline = time.monotonic() + timeout
        while True:
            pkts, _ = split_packets(self.buf)
            if pkts:
                # put back all but the first
                rest = b"".join(pkts[1:])
                self.buf[:0] = rest
                return pkts[0]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                data = self.s.recv(65536)
            except socket.timeout:
                return None
            except ConnectionResetError:
                return b""
            if not data:
                return b""
            self.buf += data

    def connect(self, cid, **kw):
        self.send(connect_pkt(cid, **kw))
        assert self.recv_packet() == CONNACK_OK
        return self

    def close(self):
        self.s.close()


@pytest.fixture
def proxy(broker):
    with FaultProxy(broker.host, broker.port) as p:
        yield p


@pytest.fixture
def raws():
    made = []

    def make(port):
        r = Raw(port)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def via(proxy):
    """Something Peer/peer_factory accepts as a 'broker', pointing at the proxy."""
    return types.SimpleNamespace(host="127.0.0.1", port=proxy.port)


# ---- tests ----------------------------------------------------------------------------


def test_forwards_connect_connack_and_counts(proxy, raws):
    c = raws(proxy.port).connect("fp-fwd")
    c.send(PINGREQ)
    assert c.recv_packet() == PINGRESP
    c.send(DISCONNECT)
    assert c.recv_packet() == b""             # the broker closed; the proxy passed that on
    s = proxy.stats()
    assert s["accepted"] == 1
    assert s["c2b"]["packets"] == {"CONNECT": 1, "PINGREQ": 1, "DISCONNECT": 1}
    assert s["c2b"]["bytes"] == {"CONNECT": len(connect_pkt("fp-fwd")), "PINGREQ": 2,
                                 "DISCONNECT": 2}
    assert s["b2c"]["packets"] == {"CONNACK": 1, "PINGRESP": 1}
    assert s["b2c"]["bytes"] == {"CONNACK": 4, "PINGRESP": 2}
    assert s["c2b"]["total_bytes"] == s["c2b"]["forwarded_bytes"] == len(connect_pkt("fp-fwd")) + 4
    assert proxy.wait_for(lambda st: st["active"] == 0 and st["closed"] == 1, 2)


def test_partial_reads_are_reframed(proxy, raws, peer_factory, broker):
    sub = peer_factory(broker)
    sub.subscribe("fp/part", 0)
    c = raws(proxy.port)
    big = b"x" * 300                           # two-byte remaining length
    data = connect_pkt("fp-part") + publish_pkt("fp/part", big)
    for i in range(len(data)):               # one byte at a time
        c.send(data[i:i + 1])
        if i < 40:
            time.sleep(0.002)
    assert c.recv_packet() == CONNACK_OK
    got = sub.wait_for(1, 5)
    assert got == [("fp/part", big, 0, False)]
    s = proxy.stats()
    assert s["c2b"]["packets"] == {"CONNECT": 1, "PUBLISH": 1}
    assert s["c2b"]["raw_bytes"] == 0


def test_paho_client_through_the_proxy(proxy, peer_factory, broker):
    sub = peer_factory(broker)
    sub.subscribe("fp/paho", 1)
    pub = peer_factory(via(proxy))
    pub.publish("fp/paho", b"hello", qos=1)
    assert sub.wait_for(1, 5) == [("fp/paho", b"hello", 1, False)]
    s = proxy.stats()
    assert s["c2b"]["packets"]["PUBLISH"] == 1 and s["b2c"]["packets"]["PUBACK"] == 1


def test_cut_closes_both_sides_promptly_and_new_connections_work(proxy, raws, peer_factory,
                                                                 broker):
    watcher = peer_factory(broker)
    watcher.subscribe("fp/will", 0)
    c = raws(proxy.port).connect("fp-cut", will=("fp/will", "gone"))
    t0 = time.monotonic()
    assert proxy.cut() == 1
    assert c.recv_packet(2) == b""              # EOF/RST, not a timeout
    assert time.monotonic() - t0 < 0.5
    # the broker saw its side drop without DISCONNECT: it publishes the will
    assert watcher.wait_for(1, 5) == [("fp/will", b"gone", 0, False)]
    c2 = raws(proxy.port).connect("fp-cut2")
    c2.send(PINGREQ)
    assert c2.recv_packet() == PINGRESP
    s = proxy.stats()
    assert s["cuts"] == 1 and s["cut_connections"] == 1 and s["accepted"] == 2
    assert s["active"] == 1


def test_blackhole_discard_is_silent_but_open_then_cut_on_lift(proxy, raws, peer_factory, broker):
    c = raws(proxy.port).connect("fp-bh")
    c.send(subscribe_pkt(1, "fp/bh", 0))
    assert c.recv_packet()[0] == 0x90         # SUBACK
    proxy.blackhole(True)
    c.send(PINGREQ)
    peer_factory(broker).publish("fp/bh", b"lost", 0)
    t0 = time.monotonic()
    assert c.recv_packet(0.6) is None           # silence: a timeout, not EOF
    assert time.monotonic() - t0 >= 0.55
    c.send(PINGREQ)                              # the socket still takes data: link "open"
    assert proxy.stats()["active"] == 1
    # a new connection meanwhile is accepted and held: no CONNACK
    held = raws(proxy.port)
    held.send(connect_pkt("fp-held"))
    assert held.recv_packet(0.3) is None
    assert proxy.stats()["held"] == 1
    # lifting: the connection that lost data is cut; the held one now reaches the broker
    assert proxy.blackhole(False) == 1
    assert c.recv_packet(2) == b""
    assert held.recv_packet(3) == CONNACK_OK
    s = proxy.stats()
    assert s["c2b"]["blackholed_bytes"] >= 4 and s["b2c"]["blackholed_bytes"] > 0
    assert s["blackhole_cut_connections"] == 1


def test_blackhole_keeps_broker_side_half_open(proxy, raws, peer_factory, broker):
    watcher = peer_factory(broker)
    watcher.subscribe("fp/half", 0)
    c = raws(proxy.port).connect("fp-half", will=("fp/half", "dead"))
    proxy.blackhole(True)
    c.close()                                    # the client gives up on the silent link
    assert proxy.wait_for(lambda s: s["active"] == 1, 1)   # the broker side stays up
    assert watcher.wait_for(1, 0.4) == []        # so the broker has not noticed: no will
    assert proxy.blackhole(False) == 1           # lifting cuts the orphaned broker side
    assert watcher.wait_for(1, 5) == [("fp/half", b"dead", 0, False)]
    assert proxy.stats()["active"] == 0


def test_blackhole_stall_holds_then_delivers(proxy, raws):
    c = raws(proxy.port).connect("fp-stall")
    proxy.blackhole(True, mode="stall")
    c.send(PINGREQ)
    assert c.recv_packet(0.4) is None
    proxy.blackhole(False)
    assert c.recv_packet(2) == PINGRESP          # nothing lost
    s = proxy.stats()
    assert s["c2b"]["blackholed_bytes"] == 0 and s["active"] == 1


def _rtt(c, n=5):
    best = None
    for _ in range(n):
        t0 = time.perf_counter()
        c.send(PINGREQ)
        assert c.recv_packet(2) == PINGRESP
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best


def test_delay_adds_round_trip_and_overlaps_packets(proxy, raws):
    c = raws(proxy.port).connect("fp-delay")
    base = _rtt(c)
    proxy.delay_ms = 10
    slow = _rtt(c)
    assert slow >= 0.020, "round trip %.1f ms with 10 ms one-way delay" % (slow * 1000)
    assert slow < 0.020 + base + 0.1
    # pipelined: 10 pings in flight at once take ~2 x delay, not 10 x 2 x delay
    proxy.delay(50)
    t0 = time.perf_counter()
    c.send(PINGREQ * 10)
    for _ in range(10):
        assert c.recv_packet(2) == PINGRESP
    total = time.perf_counter() - t0
    assert 0.1 <= total < 0.4, "10 pipelined pings took %.0f ms" % (total * 1000)
    # order preserved across a delay change (packets queued earlier still go first)
    sub_pid = 7
    proxy.delay(60)
    c.send(subscribe_pkt(sub_pid, "fp/order", 1))
    time.sleep(0.01)
    proxy.delay(0)
    c.send(PINGREQ)
    first = c.recv_packet(2)
    assert first[0] == 0x90 and first[2:4] == struct.pack("!H", sub_pid)
    assert c.recv_packet(2) == PINGRESP


def test_drop_next_puback_from_broker(proxy, raws, peer_factory, broker):
    sub = peer_factory(broker)
    sub.subscribe("fp/drop", 1)
    c = raws(proxy.port).connect("fp-drop")
    proxy.drop("PUBACK", 1, "b2c")
    c.send(publish_pkt("fp/drop", b"one", qos=1, pid=1))
    assert c.recv_packet(0.5) is None            # its PUBACK was swallowed
    assert sub.wait_for(1, 5)[0][1] == b"one"    # but the broker did get the message
    c.send(publish_pkt("fp/drop", b"two", qos=1, pid=2))
    assert c.recv_packet(2) == ack("PUBACK", 2)  # the rule was for one packet only
    s = proxy.stats()
    assert s["b2c"]["packets"]["PUBACK"] == 2 and s["b2c"]["dropped"] == {"PUBACK": 1}
    assert proxy.rules() == []


def test_drop_pubrel_from_client_then_resend(proxy, raws):
    c = raws(proxy.port).connect("fp-q2")
    c.send(publish_pkt("fp/q2", b"x", qos=2, pid=5))
    assert c.recv_packet() == ack("PUBREC", 5)
    proxy.drop("pubrel", direction="c2b")
    c.send(ack("PUBREL", 5))
    assert c.recv_packet(0.4) is None            # the broker never saw it
    c.send(ack("PUBREL", 5))                     # a resend goes through
    assert c.recv_packet(2) == ack("PUBCOMP", 5)
    assert proxy.stats()["c2b"]["dropped"] == {"PUBREL": 1}


@pytest.mark.parametrize("qos", [0, 1])
def test_duplicate_publish_is_delivered_twice(proxy, raws, peer_factory, broker, qos):
    sub = peer_factory(broker)
    sub.subscribe("fp/dup", 1)
    c = raws(proxy.port).connect("fp-dup%d" % qos)
    proxy.duplicate("PUBLISH", 1, "c2b")
    c.send(publish_pkt("fp/dup", b"twice", qos=qos, pid=9))
    if qos:
        assert c.recv_packet(2) == ack("PUBACK", 9)
        assert c.recv_packet(2) == ack("PUBACK", 9)     # one per copy
    c.send(publish_pkt("fp/dup", b"once", qos=qos, pid=10))
    got = sub.wait_for(3, 5)
    time.sleep(0.1)
    got = sub.messages
    assert [m[1] for m in got] == [b"twice", b"twice", b"once"]
    s = proxy.stats()
    assert s["c2b"]["packets"]["PUBLISH"] == 2 and s["c2b"]["duplicated"] == {"PUBLISH": 1}
    one = len(publish_pkt("fp/dup", b"twice", qos=qos, pid=9))
    two = len(publish_pkt("fp/dup", b"once", qos=qos, pid=10))
    assert s["c2b"]["bytes"]["PUBLISH"] == one + two
    assert s["c2b"]["forwarded_bytes"] == s["c2b"]["total_bytes"] + one


def test_match_predicate_and_unlimited_rule(proxy, raws):
    c = raws(proxy.port).connect("fp-match")
    proxy.drop("PUBACK", None, "b2c", match=lambda p: p[2:4] == b"\x00\x02")
    for pid in (1, 2, 3, 2):
        c.send(publish_pkt("fp/m", b"m", qos=1, pid=pid))
    got = [c.recv_packet(1) for _ in range(2)]
    assert got == [ack("PUBACK", 1), ack("PUBACK", 3)]
    assert c.recv_packet(0.3) is None
    assert proxy.stats()["b2c"]["dropped"] == {"PUBACK": 2}
    proxy.clear()
    c.send(publish_pkt("fp/m", b"m", qos=1, pid=2))
    assert c.recv_packet(2) == ack("PUBACK", 2)


def test_broker_down_closes_client_promptly(raws):
    with FaultProxy("127.0.0.1", free_port()) as p:
        t0 = time.monotonic()
        try:
            c = raws(p.port)
            assert c.recv_packet(2) == b""
        except ConnectionResetError:
            pass  # reset before connect() (or the read) even returned: as prompt as it gets
        assert time.monotonic() - t0 < 0.5
        assert p.wait_for(lambda s: s["upstream_failures"] == 1 and s["active"] == 0, 2)


def test_stop_closes_everything_and_joins(broker, raws):
    p = FaultProxy(broker.host, broker.port).start()
    c = raws(p.port).connect("fp-stop")
    t0 = time.monotonic()
    p.stop()
    assert time.monotonic() - t0 < 1
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy")]
    assert c.recv_packet(2) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()


def test_cli_with_control_port(broker):
    cport = free_port()
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "tools" / "faultproxy.py"),
                             "--listen", "127.0.0.1:0", "--target",
                             "%s:%d" % (broker.host, broker.port), "--delay-ms", "5",
                             "--control", str(cport)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        banner = proc.stdout.readline().decode()
        assert banner.startswith("faultproxy listening 127.0.0.1:"), banner
        port = int(banner.split()[2].rsplit(":", 1)[1])
        ctl = socket.create_connection(("127.0.0.1", cport), timeout=5)
        f = ctl.makefile("rwb")

        def cmd(line):
            f.write(line.encode() + b"\n")
            f.flush()
            return f.readline().decode().strip()

        c = Raw(port).connect("fp-cli")
        assert cmd("delay 15") == "ok delay 15"
        assert _rtt(c, 2) >= 0.030
        assert cmd("drop PUBACK 1 b2c") == "ok drop PUBACK 1 b2c"
        assert cmd("dup bogus").startswith("error")
        c.send(publish_pkt("fp/cli", b"x", qos=1, pid=1))
        assert c.recv_packet(0.4) is None
        answer = cmd("stats")
        assert answer.startswith("ok ")
        st = json.loads(answer[3:])
        assert st["b2c"]["dropped"] == {"PUBACK": 1} and st["delay_ms"] == 15
        assert cmd("blackhole on stall") == "ok blackhole on stall"
        assert cmd("blackhole off") == "ok blackhole off, cut 0"
        assert cmd("cut") == "ok cut 1"
        assert c.recv_packet(2) == b""
        # stdin takes the same commands
        proc.stdin.write(b"stats\n")
        proc.stdin.flush()
        line = proc.stdout.readline().decode()
        assert json.loads(line[3:])["cuts"] == 1
        proc.stdin.write(b"quit\n")
        proc.stdin.flush()
        assert proc.wait(5) == 0
        c.close()
        ctl.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
