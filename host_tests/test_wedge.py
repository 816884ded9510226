"""Nothing a device receives or is handed can wedge it (issue 11), on both runtimes:
oversize inbound PUBLISH skipped and acknowledged, topics checked before anything is
stored or sent, no reconnect storm, QoS 2 answered with PUBACK, QoS 2 after a lost
broker session, every wait bounded against a broker that never answers."""
import socket
import sys
import time

import pytest

from conftest import ROOT, ok
from fakebroker import (
    FakeBroker, connack, connect, describe, puback, pubcomp, publish, pubrec, pubrel,
)
from test_fake_broker import BYE, PRELUDE, client, start

sys.path.insert(0, str(ROOT / "tools"))
from faultproxy import FaultProxy  # noqa: E402


# ---- 1. an inbound PUBLISH over max_packet ------------------------------------------------

OVERSIZE = '''
def show(topic, msg, retained, qos, dup):
    print("MSG", topic.decode(), len(msg), qos)
    if topic == b"bye":
        done.append(1)
c = MQTTClient("fb-big", "127.0.0.1", PORT, timeout_ms=3000, max_packet=1024,
               log=lambda line: print("LOG", line))
c.set_callback(show, details=True)
try:
    c.connect(clean_session=False)
    serve(c)
    print("OVERSIZE", c.session.oversize, "RX", len(c.session.rx), "INBOUND", c.store.inbound)
    c.disconnect()
    print("DONE")
except Exception as e:
    exc(e)
'''


def test_oversize_publish_is_skipped_acknowledged_counted_and_logged(rt):
    """[MQTT-4.5.0-2] each oversize PUBLISH is acknowledged per its QoS (QoS 2 with the
    exactly-once bookkeeping [MQTT-4.3.3-2]) on the same connection; its body is never
    buffered (rx stays <= max_packet + 5) even when it arrives in pieces or shares a write
    with the next packet; a topic longer than max_packet is skipped unseen."""
    big1 = publish("big/1", b"a" * 3000, 1, pid=1)
    big2 = publish("big/2", b"b" * 5000, 2, pid=2)
    big0 = publish("big/0", b"c" * 2000)
    giant = publish("t/" + "x" * 1498, b"d" * 10, 1, pid=3)
    big5 = publish("big/5", b"e" * 1100, 1, pid=5)
    with FakeBroker() as fb, client(rt, OVERSIZE, fb.port) as ch:
        c = fb.accept()
        c.expect(connect("fb-big", clean=False))
        c.send(connack())
        for i in range(0, len(big1), 700):  # in pieces: the skip spans reads
            c.send(big1[i:i + 700])
            time.sleep(0.02)
        c.expect(puback(1))
        c.send(big2)
        c.expect(pubrec(2))
        c.send(publish("big/2", b"b" * 5000, 2, pid=2, dup=True))  # the broker's resend
        c.expect(pubrec(2))  # PUBREC again, the id still awaits PUBREL
        c.send(pubrel(2))
        c.expect(pubcomp(2))
        c.send(big0, giant)
        c.expect(puback(3))
        c.send(big5 + publish("small", "ok", 1, pid=6))  # one write: acks in order [MQTT-4.6.0-2]
        c.expect(puback(5) + puback(6))
        c.send(BYE)
        c.expect_disconnect()
        ch.finish()
    assert ch.messages() == [("small", "2", "1"), ("bye", "3", "0")], ch.out
    oversize = ch.lines("OVERSIZE")[0]
    assert oversize[0] == "6", ch.out
    assert int(oversize[2]) <= 1024 + 5, "the receive buffer grew to %s bytes" % oversize[2]
    assert oversize[4] == "[]", ch.out  # id 2 released by its PUBREL
    logs = [" ".join(x) for x in ch.lines("LOG")]
    assert logs == [
        "skipped a QoS 1 PUBLISH of %d bytes (over max_packet 1024), topic big/1" % len(big1),
        "skipped a QoS 2 PUBLISH of %d bytes (over max_packet 1024), topic big/2" % len(big2),
        "skipped a QoS 2 PUBLISH of %d bytes (over max_packet 1024), topic big/2" % len(big2),
        "skipped a QoS 0 PUBLISH of %d bytes (over max_packet 1024), topic big/0" % len(big0),
        "skipped a QoS 1 PUBLISH of %d bytes (over max_packet 1024), topic too long to show" % len(giant),
        "skipped a QoS 1 PUBLISH of %d bytes (over max_packet 1024), topic big/5" % len(big5),
    ], ch.out


