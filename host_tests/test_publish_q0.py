"""QoS 0 publish's short way (Session.publish0, which the front ends try before
Session.publish: the topic kept laid in the send buffer, the fixed header before it) puts
the same bytes on the wire as the general encoder (codec.put_publish), on both runtimes: payload lengths on both sides of a one-byte remaining
length, retain on and off, str and bytes topics and payloads (non-ASCII too), mutable topics
and payloads, a payload larger than the send buffer, a packet already queued, a bad topic
repeated, tracing, and the keepalive clock."""
from conftest import ok

SCRIPT = r"""
from mqtt.session import Session
from mqtt.store import MemoryStore
from mqtt.codec import put_publish, check_topic, TopicError

s = Session(MemoryStore(4), 4, 16384, 0, 1000, 1)
s.connect("q0", True, 0, 0)
s.written(s.txn)
s.rx_space()[:4] = b"\x20\x02\x00\x00"  # CONNACK
s.received(4)
assert s.next_event(0)[0] == 1

def ref(topic, msg, retain, qos=0, pid=0):
    t = check_topic(topic, False)
    m = msg.encode() if isinstance(msg, str) else msg
    b = bytearray(len(t) + len(m) + 9)
    return bytes(b[: put_publish(b, 0, t, m, qos, retain, False, pid)])

def out():
    b = bytes(s.tx[s.txoff : s.txn])
    s.written(s.txn - s.txoff)
    return b

T = b"q0/t"  # remaining length 2 + 4 + n: 127 at n = 121
S = "q0/s\u00e9"
now = [100]
n_ok = 0

short = [0]

def publish(topic, msg, retain, t):
    # as the front ends do: the short way, else the general one
    if s.publish0(topic, msg, retain, t):
        short[0] += 1
        return 0
    return s.publish(topic, msg, 0, retain, t)

def check(topic, msg, retain=False, expect=None):
    global n_ok
    now[0] += 1
    assert publish(topic, msg, retain, now[0]) == 0
    got = out()
    want = expect if expect is not None else ref(topic, msg, retain)
    assert got == want, (topic, msg, retain, got, want)
    assert s._last_tx == now[0]
    n_ok += 1

for n in (0, 1, 64, 120, 121, 122, 123, 200, 121, 5):
    for r in (False, True, False, 1, 0):
        check(T, b"x" * n, r)
check(S, "h\u00e9llo w\u00f6rld")  # str topic and payload, UTF-8
check(S, "h\u00e9llo w\u00f6rld")
check(T, bytearray(b"ba"))
check(T, memoryview(b"mv-payload"))
check(bytearray(b"q0/ba"), b"mutable topic")
check(bytearray(b"q0/ba"), b"mutable topic")
check(memoryview(b"q0/mv"), b"a memoryview topic")
check(T, b"y" * 300)  # more than the send buffer: the general way grows it
check(T, b"y" * 300)
check(T, b"z" * 16380)  # remaining length 16386: three bytes
check(T, b"z" * 16370)
check(T, b"")
# a packet already queued: the QoS 0 one goes after it
pid = s.publish(b"q1/t", b"one", 1, False, 200)
now[0] += 1
assert publish(T, b"after", True, now[0]) == 0
assert out() == ref(b"q1/t", b"one", False, 1, pid) + ref(T, b"after", True)
check(T, b"again")
# a bad topic is refused every time, and leaves nothing queued
for bad in ("q0/+", "q0/+", b"q0/#", b"", "a\x00b"):
    try:
        publish(bad, b"m", False, 300)
        raise AssertionError("accepted %r" % bad)
    except TopicError:
        pass
    assert s.txn == 0
check(T, b"still fine")
# tracing: one line per PUBLISH, as the general way writes it
lines = []
s.trace = lines.append
check(T, b"traced", True)
check(S, b"traced too")
s.trace = None
assert lines == ["> PUBLISH pid=0 qos=0 dup=0 retain=1 topic=q0/t len=6",
                 "> PUBLISH pid=0 qos=0 dup=0 retain=0 topic=q0/s\u00e9 len=10"], lines
print("ok", n_ok, "short", short[0])
"""


def test_qos0_short_way_writes_the_same_bytes(rt):
    rt.heap = "512K"  # 16 KB payloads and their reference copies
    # 61 of them the short way: all but the mutable topics (3), and the two payloads that did
    # not fit the send buffer until the general way had grown it
    assert ok(rt.run(SCRIPT)).split() == ["ok", "66", "short", "61"]
