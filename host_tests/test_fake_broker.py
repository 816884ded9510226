"""The client's MQTT 3.1.1 flows, byte for byte, against a scripted fake broker.

The fake broker (fakebroker.py) runs in the pytest process and sends exactly the bytes a
scenario chooses, well-formed or not; the client runs as a child process of each runtime
(CPython and the MicroPython unix port) and prints what it saw.  Rule ids refer to
shared/reference/mqtt-3.1.1-client-rules.md.
"""
import contextlib
import subprocess
import time

import pytest

from fakebroker import (
    DISCONNECT, PINGREQ, PINGRESP, FakeBroker, connack, connect, describe, h,
    pid_of, ptype, puback, pubcomp, publish, pubrec, pubrel, suback, subscribe, unsuback,
    unsubscribe,
)

# Every child script starts with this: PORT from argv[1], ARG from argv[2], exc() prints an
# exception as `EXC <class> <library classes it is an instance of> <args[0]>`, cb() prints
# each delivered message as `MSG topic payload qos dup retained`, and serve() processes
# incoming packets until the broker publishes on topic "bye".
PRELUDE = r'''
import sys
import mqtt
from mqtt import MQTTClient, MQTTException
from mqtt.compat import ticks_ms, ticks_diff, sleep_ms
PORT = int(sys.argv[1])
ARG = sys.argv[2] if len(sys.argv) > 2 else ""
KINDS = ("MalformedPacket", "PacketTooLarge", "ProtocolError", "ConnectRefused",
         "ConnectionLost", "MQTTException")

def exc(e):
    kinds = [k for k in KINDS if isinstance(e, getattr(mqtt, k))]
    print("EXC", type(e).__name__, ",".join(kinds) or "-", e.args[0] if e.args else "")

done = []

def cb(topic, msg, retained, qos, dup):
    print("MSG", topic.decode(), msg.decode(), qos, int(dup), int(retained))
    if topic == b"bye":
        done.append(1)

def serve(c, limit_ms=8000):
    t0 = ticks_ms()
    while not done and ticks_diff(ticks_ms(), t0) < limit_ms:
        c.wait_msg(100)
    if not done:
        print("NO BYE")
'''

BYE = publish("bye", "end")  # QoS 0: tells a serve() loop to finish
BYE_LINE = ("bye", "end", "0", "0", "0")


# ---- the child process ------------------------------------------------------------------


