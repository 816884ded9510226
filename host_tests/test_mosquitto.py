"""The library against a real Mosquitto, on both runtimes: QoS 0/1/2 both ways,
per-hop QoS, retained messages, last will, persistent sessions, the window."""
import signal
import time

import pytest

from conftest import ok

PRELUDE = """
import sys
from mqtt import MQTTClient, MQTTException
HOST = "127.0.0.1"
PORT = %d
got = []
def cb(topic, msg, retained, qos, dup):
    got.append((topic, msg, qos, retained))
    print("MSG", topic.decode(), msg.decode(), qos, int(retained))
"""


def script(broker, body):
    return PRELUDE % broker.port + body


def messages(out):
    return [tuple(line.split()[1:]) for line in out.splitlines() if line.startswith("MSG")]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_round_trip_through_mosquitto_at_each_qos(rt, broker, qos):
    out = ok(rt.run(script(broker, """
c = MQTTClient("rt-QOS", HOST, PORT, keepalive=30)
c.set_callback(cb, details=True)
c.connect()
assert c.subscribe("rt/#", QOS) == QOS
for i in range(5):
    c.publish("rt/x", "m" + str(i), qos=QOS)
assert c.flush(5000)
while len(got) < 5:
    c.wait_msg()
c.disconnect()
""".replace("QOS", str(qos)))))
    assert messages(out) == [("rt/x", "m%d" % i, str(qos), "0") for i in range(5)]


@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_delivered_qos_is_min_of_published_and_granted(rt, broker, peer_factory, sub_qos):
    """QoS is per hop: a QoS 2 publication reaches a QoS n subscriber at QoS n."""
    proc = rt.spawn(script(broker, """
c = MQTTClient("hop", HOST, PORT)
c.set_callback(cb, details=True)
c.connect()
print("GRANTED", c.subscribe("hop/t", QOS))
while len(got) < 3:
    c.wait_msg()
c.disconnect()
""".replace("QOS", str(sub_qos))))
    try:
        line = proc.stdout.readline().decode()
        assert line.split() == ["GRANTED", str(sub_qos)]
        p = peer_factory(broker)
        for q in (0, 1, 2):
            p.publish("hop/t", "q%d" % q, qos=q)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    got = messages(out.decode())
    assert sorted(got) == sorted([("hop/t", "q%d" % q, str(min(q, sub_qos)), "0") for q in (0, 1, 2)])


def test_retained_message_reaches_a_later_subscriber(rt, broker):
    ok(rt.run(script(broker, """
c = MQTTClient("ret-pub", HOST, PORT)
c.connect()
c.publish(b"ret/t", b"kept", retain=True, qos=1)
c.disconnect()
""")))
    out = ok(rt.run(script(broker, """
c = MQTTClient("ret-sub", HOST, PORT)
c.set_callback(cb, details=True)
c.connect()
c.subscribe("ret/t", 1)
while not got:
    c.wait_msg()
c.disconnect()
""")))
    assert messages(out) == [("ret/t", "kept", "1", "1")]