MOSQ_SUB = '''
from mqtt.compat import ticks_ms, ticks_diff
c = MQTTClient("fat-sub", HOST, PORT, max_packet=4096, reconnect=True, timeout_ms=3000)
c.set_callback(cb, details=True)
c.connect(clean_session=False)
c.subscribe("fat/#", 2)
print("READY")
t0 = ticks_ms()
while len(got) < 4 and ticks_diff(ticks_ms(), t0) < 15000:
    c.wait_msg(100)
t1 = ticks_ms()
while ticks_diff(ticks_ms(), t1) < 1000:  # a redelivery would show up now
    c.wait_msg(100)
print("OVERSIZE", c.session.oversize, "RECONNECTS", c.reconnects)
c.disconnect()
'''


def test_oversize_messages_from_mosquitto_do_not_stop_a_persistent_subscriber(rt, broker, peer_factory):
    """Issue 11's case: one 10 KB QoS 1 and one 10 KB QoS 2 message to a max_packet=4096
    persistent subscriber, then small ones: one connection, the small ones delivered,
    the big ones counted and never redelivered."""
    from test_mosquitto import messages, script
    proc = rt.spawn(script(broker, MOSQ_SUB))
    try:
        assert proc.stdout.readline().strip() == b"READY"
        p = peer_factory(broker)
        p.publish("fat/1", b"x" * 10240, qos=1)
        p.publish("fat/2", b"y" * 10240, qos=2)
        for i in range(4):
            p.publish("fat/small", "s%d" % i, qos=1 + i % 2)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    out = out.decode()
    assert messages(out) == [("fat/small", "s%d" % i, str(1 + i % 2), "0") for i in range(4)], out
    words = out.split()
    assert words[words.index("OVERSIZE") + 1:] == ["2", "RECONNECTS", "0"], out


# ---- 2. outbound topics checked before anything is stored or sent --------------------------

TOPICS = '''
import mqtt
from mqtt.session import Session
from mqtt.store import MemoryStore
s = Session(MemoryStore(4))
BIG = "x" * 65536
for kind, t in [("pub", "a/b"), ("pub", "a/+/c"), ("pub", "a/#"), ("pub", ""), ("pub", "a\\x00b"),
                ("pub", b"a\\xffb"), ("pub", "a\\ud800b"), ("pub", b"\\xc0\\xaf"), ("pub", BIG),
                ("pub", "\\u00e9t\\u00e9/\\U0001F600"), ("pub", bytearray(b"a/\\x00")), ("pub", bytearray(b"a/+")),
                ("sub", "#"), ("sub", "+"), ("sub", "a/#"), ("sub", "+/b/+"), ("sub", "/+/"), ("sub", ""),
                ("sub", "a#"), ("sub", "a/#/b"), ("sub", "a+"), ("sub", "+a/b"), ("sub", "a/b+/c"),
                ("sub", "##"), ("sub", "a/\\x00"), ("unsub", "a/+x"), ("unsub", "a/+"), ("will", "w/+")]:
    try:
        if kind == "pub":
            s.publish(t, b"m", 1, False, 0)
        elif kind == "sub":
            s.subscribe([(t, 1)], 0)
        elif kind == "unsub":
            s.unsubscribe([t], 0)
        else:
            mqtt.MQTTClient("x", "127.0.0.1").set_last_will(t, "bye")
        print("OK")
    except mqtt.TopicError as e:
        print("ERR", isinstance(e, ValueError), str(e)[:100])
print("STORED", s.store.count)
'''

W = "ERR True topic filter has + or # inside a level, or # not last: "
TOPIC_VERDICTS = [
    "OK",
    "ERR True topic name contains a wildcard: b'a/+/c'",
    "ERR True topic name contains a wildcard: b'a/#'",
    "ERR True topic name is empty: b''",
    "ERR True topic name contains U+0000: b'a\\x00b'",
    "ERR True topic name is not valid UTF-8: b'a\\xffb'",
    "ERR True topic name is not valid UTF-8: b'a\\xed\\xa0\\x80b'",
    "ERR True topic name is not valid UTF-8: b'\\xc0\\xaf'",
    "ERR True topic name is longer than 65535 bytes: b'" + "x" * 59,
    "OK",
    "ERR True topic name contains U+0000: bytearray(b'a/\\x00')",
    "ERR True topic name contains a wildcard: bytearray(b'a/+')",
    "OK", "OK", "OK", "OK", "OK",
    "ERR True topic filter is empty: b''",
    W + "b'a#'", W + "b'a/#/b'", W + "b'a+'", W + "b'+a/b'", W + "b'a/b+/c'", W + "b'##'",
    "ERR True topic filter contains U+0000: b'a/\\x00'",
    W + "b'a/+x'",
    "OK",
    "ERR True topic name contains a wildcard: b'w/+'",
    "STORED 2",
]