class Child:
    def __init__(self, rt, body, args):
        self.rt = rt
        self.proc = rt.spawn(PRELUDE + body, args=args)
        self.out = self.err = ""

    def finish(self, timeout=10):
        """Wait for the child to exit on its own; assert exit 0; return its stdout."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            self.out, self.err = out.decode(errors="replace"), err.decode(errors="replace")
            raise AssertionError("%s client hung and was killed\nstdout:\n%s\nstderr:\n%s" % (
                self.rt.name, self.out, self.err))
        self.out, self.err = out.decode(errors="replace"), err.decode(errors="replace")
        assert self.proc.returncode == 0, "%s client exit %s\nstdout:\n%s\nstderr:\n%s" % (
            self.rt.name, self.proc.returncode, self.out, self.err)
        return self.out

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            out, err = self.proc.communicate()
            self.out, self.err = out.decode(errors="replace"), err.decode(errors="replace")
            print("--- %s client killed; stdout:\n%s\n--- stderr:\n%s" % (self.rt.name, self.out, self.err))

    def lines(self, tag):
        return [tuple(line.split()[1:]) for line in self.out.splitlines() if line.split()[:1] == [tag]]

    def messages(self):
        return self.lines("MSG")

    def exception(self):
        """(class name, set of library classes, args[0] text) of the first EXC line."""
        for line in self.out.splitlines():
            if line.startswith("EXC "):
                parts = line.split(" ", 3) + [""]
                return parts[1], set(parts[2].split(",")), parts[3]
        raise AssertionError("the client raised nothing\nstdout:\n%s\nstderr:\n%s" % (self.out, self.err))


@contextlib.contextmanager
def client(rt, body, port, arg=""):
    """Run a client script (PRELUDE + body) as a child; killed if still running at the end."""
    ch = Child(rt, body, (port, arg) if arg else (port,))
    try:
        yield ch
    finally:
        ch.kill()


def start(fb, client_id, **kw):
    """Accept one client, check its CONNECT byte for byte and accept it."""
    c = fb.accept()
    c.expect(connect(client_id, **kw))
    c.send(connack())
    return c


def assert_packets(got, expected, what):
    assert [describe(p) for p in got] == [describe(p) for p in expected], what
    assert got == expected, what


# ---- 1. outgoing flows and CONNECT, byte exact -------------------------------------------

PUBLISH_FLOWS = '''
c = MQTTClient("fb1", "127.0.0.1", PORT, keepalive=30, timeout_ms=3000)
try:
    print("SP", c.connect())
    print("PID", c.publish("t/q2", "hello", qos=2))
    print("FLUSH", c.flush(3000))
    print("PID", c.publish("t/q1", "hi", qos=1))
    print("FLUSH", c.flush(3000))
    print("PID", c.publish("t/q0", "x"))
    print("PID", c.publish("t/r0", "keep", retain=True))
    print("PID", c.publish("t/r1", "keep1", retain=True, qos=1))
    c.disconnect()
    print("DONE")
except Exception as e:
    exc(e)
'''


def test_outgoing_qos2_qos1_qos0_and_retain_flows_are_byte_exact(rt):
    with FakeBroker() as fb, client(rt, PUBLISH_FLOWS, fb.port) as ch:
        c = fb.accept()
        c.expect(h("10 0f 00 04 4d 51 54 54 04 02 00 1e 00 03 66 62 31"))  # CONNECT clean, ka 30, "fb1"
        c.send(h("20 02 00 00"))
        c.expect(h("34 0d 00 04 74 2f 71 32 00 01 68 65 6c 6c 6f"))  # PUBLISH QoS 2 DUP 0 id 1
        c.send(h("50 02 00 01"))  # PUBREC
        c.expect(h("62 02 00 01"))  # PUBREL, flags 0b0010 [MQTT-3.6.1-1]
        c.send(h("50 02 00 01"))  # PUBREC again (a broker retry): PUBREL again, never the PUBLISH
        c.expect(h("62 02 00 01"))
        c.send(h("70 02 00 01"))  # PUBCOMP
        # QoS 1: DUP 0, a non-zero id (the spec leaves which one to the client)
        p1 = c.expect_packet(h("32 0a 00 04 74 2f 71 31 00 02 68 69"), any_pid=True)
        c.send(puback(p1))
        c.expect(h("30 07 00 04 74 2f 71 30 78"))  # QoS 0: no id, DUP 0 [MQTT-3.3.1-2]
        c.expect(h("31 0a 00 04 74 2f 72 30 6b 65 65 70"))  # QoS 0 + RETAIN
        p2 = c.expect_packet(h("33 0d 00 04 74 2f 72 31 00 03 6b 65 65 70 31"), any_pid=True)  # QoS 1 + RETAIN
        c.send(puback(p2))
        c.expect_disconnect()
        ch.finish()
    assert ch.out.split("\n")[:-1] == [
        "SP False", "PID 1", "FLUSH True", "PID %d" % p1, "FLUSH True", "PID 0", "PID 0",
        "PID %d" % p2, "DONE"]


CONNECT_ONLY = '''
c = %s
%s
try:
    print("SP", c.connect(clean_session=%s))
    c.disconnect()
    print("DONE")
except Exception as e:
    exc(e)
'''

MQTT = "00 04 4d 51 54 54 04"  # protocol name "MQTT", level 4


@pytest.mark.parametrize("ctor, will, clean, tool, expected", [
    pytest.param('MQTTClient("fb1", "127.0.0.1", PORT, keepalive=30)', "", True,
                 connect("fb1", keepalive=30),
                 "10 0f %s 02 00 1e 00 03 66 62 31" % MQTT, id="clean-keepalive-30"),
    pytest.param('MQTTClient("dev-7", "127.0.0.1", PORT)', "", False,
                 connect("dev-7", clean=False),
                 "10 11 %s 00 00 00 00 05 64 65 76 2d 37" % MQTT, id="persistent-session-keepalive-0"),
    pytest.param('MQTTClient("k", "127.0.0.1", PORT, keepalive=65535)', "", True,
                 connect("k", keepalive=65535),
                 "10 0d %s 02 ff ff 00 01 6b" % MQTT, id="keepalive-65535"),
    pytest.param('MQTTClient("w", "127.0.0.1", PORT, user="u", password="pw", keepalive=60)',
                 'c.set_last_will("dev/status", "offline", retain=True, qos=1)', True,
                 connect("w", keepalive=60, will=("dev/status", "offline", 1, True), user="u", password="pw"),
                 "10 29 %s ee 00 3c 00 01 77 00 0a 64 65 76 2f 73 74 61 74 75 73"
                 " 00 07 6f 66 66 6c 69 6e 65 00 01 75 00 02 70 77" % MQTT,
                 id="will-qos1-retain-user-password"),
    pytest.param('MQTTClient("w2", "127.0.0.1", PORT, user="me", keepalive=10)',
                 'c.set_last_will(b"lw", b"bye", qos=2)', True,
                 connect("w2", keepalive=10, will=("lw", "bye", 2, False), user="me"),
                 "10 1b %s 96 00 0a 00 02 77 32 00 02 6c 77 00 03 62 79 65 00 02 6d 65" % MQTT,
                 id="will-qos2-no-retain-user-without-password"),
    pytest.param('MQTTClient("q0", "127.0.0.1", PORT)', 'c.set_last_will("a", "")', True,
                 connect("q0", will=("a", "", 0, False)),
                 "10 13 %s 06 00 00 00 02 71 30 00 01 61 00 00" % MQTT, id="will-qos0-empty-message"),
    pytest.param('MQTTClient("p", "127.0.0.1", PORT, password="secret")', "", True,
                 connect("p"),
                 "10 0d %s 02 00 00 00 01 70" % MQTT,
                 id="password-without-user-is-not-sent-MQTT-3.1.2-22"),
    pytest.param('MQTTClient("", "127.0.0.1", PORT)', "", True, connect(""),
                 "10 0c %s 02 00 00 00 00" % MQTT, id="empty-client-id"),
])
def test_connect_bytes(rt, ctor, will, clean, tool, expected):
    expected = h(expected)
    assert tool == expected, "fakebroker.connect() disagrees with the literal packet"
    with FakeBroker() as fb, client(rt, CONNECT_ONLY % (ctor, will, clean), fb.port) as ch:
        c = fb.accept()
        c.expect(expected)
        c.send(connack())
        c.expect_disconnect()
        ch.finish()
    assert ch.lines("SP") == [("False",)] and ch.lines("DONE") == [()], ch.out


# ---- 2. session resumption -----------------------------------------------------------------

RESEND = '''
c = MQTTClient("fb-resend", "127.0.0.1", PORT, timeout_ms=3000)
try:
    print("SP", c.connect(clean_session=False))
    print("PID", c.publish("r/a", "one", qos=2))
    print("PID", c.publish("r/b", "two", qos=1))
    print("PID", c.publish("r/c", "three", qos=2))
    t0 = ticks_ms()
    try:
        while ticks_diff(ticks_ms(), t0) < 5000:
            c.wait_msg(100)
        print("NO LOSS")
    except MQTTException as e:
        exc(e)
    print("SP", c.connect(clean_session=(ARG == "clean")))
    if ARG == "new":
        print("PID", c.publish("r/d", "four", qos=1))
    print("FLUSH", c.flush(3000))
    c.disconnect()
    print("DONE")
except Exception as e:
    exc(e)
'''


def first_session(fb, drop="fin"):
    """CONNECT clean=0; three publications; PUBREC only for the first; then drop the link
    (drop="fin": orderly close, "rst": reset).  Returns the three packet ids."""
    c = fb.accept()
    c.expect(connect("fb-resend", clean=False))
    c.send(connack(0))
    a = c.expect_packet(publish("r/a", "one", 2, pid=1), any_pid=True)
    b = c.expect_packet(publish("r/b", "two", 1, pid=1), any_pid=True)
    cc = c.expect_packet(publish("r/c", "three", 2, pid=1), any_pid=True)
    assert len({a, b, cc}) == 3, "ids in use must differ [MQTT-2.3.1-2]: %d %d %d" % (a, b, cc)
    c.send(pubrec(a))
    c.expect(pubrel(a))  # [MQTT-4.3.3-1]
    c.abort() if drop == "rst" else c.close()  # PUBREL a, PUBLISH b and c stay unacknowledged
    return a, b, cc


@pytest.mark.parametrize("drop", ["fin", "rst"])
def test_reconnect_with_session_present_resends_dup_with_same_ids_and_pubrel(rt, drop):
    """[MQTT-4.4.0-1] [MQTT-4.6.0-1] [MQTT-4.3.3-1] [MQTT-3.3.1-1] [MQTT-2.3.1-3]"""
    with FakeBroker() as fb, client(rt, RESEND, fb.port, "new") as ch:
        a, b, cc = first_session(fb, drop)
        c = fb.accept()
        c.expect(connect("fb-resend", clean=False))
        c.send(h("20 02 01 00"))  # session present
        got = c.read_packets(3)
        # PUBLISHes: original order, DUP=1, same ids; the PUBREC'd one: PUBREL only
        assert_packets([p for p in got if ptype(p) == 3],
                       [publish("r/b", "two", 1, pid=b, dup=True), publish("r/c", "three", 2, pid=cc, dup=True)],
                       "resent PUBLISHes")
        assert_packets([p for p in got if ptype(p) != 3], [pubrel(a)], "resent PUBREL")
        # a new publication after the resends, with an id none of them holds [MQTT-2.3.1-2]
        d = c.expect_packet(publish("r/d", "four", 1, pid=1), any_pid=True)
        assert d not in (a, b, cc), "new message reuses id %d, still in use" % d
        c.expect_silence(0.3)  # nothing else: in particular never PUBLISH r/a again
        c.send(pubcomp(a), puback(b), pubrec(cc), puback(d))
        c.expect(pubrel(cc))
        c.send(pubcomp(cc))
        c.expect_disconnect()
        ch.finish()
    assert ch.lines("SP") == [("False",), ("True",)], ch.out
    assert ch.lines("PID") == [(str(a),), (str(b),), (str(cc),), (str(d),)]
    assert ch.exception()[0] == "ConnectionLost", ch.out
    assert ch.lines("FLUSH") == [("True",)] and ch.lines("DONE") == [()], ch.out


def test_reconnect_without_session_present_resends_pubrel_and_republishes_the_rest(rt):
    """CONNACK session-present=0 to clean_session=0: the broker lost the session.  A QoS 2
    message whose PUBREC arrived is never published again [MQTT-4.3.3-1]: its PUBREL is
    resent (a broker answers PUBCOMP for an id it does not know); the messages never
    PUBREC'd go out again as new publications (DUP=0); all in the original order."""
    with FakeBroker() as fb, client(rt, RESEND, fb.port, "persistent") as ch:
        a, b, cc = first_session(fb)
        c = fb.accept()
        c.expect(connect("fb-resend", clean=False))
        c.send(h("20 02 00 00"))  # session NOT present
        c.expect(pubrel(a))
        c.expect(publish("r/b", "two", 1, pid=b))
        c.expect(publish("r/c", "three", 2, pid=cc))
        c.expect_silence(0.3)  # in particular never PUBLISH r/a again
        c.send(pubcomp(a), puback(b), pubrec(cc))
        c.expect(pubrel(cc))
        c.send(pubcomp(cc))
        c.expect_disconnect()
        ch.finish()
    assert ch.lines("SP") == [("False",), ("False",)], ch.out
    assert ch.lines("FLUSH") == [("True",)] and ch.lines("DONE") == [()], ch.out