@pytest.mark.parametrize("how", ["close", "kill"])
def test_last_will_is_published_on_abrupt_close(rt, broker, peer_factory, how):
    p = peer_factory(broker)
    p.subscribe("will/#", 1)
    proc = rt.spawn(script(broker, """
c = MQTTClient("willer", HOST, PORT, keepalive=10)
c.set_last_will("will/status", "offline", retain=False, qos=1)
c.connect()
print("UP")
if sys.argv[-1] == "close":
    c.close()      # socket closed without DISCONNECT
    print("CLOSED")
else:
    while True:
        c.wait_msg()
"""), args=[how])
    try:
        assert proc.stdout.readline().strip() == b"UP"
        if how == "kill":
            proc.send_signal(signal.SIGKILL)
        got = p.wait_for(1, timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert got == [("will/status", b"offline", 1, False)]


def test_no_will_after_clean_disconnect(rt, broker, peer_factory):
    p = peer_factory(broker)
    p.subscribe("will/#", 1)
    ok(rt.run(script(broker, """
c = MQTTClient("polite", HOST, PORT)
c.set_last_will("will/status", "offline", qos=1)
c.connect()
c.disconnect()
""")))
    time.sleep(0.5)
    assert p.messages == []


def test_persistent_session_queues_messages_while_offline(rt, broker, peer_factory):
    """clean_session=False: QoS 1/2 messages published while the subscriber is away
    are delivered when it comes back; the broker reports session present."""
    ok(rt.run(script(broker, """
c = MQTTClient("sleeper", HOST, PORT)
print("SP", c.connect(clean_session=False))
c.subscribe("off/#", 2)
c.disconnect()
""")))
    p = peer_factory(broker)
    for i in range(10):
        p.publish("off/t", "n%d" % i, qos=1 + i % 2)
    out = ok(rt.run(script(broker, """
c = MQTTClient("sleeper", HOST, PORT)
c.set_callback(cb, details=True)
print("SP", c.connect(clean_session=False))
while len(got) < 10:
    c.wait_msg()
c.disconnect()
""")))
    assert "SP True" in out
    assert messages(out) == [("off/t", "n%d" % i, str(1 + i % 2), "0") for i in range(10)]


def test_clean_session_discards_the_old_session(rt, broker, peer_factory):
    ok(rt.run(script(broker, """
c = MQTTClient("forgetful", HOST, PORT)
c.connect(clean_session=False)
c.subscribe("gone/#", 1)
c.disconnect()
""")))
    p = peer_factory(broker)
    p.publish("gone/t", "lost", qos=1)
    out = ok(rt.run(script(broker, """
c = MQTTClient("forgetful", HOST, PORT)
c.set_callback(cb, details=True)
print("SP", c.connect(clean_session=True))
c.wait_msg(500)
c.disconnect()
""")))
    assert "SP False" in out and messages(out) == []


@pytest.mark.parametrize("qos", [1, 2])
def test_window_keeps_many_messages_in_flight_without_loss(rt, broker, peer_factory, qos):
    p = peer_factory(broker)
    p.subscribe("win/t", 2)
    out = ok(rt.run(script(broker, """
c = MQTTClient("windowed", HOST, PORT, window=16)
c.connect()
peak = 0
for i in range(300):
    c.publish("win/t", str(i), qos=QOS)
    peak = max(peak, c.in_flight())
print("PEAK", peak)
assert c.flush(10000)
c.disconnect()
""".replace("QOS", str(qos)))))
    got = p.wait_for(300)
    assert [m[1] for m in got] == [b"%d" % i for i in range(300)]
    peak = int(out.split("PEAK")[1].split()[0])
    assert 1 < peak <= 16  # a window, not stop-and-wait, and bounded


def test_inbound_qos2_from_mosquitto_is_delivered_once_each(rt, broker, peer_factory):
    proc = rt.spawn(script(broker, """
c = MQTTClient("in2", HOST, PORT)
c.set_callback(cb, details=True)
c.connect()
c.subscribe("in2/t", 2)
print("READY")
while len(got) < 50:
    c.wait_msg()
c.flush(5000)
c.disconnect()
"""))
    try:
        assert proc.stdout.readline().strip() == b"READY"
        p = peer_factory(broker)
        for i in range(50):
            p.c.publish("in2/t", "x%d" % i, 2)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert [m[1] for m in messages(out.decode())] == ["x%d" % i for i in range(50)]


def test_keepalive_pings_keep_an_idle_connection_open(rt, broker):
    """keepalive=1: the broker drops a client silent for 1.5 s; ours pings instead."""
    out = ok(rt.run(script(broker, """
from mqtt.compat import ticks_ms, ticks_diff
c = MQTTClient("idle", HOST, PORT, keepalive=1)
c.connect()
t = ticks_ms()
while ticks_diff(ticks_ms(), t) < 3500:
    c.wait_msg(200)
c.publish("idle/t", "still here", qos=1)
print("FLUSHED", c.flush(3000))
c.disconnect()
"""), timeout=20))
    assert "FLUSHED True" in out


def test_reconnect_restores_subscriptions_and_wait_msg_stays_bounded(rt, make_broker, peer_factory):
    """reconnect=True: the broker dies and comes back without its sessions; wait_msg(300)
    keeps returning on time meanwhile, and the client re-subscribes by itself."""
    b = make_broker()
    proc = rt.spawn(script(b, """
from mqtt.compat import ticks_ms, ticks_diff
c = MQTTClient("phoenix", HOST, PORT, keepalive=2, reconnect=True, backoff_ms=100,
               backoff_cap_ms=400, timeout_ms=1000)
c.set_callback(cb, details=True)
c.connect(clean_session=True)
c.subscribe("ph/t", 1)
print("READY")
worst = 0
while len(got) < 2:
    t = ticks_ms()
    c.wait_msg(300)
    worst = max(worst, ticks_diff(ticks_ms(), t))
print("WORST", worst, "RECONNECTS", c.reconnects)
c.disconnect()
"""))
    try:
        assert proc.stdout.readline().strip() == b"READY"
        p = peer_factory(b)
        p.publish("ph/t", "before", qos=1)
        assert proc.stdout.readline().split()[:3] == [b"MSG", b"ph/t", b"before"]
        p.close()
        b.kill()
        time.sleep(1.5)  # several reconnect attempts fail meanwhile
        b.start()
        p = peer_factory(b)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the client has re-subscribed
            p.publish("ph/t", "after", qos=1)
            time.sleep(0.3)
            if proc.poll() is not None:
                break
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    words = out.decode().split()
    assert "after" in words
    worst = int(words[words.index("WORST") + 1])
    assert worst < 300 + 1000 + 500  # the wait plus at most one bounded connect attempt
    assert int(words[words.index("RECONNECTS") + 1]) >= 1


def test_publish_refuses_fields_mqtt_cannot_encode_and_copies_mutable_buffers(rt):
    """A topic over 65535 bytes raises ValueError (MicroPython would otherwise wrap the
    length silently); a bytearray topic/payload is copied before it is stored."""
    rt.heap = "512K"  # 64 KB topics and payloads: validation, not a memory budget
    out = ok(rt.run("""
from mqtt.session import Session
from mqtt.store import MemoryStore
from mqtt.codec import packet
s = Session(MemoryStore(4))
for bad in (lambda: s.publish(b"x" * 70000, b"", 1, False, 0), lambda: packet(0x10, [b"y" * 70000])):
    try:
        bad()
        print("NO ERROR")
    except ValueError:
        print("VALUEERROR")
t = bytearray(b"a/b")
m = bytearray(b"hi")
s.publish(t, m, 1, False, 0)
t[0] = ord("z")
m[0] = ord("z")
print(s.store.topic[0], s.store.msg[0])
"""))
    assert out.split() == ["VALUEERROR", "VALUEERROR", "b'a/b'", "b'hi'"]