def test_bad_topic_names_and_filters_raise_topic_error_with_the_same_message(rt):
    """Topic names: not empty [MQTT-4.7.3-1], no wildcard [MQTT-3.3.2-2], <= 65535 bytes,
    well-formed UTF-8 without U+0000 [MQTT-1.5.3-1/2]; filters: "#" last and alone in its
    level, "+" alone in its level [MQTT-4.7.1-2/3].  One exception class, a ValueError,
    and the same text on both runtimes; nothing is stored."""
    rt.heap = "512K"  # 64 KB topics and payloads: validation, not a memory budget
    lines = ok(rt.run(TOPICS)).splitlines()
    assert lines == TOPIC_VERDICTS


CHECKED = '''
from mqtt import TopicError
c = MQTTClient("fb-topics", "127.0.0.1", PORT, timeout_ms=3000, reconnect=True, backoff_ms=50,
               backoff_cap_ms=200, store=ARG or None)
def bad(f):
    try:
        f()
        print("ACCEPTED")
    except TopicError as e:
        print("TOPICERROR", c.in_flight(), c.dropped)
    except ValueError as e:
        print("VALUEERROR", c.in_flight(), c.dropped)
try:
    c.connect(clean_session=False)
    bad(lambda: c.publish("a/+", "x", qos=1))
    bad(lambda: c.publish("a/#", "x", qos=0))
    bad(lambda: c.subscribe("a/#/b", 1))
    bad(lambda: c.subscribe([("ok/1", 1), ("bad+", 1)]))
    bad(lambda: c.unsubscribe("x/#/y"))
    print("PID", c.publish("a/b", "fine", qos=1))
    print("FLUSH", c.flush(3000))
    c.wait_msg(300)  # the broker goes away
    print("DOWN", c.is_connected())
    bad(lambda: c.publish("down/+", "x", qos=1))
    bad(lambda: c.publish("", "x", qos=0))
    bad(lambda: c.subscribe("", 1))
    if ARG:
        bad(lambda: c.publish("big", b"z" * 20000, qos=1))  # larger than the whole ring
    print("STORED", c.in_flight())
    c.close()
except Exception as e:
    exc(e)
'''


@pytest.mark.parametrize("store", ["ram", "ring"])
def test_bad_topics_raise_before_anything_is_stored_or_sent_also_while_down(rt, tmp_path, store):
    """Neither the broker nor the store ever sees a bad topic: the link stays up, the next
    good publication goes out; while the link is down nothing is queued.  A payload that
    can never fit the ring raises ValueError too."""
    rt.heap = "512K"  # 64 KB topics and payloads: validation, not a memory budget
    arg = str(tmp_path / "topics.ring") if store == "ring" else ""
    with FakeBroker() as fb, client(rt, CHECKED, fb.port, arg) as ch:
        c = fb.accept()
        c.expect(connect("fb-topics", clean=False))
        c.send(connack())
        pid = c.expect_packet(publish("a/b", "fine", 1, pid=1), any_pid=True)  # nothing before it
        c.send(puback(pid))
        c.close()
        fb.sock.close()  # nothing listens any more
        ch.finish()
    expect = ["TOPICERROR 0 0"] * 5 + ["PID %d" % pid, "FLUSH True", "DOWN False"] + ["TOPICERROR 0 0"] * 3
    if store == "ring":
        expect.append("VALUEERROR 0 0")
    assert [ln for ln in ch.out.splitlines() if not ln.startswith("EXC")] == expect + ["STORED 0"], ch.out


# ---- 3. no reconnect storm -------------------------------------------------------------------

STORM = '''
c = MQTTClient("fb-storm", "127.0.0.1", PORT, timeout_ms=2000, reconnect=True, backoff_ms=50,
               backoff_cap_ms=1500)
try:
    c.connect(clean_session=False)
except Exception as e:
    exc(e)
t0 = ticks_ms()
while ticks_diff(ticks_ms(), t0) < 20000:
    c.wait_msg(100)
'''