def test_reconnect_with_clean_session_discards_and_never_resends(rt):
    """[MQTT-3.1.2-6]: clean_session=1 discards the session state; nothing is resent."""
    with FakeBroker() as fb, client(rt, RESEND, fb.port, "clean") as ch:
        first_session(fb)
        c = fb.accept()
        c.expect(connect("fb-resend", clean=True))
        c.send(connack(0))
        c.expect_disconnect()  # straight to DISCONNECT: no PUBLISH, no PUBREL
        ch.finish()
    assert ch.lines("SP") == [("False",), ("False",)], ch.out
    assert ch.lines("FLUSH") == [("True",)] and ch.lines("DONE") == [()], ch.out


INBOUND_RECONNECT = '''
c = MQTTClient("fb-in", "127.0.0.1", PORT, timeout_ms=3000)
c.set_callback(cb, details=True)
try:
    print("SP", c.connect(clean_session=False))
    try:
        serve(c, 5000)
    except MQTTException as e:
        exc(e)
    print("SP", c.connect(clean_session=False))
    serve(c)
    c.disconnect()
    print("DONE")
except Exception as e:
    exc(e)
'''


def test_inbound_qos2_id_awaiting_pubrel_survives_reconnect(rt):
    """[MQTT-3.1.2-4] [MQTT-4.3.3-2]: an inbound QoS 2 id that got PUBREC stays known across
    a reconnect with session present; the broker's resend is PUBREC'd, not delivered again."""
    with FakeBroker() as fb, client(rt, INBOUND_RECONNECT, fb.port) as ch:
        c = fb.accept()
        c.expect(connect("fb-in", clean=False))
        c.send(connack(0))
        c.send(publish("in/x", "once", 2, pid=7))
        c.expect(pubrec(7))
        c.close()
        c = fb.accept()
        c.expect(connect("fb-in", clean=False))
        c.send(connack(1))
        c.send(publish("in/x", "once", 2, pid=7, dup=True))
        c.expect(pubrec(7))
        c.send(pubrel(7))
        c.expect(pubcomp(7))
        c.send(BYE)
        c.expect_disconnect()
        ch.finish()
    assert ch.messages() == [("in/x", "once", "2", "0", "0"), BYE_LINE], ch.out
    assert ch.lines("SP") == [("False",), ("True",)], ch.out


# ---- 3. inbound flows -------------------------------------------------------------------------

RECEIVER = '''
c = MQTTClient("fb-rx", "127.0.0.1", PORT, timeout_ms=3000)
c.set_callback(cb, details=True)
try:
    print("SP", c.connect())
    serve(c)
    if ARG == "pub-after":
        print("PID", c.publish("after", "x", qos=1))
        print("FLUSH", c.flush(3000))
    c.disconnect()
    print("DONE")
except Exception as e:
    exc(e)
'''


@pytest.mark.parametrize("dup", [True, False], ids=["resend-with-dup", "resend-without-dup"])
def test_inbound_qos2_is_delivered_exactly_once(rt, dup):
    """[MQTT-4.3.3-2]: until PUBREL, a PUBLISH with the same id is PUBREC'd and not delivered
    (dedup by id, whatever DUP says [MQTT-3.3.1-3]); after PUBREL/PUBCOMP the id is free."""
    with FakeBroker() as fb, client(rt, RECEIVER, fb.port) as ch:
        c = start(fb, "fb-rx")
        c.send(h("34 0b 00 05 69 6e 2f 71 32 00 07 6d 31"))  # PUBLISH QoS 2 id 7 "in/q2" "m1"
        c.expect(h("50 02 00 07"))  # PUBREC
        c.send(publish("in/q2", "m1", 2, pid=7, dup=dup))  # the broker's resend
        c.expect(h("50 02 00 07"))  # PUBREC again, no second delivery
        c.send(h("62 02 00 07"))  # PUBREL
        c.expect(h("70 02 00 07"))  # PUBCOMP
        c.send(publish("in/q2", "m2", 2, pid=7))  # id 7 again: a new message
        c.expect(h("50 02 00 07"))
        c.send(h("62 02 00 07"))
        c.expect(h("70 02 00 07"))
        c.send(BYE)
        c.expect_disconnect()
        ch.finish()
    assert ch.messages() == [("in/q2", "m1", "2", "0", "0"), ("in/q2", "m2", "2", "0", "0"), BYE_LINE], ch.out


def test_inbound_qos1_is_acked_with_its_id_and_a_resend_is_a_new_message(rt):
    """[MQTT-4.3.2-2] [MQTT-2.3.1-6]: PUBACK echoes the id; after it, the same id (even with
    DUP=1) is a new publication and is delivered again (at least once)."""
    with FakeBroker() as fb, client(rt, RECEIVER, fb.port) as ch:
        c = start(fb, "fb-rx")
        c.send(h("32 0a 00 05 69 6e 2f 71 31 01 02 61"))  # PUBLISH QoS 1 id 0x0102
        c.expect(h("40 02 01 02"))
        c.send(publish("in/q1", "a", 1, pid=0x0102, dup=True))
        c.expect(h("40 02 01 02"))
        c.send(publish("in/ret", "r", 1, pid=0xFFFF, retain=True))
        c.expect(h("40 02 ff ff"))
        c.send(publish("in/q0", "z", retain=True))  # QoS 0: no ack
        c.send(BYE)
        c.expect_disconnect()
        ch.finish()
    assert ch.messages() == [("in/q1", "a", "1", "0", "0"), ("in/q1", "a", "1", "1", "0"),
                             ("in/ret", "r", "1", "0", "1"), ("in/q0", "z", "0", "0", "1"), BYE_LINE], ch.out


def test_acks_follow_arrival_order_for_a_burst_in_one_write(rt):
    """[MQTT-4.6.0-2] PUBACKs and [MQTT-4.6.0-3] PUBRECs in the order the PUBLISHes arrived;
    PUBCOMPs in PUBREL order."""
    with FakeBroker() as fb, client(rt, RECEIVER, fb.port) as ch:
        c = start(fb, "fb-rx")
        c.send(publish("o/1", "a", 1, pid=10), publish("o/2", "b", 2, pid=11),
               publish("o/3", "c", 1, pid=12), publish("o/4", "d", 2, pid=13),
               publish("o/5", "e", 0), publish("o/6", "f", 1, pid=9))
        c.expect(puback(10) + pubrec(11) + puback(12) + pubrec(13) + puback(9))
        c.send(pubrel(13), pubrel(11))
        c.expect(pubcomp(13) + pubcomp(11))
        c.send(BYE)
        c.expect_disconnect()
        ch.finish()
    assert ch.messages() == [("o/1", "a", "1", "0", "0"), ("o/2", "b", "2", "0", "0"),
                             ("o/3", "c", "1", "0", "0"), ("o/4", "d", "2", "0", "0"),
                             ("o/5", "e", "0", "0", "0"), ("o/6", "f", "1", "0", "0"), BYE_LINE], ch.out


LIMITS = '''
c = MQTTClient("fb-big", "127.0.0.1", PORT, timeout_ms=3000, max_packet=1024)
def show(topic, msg, retained, qos, dup):
    print("MSG", topic.decode(), len(msg), qos)
    if topic == b"bye":
        done.append(1)
c.set_callback(show, details=True)
try:
    c.connect()
    serve(c)
    c.disconnect()
    print("DONE")
except Exception as e:
    exc(e)
'''