def test_a_failure_on_every_connection_backs_off_to_the_cap_and_a_healthy_link_resets_it(rt):
    """The back-off starts over only after a link that stayed up for backoff_cap_ms: a
    broker that drops every connection right after CONNACK gets about one connection per
    cap (not ~20 a second), and after a long healthy link the next reconnect is fast."""
    with FakeBroker() as fb, client(rt, STORM, fb.port) as ch:
        times = []
        t_end = time.monotonic() + 5.0
        while time.monotonic() < t_end:  # the storm: CONNACK, then the link drops at once
            c = fb.accept(timeout=6)
            times.append(time.monotonic())
            c.expect(connect("fb-storm", clean=False))
            c.send(connack())
            c.close()
        gaps = [b - a for a, b in zip(times, times[1:])]
        # 50 ms doubling, with jitter: 25-50, 50-100, ..., 750-1500 ms, then the cap.  At the
        # shortest jitter the connections start at 0, 0.025, 0.075, 0.175, 0.375, 0.775, then
        # every 0.75 s: 11 within 5 s at most (a storm would be ~100); the last one accepted
        # above may have come after the 5 s.
        within = sum(1 for t in times if t < t_end)
        assert within <= 11, "%d connections in 5 s, gaps %s" % (within, gaps)
        assert gaps[-1] >= 0.7, gaps
        c = fb.accept(timeout=3)  # a healthy link, up longer than the cap
        c.expect(connect("fb-storm", clean=False))
        c.send(connack())
        c.expect_silence(1.8)
        c.close()
        t_lost = time.monotonic()
        c = fb.accept(timeout=3)
        gap = time.monotonic() - t_lost
        c.expect(connect("fb-storm", clean=False))
        c.send(connack())
        assert gap < 0.35, "reconnect after a healthy link took %.3f s (back-off not reset)" % gap


# ---- 4. QoS 2 answered with PUBACK (RabbitMQ 3.10) -----------------------------------------

DOWNGRADE = '''
c = MQTTClient("fb-rabbit", "127.0.0.1", PORT, timeout_ms=3000, log=lambda line: print("LOG", line))
try:
    c.connect()
    print("PID", c.publish("q2/a", "one", qos=2))
    print("PID", c.publish("q2/b", "two", qos=2))
    print("FLUSH", c.flush(3000))
    print("COUNTS", c.session.downgraded, c.session.completed, c.in_flight())
    c.disconnect()
    print("DONE")
except Exception as e:
    exc(e)
'''


def test_qos2_answered_with_puback_completes_once_without_resend(rt):
    """A broker that downgrades QoS 2 to 1 (RabbitMQ's MQTT plugin answers PUBACK): each
    message completes, nothing is resent, the link stays up, one log line says so."""
    with FakeBroker() as fb, client(rt, DOWNGRADE, fb.port) as ch:
        c = start(fb, "fb-rabbit")
        a = c.expect_packet(publish("q2/a", "one", 2, pid=1), any_pid=True)
        b = c.expect_packet(publish("q2/b", "two", 2, pid=2), any_pid=True)
        c.send(puback(a), puback(b))
        c.expect_disconnect()  # no PUBREL, no resend: straight to DISCONNECT
        ch.finish()
    assert ch.lines("FLUSH") == [("True",)] and ch.lines("COUNTS") == [("2", "2", "0")], ch.out
    logs = ch.lines("LOG")
    assert len(logs) == 1 and "downgraded" in " ".join(logs[0]), ch.out


# ---- 5. QoS 2 after the broker lost the session ---------------------------------------------

LOST = '''
c = MQTTClient("q2-lost", HOST, PORT, timeout_ms=3000)
c.connect(clean_session=False)
c.publish("lost/t", "once", qos=2)
print("FLUSH1", c.flush(1500))  # PUBCOMP never arrives (dropped by the proxy)
print("WAITING")
sys.stdin.readline()  # the broker restarts meanwhile, without persistence
print("SP", c.connect(clean_session=False))
print("FLUSH2", c.flush(5000))
c.publish("lost/t", "after", qos=2)
print("FLUSH3", c.flush(5000))
c.disconnect()
'''