def test_packets_up_to_max_packet_are_accepted_in_one_burst(rt):
    """max_packet counts the whole packet: exactly 1024 bytes passes with max_packet=1024;
    a burst of large and small packets in one write is handled in order."""
    big = publish("big", b"x" * 1014, 1, pid=1)
    assert len(big) == 1024
    with FakeBroker() as fb, client(rt, LIMITS, fb.port) as ch:
        c = start(fb, "fb-big")
        c.send(big, publish("mid", b"y" * 300, 2, pid=2), publish("big", b"z" * 1014, 1, pid=3),
               publish("small", b"", 0))
        c.expect(puback(1) + pubrec(2) + puback(3))
        c.send(pubrel(2))
        c.expect(pubcomp(2))
        c.send(BYE)
        c.expect_disconnect()
        ch.finish()
    assert ch.messages() == [("big", "1014", "1"), ("mid", "300", "2"), ("big", "1014", "1"),
                             ("small", "0", "0"), ("bye", "3", "0")], ch.out


UTF8_TOPICS = ["\u00e9t\u00e9", "\u2713/ok", "\U0001F600", "\ud7ff\ue000\U0010FFFF", "\ufeffbom/x"]


def test_valid_utf8_topics_are_accepted(rt):
    """Well-formed UTF-8 of every length, at the edges around the surrogates and U+10FFFF,
    and a BOM (not stripped [MQTT-1.5.3-3]), is a valid topic."""
    with FakeBroker() as fb, client(rt, RECEIVER, fb.port) as ch:
        c = start(fb, "fb-rx")
        for i, t in enumerate(UTF8_TOPICS):
            c.send(publish(t, str(i), 1, pid=i + 1))
            c.expect(puback(i + 1))
        c.send(BYE)
        c.expect_disconnect()
        ch.finish()
    assert [m[:2] for m in ch.messages()] == [(t, str(i)) for i, t in enumerate(UTF8_TOPICS)] + [("bye", "end")], ch.out


# ---- 4. acks for unknown ids, stray acks ---------------------------------------------------------


def test_unknown_id_acks_and_stray_acks(rt):
    """PUBACK/PUBCOMP for an unknown id: ignored; PUBREC for an unknown id: PUBREL; PUBREL for
    an unknown id: PUBCOMP; stray SUBACK/UNSUBACK/PINGRESP: ignored.  The client stays
    connected and keeps working both ways."""
    with FakeBroker() as fb, client(rt, RECEIVER, fb.port, "pub-after") as ch:
        c = start(fb, "fb-rx")
        c.send(puback(5), pubcomp(6))
        c.expect_silence(0.3)
        c.send(pubrec(7))
        c.expect(h("62 02 00 07"))
        c.send(pubrel(8))
        c.expect(h("70 02 00 08"))
        c.send(suback(9, 1), unsuback(10), PINGRESP)
        c.expect_silence(0.3)
        c.send(publish("still/here", "yes", 1, pid=3))
        c.expect(puback(3))
        c.send(BYE)
        p = c.expect_packet(publish("after", "x", 1, pid=1), any_pid=True)
        c.send(puback(p))
        c.expect_disconnect()
        ch.finish()
    assert ch.messages() == [("still/here", "yes", "1", "0", "0"), BYE_LINE], ch.out
    assert ch.lines("FLUSH") == [("True",)] and ch.lines("DONE") == [()], ch.out


# ---- 5. keepalive ------------------------------------------------------------------------------

KEEPALIVE = '''
c = MQTTClient("fb-ka", "127.0.0.1", PORT, keepalive=1, timeout_ms=3000)
c.set_callback(cb, details=True)
try:
    c.connect()
    t0 = ticks_ms()
    try:
        while not done and ticks_diff(ticks_ms(), t0) < 8000:
            if ARG == "wait_msg":
                c.wait_msg()            # blocks (umqtt style) until a packet arrives
            elif ARG == "wait_msg-timeout":
                c.wait_msg(250)
            elif ARG == "check_msg":
                c.check_msg()
                sleep_ms(20)
            else:                       # busy: a QoS 0 publication every 0.3 s
                c.publish("busy", "x")
                for i in range(6):
                    c.check_msg()
                    sleep_ms(50)
        print("DONE" if done else "NO BYE")
        c.disconnect()
    except MQTTException as e:
        exc(e)
        print("AFTER_MS", ticks_diff(ticks_ms(), t0))
except Exception as e:
    exc(e)
'''


@pytest.mark.parametrize("loop", ["wait_msg", "wait_msg-timeout", "check_msg"])
def test_idle_client_sends_pingreq_after_keepalive(rt, loop):
    """[MQTT-3.1.2-23]: PINGREQ (c0 00) once keepalive (1 s) passes without a client packet,
    not earlier, and again 1 s after that one."""
    with FakeBroker() as fb, client(rt, KEEPALIVE, fb.port, loop) as ch:
        c = fb.accept()
        c.expect(connect("fb-ka", keepalive=1))
        t0 = c.last_time
        c.send(connack())
        c.expect(PINGREQ, timeout=3)
        t1 = c.last_time
        assert 0.8 <= t1 - t0 <= 1.6, "first PINGREQ %.3f s after CONNECT" % (t1 - t0)
        c.send(PINGRESP)
        c.expect(PINGREQ, timeout=3)
        t2 = c.last_time
        assert 0.8 <= t2 - t1 <= 1.6, "second PINGREQ %.3f s after the first" % (t2 - t1)
        c.send(PINGRESP, BYE)
        c.expect_disconnect()
        ch.finish()
    assert ch.lines("DONE") == [()], ch.out


def test_incoming_traffic_does_not_replace_pingreq(rt):
    """Keepalive counts what the CLIENT sends [MQTT-3.1.2-23]: a broker publishing QoS 0
    every 0.25 s does not spare the client its PINGREQ."""
    with FakeBroker() as fb, client(rt, KEEPALIVE, fb.port, "wait_msg-timeout") as ch:
        c = fb.accept()
        c.expect(connect("fb-ka", keepalive=1))
        t0 = c.last_time
        c.send(connack())
        n = 0
        while True:
            try:
                pkt = c.read_packet(timeout=0.25)
                break
            except AssertionError:
                if c.eof or time.monotonic() - t0 > 3:
                    raise
            c.send(publish("news", str(n)))
            n += 1
        t1 = c.last_time
        assert pkt == PINGREQ, describe(pkt)
        assert 0.8 <= t1 - t0 <= 1.6, "PINGREQ %.3f s after CONNECT" % (t1 - t0)
        c.send(PINGRESP, BYE)
        c.expect_disconnect()
        ch.finish()
    assert len(ch.messages()) == n + 1 and ch.lines("DONE") == [()], ch.out


NO_KEEPALIVE = '''
c = MQTTClient("fb-ka0", "127.0.0.1", PORT, keepalive=0, timeout_ms=3000)
c.set_callback(cb, details=True)
try:
    c.connect()
    serve(c)
    c.disconnect()
    print("DONE")
except Exception as e:
    exc(e)
'''


def test_keepalive_0_never_pings(rt):
    with FakeBroker() as fb, client(rt, NO_KEEPALIVE, fb.port) as ch:
        c = start(fb, "fb-ka0")
        c.expect_silence(1.5)
        c.send(BYE)
        c.expect_disconnect()
        ch.finish()
    assert ch.lines("DONE") == [()], ch.out


def test_busy_client_sends_no_pingreq(rt):
    """A client that sends a packet every 0.3 s never needs PINGREQ with keepalive 1 s."""
    with FakeBroker() as fb, client(rt, KEEPALIVE, fb.port, "busy") as ch:
        c = fb.accept()
        c.expect(connect("fb-ka", keepalive=1))
        last = c.last_time
        c.send(connack())
        end = last + 2.5
        n = 0
        while time.monotonic() < end:
            pkt = c.read_packet(timeout=1.5)
            assert pkt == publish("busy", "x"), "expected only the busy publications, got %s" % describe(pkt)
            assert c.last_time - last < 0.9, "the client paused %.2f s" % (c.last_time - last)
            last = c.last_time
            n += 1
        assert n >= 6
        c.send(BYE)
        pkts = c.expect_closed(allow_disconnect=True)
        assert pkts and pkts[-1] == DISCONNECT, [describe(p) for p in pkts]
        assert all(p == publish("busy", "x") for p in pkts[:-1]), [describe(p) for p in pkts]
        ch.finish()
    assert ch.lines("DONE") == [()], ch.out


@pytest.mark.parametrize("loop", ["wait_msg", "check_msg"])
def test_no_pingresp_means_connection_lost(rt, loop):
    """A half-open link: PINGREQ gets no PINGRESP -> ConnectionLost, socket closed without
    DISCONNECT, within keepalive + ping timeout (bounded: < 5 s with keepalive 1)."""
    with FakeBroker() as fb, client(rt, KEEPALIVE, fb.port, loop) as ch:
        c = fb.accept()
        c.expect(connect("fb-ka", keepalive=1))
        t0 = c.last_time
        c.send(connack())
        c.expect(PINGREQ, timeout=3)
        pkts = c.expect_closed(timeout=5)  # never answered
        assert all(p == PINGREQ for p in pkts), [describe(p) for p in pkts]
        assert c.eof_time - t0 < 5.0, "link declared dead %.2f s after CONNECT" % (c.eof_time - t0)
        ch.finish()
    assert ch.exception()[0] == "ConnectionLost", ch.out


# ---- 6. protocol violations by the broker --------------------------------------------------------

VIOLATION = '''
c = MQTTClient("fb-bad", "127.0.0.1", PORT, timeout_ms=3000, max_packet=1024)
c.set_callback(cb, details=True)
t0 = ticks_ms()
try:
    print("SP", c.connect())
    if ARG == "sub":
        print("GRANTED", c.subscribe("a/b", 1))
    elif ARG == "pub1":
        print("PID", c.publish("p/1", "x", qos=1))
    elif ARG == "pub2":
        print("PID", c.publish("p/2", "x", qos=2))
    t0 = ticks_ms()
    while ticks_diff(ticks_ms(), t0) < 4000:
        c.wait_msg(100)
    print("NO ERROR")
except Exception as e:
    exc(e)
    print("AFTER_MS", ticks_diff(ticks_ms(), t0))
try:
    c.publish("x", "y")
    print("STILL OPEN")
except Exception as e:
    print("CLOSED", type(e).__name__)
'''

M, P = "MalformedPacket", "ProtocolError"


def V(id, bad, want, first=None, mode="", then=None):
    """One violation: `first` replaces the CONNACK (else a good CONNACK is sent), `mode` is
    what the client does after connecting (sub/pub1/pub2: its packet's id is passed to `bad`
    when bad is callable), `then`="close" half-closes the broker side after sending."""
    return pytest.param(first, mode, bad, want, then, id=id)