def test_qos2_stays_exactly_once_across_a_broker_restart_without_persistence(rt, broker, peer_factory):
    """[MQTT-4.3.3-1]: PUBREC arrived, PUBCOMP did not, then Mosquitto restarts without
    persistence (session present = 0).  The client sends PUBREL again, never the PUBLISH;
    Mosquitto answers PUBCOMP for the unknown id; the subscriber gets the message once."""
    import subprocess
    from test_mosquitto import PRELUDE as MPRELUDE
    p1 = peer_factory(broker)
    p1.subscribe("lost/t", 2)
    with FaultProxy(broker.host, broker.port) as px:
        px.drop("PUBCOMP", 1, "b2c")
        proc = rt.spawn(MPRELUDE % px.port + LOST, stdin=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == b"FLUSH1 False"
            assert proc.stdout.readline().strip() == b"WAITING"
            assert [m[1] for m in p1.wait_for(1, 5)] == [b"once"]
            p1.close()
            broker.kill()
            broker.start()
            p2 = peer_factory(broker)
            p2.subscribe("lost/t", 2)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, err.decode()
        assert out.decode().split()[-6:] == ["SP", "False", "FLUSH2", "True", "FLUSH3", "True"], out
        got = [m[1] for m in p2.wait_for(1, 5)]
        time.sleep(0.5)
        got = [m[1] for m in p2.messages]
        assert got == [b"after"], "a PUBREC'd message was published again: %s" % got
        s = px.stats()
        assert s["c2b"]["packets"].get("PUBREL") == 3, s  # before the restart, after it, for "after"


# ---- 6. every wait bounded against a broker that never answers -------------------------------

SILENT = '''
from mqtt.compat import sleep_ms
c = MQTTClient("silent", "127.0.0.1", PORT, timeout_ms=1500, reconnect=True, backoff_ms=50,
               backoff_cap_ms=300)
worst = {}
def timed(name, limit, f, *a):
    t = ticks_ms()
    f(*a)
    d = ticks_diff(ticks_ms(), t) - limit
    worst[name] = max(worst.get(name, -99999), d)
t = ticks_ms()
try:
    c.connect(clean_session=False, timeout_ms=400)
    print("CONNECTED")
except Exception as e:
    print("CONNECT", type(e).__name__, ticks_diff(ticks_ms(), t) - 400)
t0 = ticks_ms()
i = 0
while ticks_diff(ticks_ms(), t0) < 6000:
    timed("wait_msg", 300, c.wait_msg, 300)
    timed("check_msg", 0, c.check_msg)
    timed("publish", 0, c.publish, "s/t", "x", False, i % 3)
    timed("flush", 200, c.flush, 200)
    sleep_ms(10)
    i += 1
print("OVER", " ".join("%s=%d" % kv for kv in sorted(worst.items())), "STORED", c.in_flight(),
      "OF", i - (i + 2) // 3)
'''


def test_every_wait_is_bounded_while_the_broker_accepts_tcp_but_never_answers(rt):
    """wait_msg(t), check_msg(), publish() and flush(t) with reconnect=True return within
    their time (+ a small slack) while every connection attempt hangs waiting for CONNACK
    (timeout_ms 1500, longer than any of those calls); connect(timeout_ms) too."""
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(64)  # the kernel completes the TCP handshakes; nobody ever reads
        out = ok(rt.run(PRELUDE + SILENT, args=(ls.getsockname()[1],), timeout=30))
    print(rt.name, out)
    words = dict(w.split("=") for w in out.split("OVER")[1].split()[:4])
    assert out.split()[:2] == ["CONNECT", "ConnectionLost"], out
    slack = 150
    assert int(out.split()[2]) < slack, out
    for name, over in words.items():
        assert int(over) < slack, "%s overran its time by %s ms\n%s" % (name, over, out)
    stored = out.split()[-3:]
    assert stored[0] == stored[2] != "0", "QoS 1/2 publications were not all kept while down: " + out


REFUSED = '''
import errno
from mqtt import MQTTClient
from mqtt.aio import MQTTClient as AioClient
import asyncio
for what, c in (("blocking", MQTTClient("rf", "127.0.0.1", PORT, timeout_ms=2000)),
                ("aio", AioClient("rf", "127.0.0.1", PORT, timeout_ms=2000))):
    try:
        if what == "aio":
            asyncio.run(c.connect())
        else:
            c.connect()
        print(what, "CONNECTED")
    except Exception as e:
        print(what, type(e).__name__, isinstance(e, OSError), e.errno == errno.ECONNREFUSED)
'''


def test_a_refused_connect_raises_oserror_econnrefused_from_both_front_ends(rt):
    """The README's promise: a broker that cannot be reached is an OSError from connect().
    MicroPython has no SO_ERROR, so a refused non-blocking connect shows only at the first
    send: that is still the attempt failing, not a lost link (ConnectionLost)."""
    from conftest import free_port
    out = ok(rt.run(PRELUDE + REFUSED, args=(free_port(),)))
    assert [ln.split()[0] for ln in out.splitlines()] == ["blocking", "aio"], out
    for line in out.splitlines():
        what, rest = line.split(" ", 1)
        assert rest.endswith(" True True"), out