VIOLATIONS = [
    V("first-packet-not-connack", b"", P, first=publish("a", "x")),
    V("first-packet-pingresp", b"", P, first=PINGRESP),
    V("connack-wrong-length-3", b"", M, first=h("20 03 00 00 00")),
    V("connack-wrong-length-1", b"", M, first=h("20 01 00")),
    V("connack-ack-flags-reserved-bits", b"", M, first=h("20 02 02 00")),
    V("connack-header-flags-set", b"", M, first=h("21 02 00 00")),
    V("connack-session-present-for-clean-session", b"", P, first=h("20 02 01 00")),
    V("connack-refused-with-session-present", b"", P, first=h("20 02 01 05")),
    V("second-connack", connack(), P),
    V("publish-qos3", h("36 06 00 01 61 00 01 78"), M),
    V("publish-qos0-with-dup", h("38 04 00 01 61 78"), P),
    V("publish-topic-wildcard-plus", h("30 06 00 03 61 2f 2b 78"), P),
    V("publish-topic-wildcard-hash", h("30 06 00 03 61 2f 23 78"), P),
    V("publish-empty-topic", h("30 03 00 00 78"), P),
    V("publish-topic-invalid-utf8", h("30 05 00 02 61 ff 78"), M),
    V("publish-topic-overlong-utf8", h("30 05 00 02 c0 af 78"), M),
    V("publish-topic-truncated-utf8", h("30 04 00 01 c3 78"), M),
    V("publish-topic-overlong-3-byte", h("30 06 00 03 e0 80 80 78"), M),
    V("publish-topic-overlong-4-byte", h("30 07 00 04 f0 80 80 80 78"), M),
    V("publish-topic-above-u10ffff", h("30 07 00 04 f4 90 80 80 78"), M),
    V("publish-topic-u0000", h("30 05 00 02 61 00 78"), M),
    V("publish-topic-surrogate-ed-a0-80", h("30 06 00 03 ed a0 80 78"), M),
    V("publish-topic-length-overruns-packet", h("30 04 00 09 61 62"), M),
    V("publish-qos1-id-missing", h("32 04 00 02 61 62"), M),
    V("publish-qos1-id-0", h("32 06 00 01 61 00 00 78"), P),
    V("publish-qos2-id-0", h("34 06 00 01 61 00 00 78"), P),
    V("puback-length-3", h("40 03 00 01 00"), M),
    V("puback-length-1", h("40 01 00"), M),
    V("puback-id-0", h("40 02 00 00"), P),
    V("puback-flags-set", h("41 02 00 01"), M),
    V("pubrec-flags-set", h("52 02 00 01"), M),
    V("pubrel-flags-0", h("60 02 00 01"), M),
    V("pubcomp-flags-set", h("72 02 00 01"), M),
    V("unsuback-length-3", h("b0 03 00 01 00"), M),
    V("suback-return-code-03", lambda pid: suback(pid, 3), P, mode="sub"),
    V("suback-two-codes-for-one-filter", lambda pid: suback(pid, 1, 1), P, mode="sub"),
    V("suback-no-codes", lambda pid: suback(pid), P, mode="sub"),
    V("suback-header-flags-set", lambda pid: bytes([0x92, 3, pid >> 8, pid & 255, 1]), M, mode="sub"),
    V("puback-for-qos2-id-awaiting-pubcomp", lambda pid: pubrec(pid) + puback(pid), P, mode="pub2"),
    V("pubcomp-for-qos2-id-awaiting-pubrec", lambda pid: pubcomp(pid), P, mode="pub2"),
    V("pubrec-for-qos1-id", lambda pid: pubrec(pid), P, mode="pub1"),
    V("pingresp-length-1", h("d0 01 00"), M),
    V("server-sends-connect", connect("evil"), P),
    V("server-sends-subscribe", subscribe(1, [("a", 0)]), P),
    V("server-sends-unsubscribe", unsubscribe(1, ["a"]), P),
    V("server-sends-pingreq", PINGREQ, P),
    V("server-sends-disconnect", DISCONNECT, P),
    V("packet-type-0", h("00 00"), P),
    V("packet-type-15", h("f0 00"), P),
    V("remaining-length-5th-byte", h("30 ff ff ff ff 01"), M),
    # over max_packet: a PUBLISH is skipped (test_wedge.py), any other packet refused
    V("suback-10MB-over-max-packet-header-only", h("90 80 80 80 05"), "PacketTooLarge", mode="sub"),
    V("unsuback-2000B-over-max-packet-header-only", h("b0 d0 0f"), "PacketTooLarge"),
    # ... and an oversize PUBLISH is still checked as far as its head goes
    V("oversize-publish-qos3", h("36 d0 0f 00 01 61 00 01"), M),
    V("oversize-publish-topic-overruns-packet", h("30 d0 0f ff ff"), M),
    V("oversize-publish-topic-wildcard", h("32 d0 0f 00 01 23 00 01"), P),
    V("oversize-publish-qos1-id-0", h("32 d0 0f 00 01 61 00 00"), P),
    V("truncated-packet-then-close", h("30 0a 00 03 61 2f 62"), "ConnectionLost", then="close"),
    V("close-after-connack", b"", "ConnectionLost", then="close"),
]


@pytest.mark.parametrize("first, mode, bad, want, then", VIOLATIONS)
def test_broker_violation_closes_without_disconnect_and_raises(rt, first, mode, bad, want, then):
    """[MQTT-4.8.0-1]: on a protocol violation the client closes the connection (no
    DISCONNECT, so the broker publishes the will) and raises a clear exception; a lost
    link raises ConnectionLost, never hangs."""
    with FakeBroker() as fb, client(rt, VIOLATION, fb.port, mode) as ch:
        c = fb.accept()
        c.read_packet()  # CONNECT
        c.send(first if first is not None else connack())
        pid = None
        if mode:
            pid = pid_of(c.read_packet())  # SUBSCRIBE or PUBLISH
        if callable(bad):
            bad = bad(pid)
        if bad:
            c.send(bad)
        if then == "close":
            c.shutdown()
        c.expect_closed(timeout=3)
        ch.finish()
    name, kinds, msg = ch.exception()
    assert want in kinds, "%s: want %s, the client raised %s (%s) %s" % (rt.name, want, name, sorted(kinds), msg)
    if want != "ConnectionLost":
        assert "ConnectionLost" not in kinds
    after = int(ch.lines("AFTER_MS")[0][0])
    assert after < 2000, "the error took %d ms" % after
    assert ch.lines("CLOSED"), "the client still accepts publish() after the error:\n" + ch.out


REFUSED = '''
c = MQTTClient("fb-refused", "127.0.0.1", PORT, timeout_ms=3000)
try:
    c.connect()
    print("CONNECTED")
except Exception as e:
    exc(e)
'''


@pytest.mark.parametrize("rc", [1, 2, 3, 4, 5])
def test_connack_refused_raises_connect_refused_with_the_code(rt, rc):
    """A refused CONNACK is no violation: ConnectRefused(rc); the client sends nothing more
    and closes."""
    with FakeBroker() as fb, client(rt, REFUSED, fb.port) as ch:
        c = fb.accept()
        c.expect(connect("fb-refused"))
        c.send(connack(0, rc))
        pkts = c.expect_closed(timeout=3)
        assert not pkts, [describe(p) for p in pkts]
        ch.finish()
    name, kinds, msg = ch.exception()
    assert name == "ConnectRefused" and msg == str(rc), ch.out
    assert "ProtocolError" not in kinds


# ---- 7. SUBACK / UNSUBACK ----------------------------------------------------------------------

SUBS = '''
c = MQTTClient("fb-sub", "127.0.0.1", PORT, timeout_ms=3000)
try:
    c.connect()
    print("GRANTED", c.subscribe("a/b", 2))
    try:
        print("GRANTED", c.subscribe("no/access", 1))
    except MQTTException as e:
        exc(e)
    print("GRANTED", list(c.subscribe([("m/1", 0), ("m/2", 2)])))
    c.unsubscribe("a/b")
    print("UNSUBSCRIBED")
    c.publish("still/up", "ok")
    c.disconnect()
    print("DONE")
except Exception as e:
    print("FATAL")
    exc(e)
'''


def test_subscribe_returns_granted_qos_and_suback_0x80_raises(rt):
    """SUBSCRIBE/UNSUBSCRIBE bytes (flags 0b0010 [MQTT-3.8.1-1] [MQTT-3.10.1-1]); the granted
    QoS is returned; 0x80 raises MQTTException (not a violation: the client stays connected)."""
    with FakeBroker() as fb, client(rt, SUBS, fb.port) as ch:
        c = start(fb, "fb-sub")
        p = c.expect_packet(h("82 08 00 01 00 03 61 2f 62 02"), any_pid=True)
        c.send(suback(p, 1))  # granted QoS 1 for a QoS 2 request
        p = c.expect_packet(subscribe(1, [("no/access", 1)]), any_pid=True)
        c.send(suback(p, 0x80))
        p = c.expect_packet(subscribe(1, [("m/1", 0), ("m/2", 2)]), any_pid=True)
        c.send(suback(p, 0, 2))
        p = c.expect_packet(h("a2 07 00 01 00 03 61 2f 62"), any_pid=True)
        c.send(unsuback(p))
        c.expect(publish("still/up", "ok"))
        c.expect_disconnect()
        ch.finish()
    assert ch.lines("GRANTED") == [("1",), ("[0,", "2]")], ch.out
    name, kinds, msg = ch.exception()
    assert "MQTTException" in kinds and "ProtocolError" not in kinds, ch.out
    assert ch.lines("UNSUBSCRIBED") == [()] and ch.lines("DONE") == [()], ch.out


RESTORE = '''
got = []
c = MQTTClient("fb-rs", "127.0.0.1", PORT, timeout_ms=3000, reconnect=True, backoff_ms=50,
               backoff_cap_ms=200)
c.set_callback(lambda t, m: got.append(print("MSG", t.decode(), m.decode(), 0, 0, 0)))
c.connect(clean_session=False)
print("GRANTED", list(c.subscribe([("rs/a", 1), ("rs/b", 2)])))
t = ticks_ms()
while len(got) < 2 and ticks_diff(ticks_ms(), t) < 10000:
    c.wait_msg(200)
print("SUB_C", c.subscribe("rs/c", 1))
while len(got) < 3 and ticks_diff(ticks_ms(), t) < 10000:
    c.wait_msg(200)
print("RECONNECTS", c.reconnects)
c.disconnect()
'''


def test_subscriptions_are_restored_when_the_broker_lost_them_or_a_subscribe_was_cut_off(rt):
    """The supervisor's restore rule through the blocking front end, byte-exact: after a
    re-connection with session present = 0 every filter is subscribed again at its QoS
    [MQTT-3.2.2-1]; with session present = 1 nothing is, unless a SUBSCRIBE was cut off
    by the outage (then all of them, the new filter last)."""
    subs = [("rs/a", 1), ("rs/b", 2)]
    with FakeBroker() as fb, client(rt, RESTORE, fb.port) as ch:
        c = fb.accept()
        c.expect(connect("fb-rs", clean=False))
        c.send(connack())
        pid = c.expect_packet(subscribe(1, subs), any_pid=True)
        c.send(suback(pid, 1, 2))
        time.sleep(0.5)  # subscribe() returns before the cut (a SUBACK and EOF read together: None)
        c.close()
        c = fb.accept()
        c.expect(connect("fb-rs", clean=False))
        c.send(connack(session_present=0))
        pid = c.expect_packet(subscribe(1, subs), any_pid=True)
        c.send(suback(pid, 1, 2))
        c.send(publish("rs/a", "one"))
        c.close()
        c = fb.accept()
        c.expect(connect("fb-rs", clean=False))
        c.send(connack(session_present=1))
        c.send(publish("rs/b", "two"))  # no SUBSCRIBE came first: the next packet is rs/c's
        c.expect_packet(subscribe(1, [("rs/c", 1)]), any_pid=True)
        c.close()  # cut off before its SUBACK
        c = fb.accept()
        c.expect(connect("fb-rs", clean=False))
        c.send(connack(session_present=1))
        pid = c.expect_packet(subscribe(1, subs + [("rs/c", 1)]), any_pid=True)
        c.send(suback(pid, 1, 2, 1))
        c.send(publish("rs/c", "three"))
        c.expect_disconnect()
        out = ch.finish()
    assert ch.messages() == [("rs/a", "one", "0", "0", "0"), ("rs/b", "two", "0", "0", "0"),
                             ("rs/c", "three", "0", "0", "0")], out
    assert "GRANTED [1, 2]" in out and "SUB_C None" in out and "RECONNECTS 3" in out, out
