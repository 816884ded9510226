# Sans-I/O MQTT 3.1.1 client session.
#
# Theory of operation
# -------------------
# Everything that decides what the client sends and what it tells the app lives
# here; nothing here touches a socket, a file or a clock.  The front end (client.py,
# or an asyncio one) feeds it received bytes and the current time in ms and drains
# the bytes it queues in `tx`.  Commands (connect, publish, subscribe, ...) queue
# packets; `next_event()` parses received packets one at a time and returns the
# events the app must see.  Received PUBLISH events are acknowledged only when the
# front end calls `acknowledge(event)` after delivering them, so a crash during
# delivery makes the broker resend instead of losing the message.
#
# Two small machines, one per direction, keyed by spec state.  The outgoing state of
# every QoS 1/2 message lives in the store (the single source of truth, which may be
# a flash file); the session only adds "sent on this connection" bookkeeping.
#
#   sender   AWAIT_PUBACK  --PUBACK-->  done                 [MQTT-4.3.2-1]
#            AWAIT_PUBREC  --PUBREC-->  AWAIT_PUBCOMP + PUBREL [MQTT-4.3.3-1]
#            AWAIT_PUBCOMP --PUBCOMP--> done
#            AWAIT_PUBCOMP --PUBREC-->  AWAIT_PUBCOMP + PUBREL (broker retried)
#            any other ack for a known id is a protocol violation.
#   receiver QoS 2 id unknown  --PUBLISH--> deliver, remember id, PUBREC [MQTT-4.3.3-2]
#            QoS 2 id remembered --PUBLISH--> PUBREC only (never deliver twice)
#            any id --PUBREL--> forget id, PUBCOMP
# Unknown ids: PUBACK/PUBCOMP ignored, PUBREC answered with PUBREL, PUBREL with PUBCOMP.

from .codec import (
    CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK,
    PINGREQ, PINGRESP, DISCONNECT, MQTTException, ProtocolError, MalformedPacket, name,
    put_header, put_publish, put_ack, put_connect, put_subscribe, put_unsubscribe,
    publish_size, connect_size, subscribe_size, unsubscribe_size, get_header, get_u16, check_utf8,
)
from .store import AWAIT_PUBACK, AWAIT_PUBREC, AWAIT_PUBCOMP
from .compat import ticks_diff, ticks_add

# Events returned by next_event()
CONNECTED = 1      # (CONNECTED, session_present)
MESSAGE = 2        # (MESSAGE, topic, msg, qos, retain, dup, pid)
SUBACKED = 3       # (SUBACKED, pid, return_codes)
UNSUBACKED = 4     # (UNSUBACKED, pid)
PONG = 5           # (PONG,)

_PONG = (PONG,)

# Sender transitions: state << 8 | ack type -> new state (0 = complete).  Integer
# keys: a tuple key would be allocated for every ack.
SENDER = {
    AWAIT_PUBACK << 8 | PUBACK: 0,
    AWAIT_PUBREC << 8 | PUBREC: AWAIT_PUBCOMP,
    AWAIT_PUBCOMP << 8 | PUBCOMP: 0,
    AWAIT_PUBCOMP << 8 | PUBREC: AWAIT_PUBCOMP,
}
_ID_ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK)  # 2-byte packets holding an id
_SERVER_MAY_NOT_SEND = (0, 0x10, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT, 0xF0)


class ConnectRefused(MQTTException):
    """CONNACK return code != 0; args[0] is the code."""

    MESSAGES = {
        1: "unacceptable protocol version",
        2: "identifier rejected",
        3: "server unavailable",
        4: "bad user name or password",
        5: "not authorized",
    }

    def __str__(self):
        rc = self.args[0]
        return "connection refused, return code %d (%s)" % (rc, self.MESSAGES.get(rc, "reserved"))


class PacketTooLarge(ProtocolError):
    pass


class ConnectionLost(MQTTException):
    """The link is dead: broker closed it, or no PINGRESP in time."""


def _b(s):
    return s.encode() if isinstance(s, str) else s


class Session:
    def __init__(self, store, window=16, max_packet=16384, ping_timeout_ms=0,
                 ack_timeout_ms=10000, retries=1):
        self.store = store
        self.window = window
        self.max_packet = max_packet  # largest packet accepted from the broker, header included
        self.ping_timeout_ms = ping_timeout_ms
        self.ack_timeout_ms = ack_timeout_ms  # 0: no ack deadline
        self.retries = retries  # in-session resends of a QoS 1 PUBLISH or a PUBREL
        self.trace = None  # callable(str) to log every packet, or None
        self.tx = bytearray(256)
        self.txoff = 0
        self.txn = 0  # tx[_txoff:txn] is waiting to be written
        self.rx = bytearray(256)
        self._rxview = memoryview(self.rx)
        self._rxoff = 0
        self._rxn = 0
        self.keepalive_ms = 0
        self.connected = False  # CONNACK accepted
        self.open = False       # CONNECT sent, DISCONNECT not sent
        self.inflight = 0       # store entries sent on this connection
        self.pending = {}       # SUBSCRIBE/UNSUBSCRIBE id -> number of filters (0 = unsubscribe)
        self._clean = True
        self._last_tx = 0
        self._ping_at = None
        self._deadline = None  # earliest ack deadline of anything in flight
        self.resends = 0       # in-session resends so far (for reports)

    # ---- output ---------------------------------------------------------------
    def _room(self, n, now):
        """Make room for n more bytes in tx; returns the write offset."""
        if self.txoff == self.txn:
            self.txoff = self.txn = 0
        if len(self.tx) - self.txn < n:
            used = self.txn - self.txoff
            new = bytearray(max(2 * len(self.tx), used + n))
            new[:used] = self.tx[self.txoff : self.txn]
            self.tx = new
            self.txoff = 0
            self.txn = used
        self._last_tx = now
        return self.txn

    def written(self, n):
        """n bytes of tx[txoff:txn] went out."""
        self.txoff += n
        if self.txoff >= self.txn:
            self.txoff = self.txn = 0

    def _ack(self, ptype, pid, now):
        pos = self._room(4, now)
        self.txn = put_ack(self.tx, pos, ptype, pid)
        if self.trace:
            self.trace("> %s pid=%d" % (name(ptype), pid))

    # ---- commands ---------------------------------------------------------------
    def connect(self, client_id, clean_session, keepalive, now, will=None, user=None, password=None):
        """Queue CONNECT.  will = (topic, msg, qos, retain) or None."""
        client_id = _b(client_id)
        if not client_id and not clean_session:
            raise ValueError("an empty client id needs clean_session=True [MQTT-3.1.3-7]")
        if not 0 <= keepalive <= 65535:
            raise ValueError("keepalive must be 0..65535")
        if will:
            will = (_b(will[0]), _b(will[1]), will[2], will[3])
        user = _b(user)
        password = _b(password)
        self.reset()
        if clean_session:
            self.store.discard_session()  # [MQTT-3.1.2-6]
        self._clean = clean_session
        self.keepalive_ms = keepalive * 1000
        size, _ = connect_size(client_id, will, user, password)
        pos = self._room(size, now)
        self.txn = put_connect(self.tx, pos, client_id, clean_session, keepalive, will, user, password)
        self.open = True
        if self.trace:
            self.trace("> CONNECT id=%s clean=%d keepalive=%d" % (client_id.decode(), clean_session, keepalive))

    def reset(self):
        """Forget the connection (not the session): call when the socket is gone."""
        self.connected = self.open = False
        self.txoff = self.txn = 0
        self._rxoff = self._rxn = 0
        self.inflight = 0
        self.pending = {}
        self._ping_at = None
        self._deadline = None
        s = self.store
        for i in range(s.capacity):
            s.sent[i] = False

    def publish(self, topic, msg, qos, retain, now):
        """Queue a PUBLISH; QoS 1/2 go into the store first.  Returns the packet id (0 for QoS 0).

        QoS 1/2 are sent at once while fewer than `window` are in flight, else queued
        (the caller should wait for `window_full()` to clear to bound its memory)."""
        topic = _b(topic)
        msg = _b(msg)
        if not topic:
            raise ValueError("empty topic [MQTT-4.7.3-1]")
        if qos == 0:
            pos = self._room(publish_size(topic, msg, 0), now)
            self.txn = put_publish(self.tx, pos, topic, msg, 0, retain, False, 0)
            if self.trace:
                self._trace_pub(">", topic, msg, 0, retain, False, 0)
            return 0
        if qos not in (1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        if isinstance(msg, bytearray):
            msg = bytes(msg)  # the store keeps a reference: it must not change under us
        pid = self.store.next_pid(self.pending)
        i = self.store.add(pid, qos, retain, topic, msg)
        if self.connected and self.inflight < self.window:
            self._send_slot(i, now)
        return pid

    def window_full(self):
        return self.inflight >= self.window

    def busy(self):
        """Anything still owed in either direction (outgoing store or inbound QoS 2)."""
        return self.store.count > 0 or len(self.store.inbound) > 0

    def subscribe(self, topics, now):
        """topics = [(filter, qos), ...]; returns the packet id to match with SUBACKED."""
        topics = [(_b(t), q) for t, q in topics]
        for t, q in topics:
            if not t or q not in (0, 1, 2):
                raise ValueError("bad topic filter or qos")
        pid = self.store.next_pid(self.pending)
        size, _ = subscribe_size(topics)
        pos = self._room(size, now)
        self.txn = put_subscribe(self.tx, pos, pid, topics)
        self.pending[pid] = len(topics)
        if self.trace:
            self.trace("> SUBSCRIBE pid=%d %r" % (pid, topics))
        return pid

    def unsubscribe(self, topics, now):
        topics = [_b(t) for t in topics]
        pid = self.store.next_pid(self.pending)
        pos = self._room(unsubscribe_size(topics), now)
        self.txn = put_unsubscribe(self.tx, pos, pid, topics)
        self.pending[pid] = 0
        if self.trace:
            self.trace("> UNSUBSCRIBE pid=%d %r" % (pid, topics))
        return pid

    def ping(self, now):
        pos = self._room(2, now)
        self.tx[pos] = PINGREQ
        self.tx[pos + 1] = 0
        self.txn = pos + 2
        if self._ping_at is None:
            self._ping_at = now
        if self.trace:
            self.trace("> PINGREQ")

    def disconnect(self, now):
        """Queue DISCONNECT; nothing may be sent after it [MQTT-3.14.4-1]."""
        if self.open:
            pos = self._room(2, now)
            self.tx[pos] = DISCONNECT
            self.tx[pos + 1] = 0
            self.txn = pos + 2
            if self.trace:
                self.trace("> DISCONNECT")
        self.open = self.connected = False

    # ---- timers -----------------------------------------------------------------
    def tick(self, now):
        """Run the timers.  Keepalive: PINGREQ when nothing was sent for keepalive
        [MQTT-3.1.2-23]; ConnectionLost when a PINGRESP is overdue.  Ack deadlines:
        see _retransmit."""
        if not self.connected:
            return
        if self._deadline is not None and ticks_diff(now, self._deadline) >= 0:
            self._retransmit(now)
        if not self.keepalive_ms:
            return
        if self._ping_at is not None:
            limit = self.ping_timeout_ms or self.keepalive_ms
            if ticks_diff(now, self._ping_at) >= limit:
                raise ConnectionLost("no PINGRESP within %d ms" % limit)
        elif ticks_diff(now, self._last_tx) >= self.keepalive_ms:
            self.ping(now)

    def next_timer(self, now):
        """ms until tick() has something to do (-1: nothing scheduled)."""
        if not self.connected:
            return -1
        t = -1
        if self._deadline is not None:
            t = max(0, ticks_diff(self._deadline, now))
        if self.keepalive_ms:
            if self._ping_at is not None:
                k = (self.ping_timeout_ms or self.keepalive_ms) - ticks_diff(now, self._ping_at)
            else:
                k = self.keepalive_ms - ticks_diff(now, self._last_tx)
            k = max(0, k)
            t = k if t < 0 else min(t, k)
        return t

    def _retransmit(self, now):
        """An ack deadline passed: the link is dead or congested.  Resend a QoS 1
        PUBLISH (DUP=1, same id) or a PUBREL up to `retries` times in this session, as
        3.1.1 permits; a QoS 2 PUBLISH is never resent in-session (Mosquitto drops a
        client that sends the same QoS 2 PUBLISH again before PUBREL, and only the
        reconnect resend [MQTT-4.4.0-1] is safe).  Otherwise raise ConnectionLost so the
        front end reconnects and resends per §4.4.  At most `window` entries are in
        flight, so resends are bounded and never storm."""
        s = self.store
        limit = self.ack_timeout_ms
        nxt = None
        for i in range(s.capacity):
            if not (s.pid[i] and s.sent[i]):
                continue
            due = ticks_add(s.sent_at[i], limit)
            if ticks_diff(now, due) >= 0:
                st = s.state[i]
                if st == AWAIT_PUBREC or s.tries[i] >= self.retries:
                    raise ConnectionLost("no %s for packet id %d within %d ms" % (
                        ("PUBACK", "PUBREC", "PUBCOMP")[st - 1], s.pid[i], limit))
                s.tries[i] += 1
                self.resends += 1
                self.inflight -= 1
                self._send_slot(i, now)  # DUP=1: it was sent before
                due = ticks_add(now, limit)
            if nxt is None or ticks_diff(due, nxt) < 0:
                nxt = due
        self._deadline = nxt

    # ---- input ------------------------------------------------------------------
    def rx_space(self):
        """A memoryview to read received bytes into; then call received(n).
        Call next_event() until None between reads: it checks each packet's size
        against max_packet before this grows the buffer for it."""
        off = self._rxoff
        if off == self._rxn:
            self._rxoff = self._rxn = 0
            return self._rxview
        if off:
            # keep the partial packet at the front so a packet never straddles the end
            n = self._rxn - off
            self._rxview[:n] = self._rxview[off : self._rxn]
            self._rxoff = 0
            self._rxn = n
        if self._rxn == len(self.rx):
            hdr = get_header(self.rx, 0, self._rxn)
            need = hdr[1] + hdr[2] if hdr else 0
            self._grow(min(max(need, 2 * len(self.rx)), self.max_packet + 5))
        return self._rxview[self._rxn :]

    def _grow(self, size):
        new = bytearray(size)
        n = self._rxn
        new[:n] = self.rx[:n]
        self.rx = new
        self._rxview = memoryview(new)

    def received(self, n):
        self._rxn += n

    def feed(self, data):
        """Append received bytes (for tests and stream front ends: the buffer grows to
        hold all of data; max_packet is still enforced by next_event)."""
        n = len(data)
        if self._rxoff == self._rxn:
            self._rxoff = self._rxn = 0
        if self._rxn + n > len(self.rx):
            self._grow(self._rxn + n)
        self.rx[self._rxn : self._rxn + n] = data
        self._rxn += n

    def next_event(self, now):
        """Handle received packets until one yields an event; None when no complete
        packet is buffered.  Raises ProtocolError on anything the broker may not send."""
        rx = self.rx
        while True:
            # fixed header [MQTT-2.2.3], decoded inline: no tuple per packet
            pos = self._rxoff
            end = self._rxn
            if end - pos < 2:
                return None
            first = rx[pos]
            rem = 0
            shift = 0
            i = pos + 1
            while True:
                if i >= end:
                    return None
                b = rx[i]
                rem |= (b & 0x7F) << shift
                i += 1
                if not b & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MalformedPacket("remaining length longer than 4 bytes")
            hl = i - pos
            if hl + rem > self.max_packet:
                raise PacketTooLarge("%s of %d bytes exceeds max_packet %d" % (name(first), hl + rem, self.max_packet))
            start = self._rxoff + hl
            if start + rem > self._rxn:
                return None
            self._rxoff = start + rem
            ev = self._handle(first, start, rem, now)
            if ev is not None:
                return ev

    def _handle(self, first, p, rem, now):
        ptype = first & 0xF0
        flags = first & 0x0F
        rx = self.rx
        if not self.connected and ptype != CONNACK:
            raise ProtocolError("first packet from broker is %s, not CONNACK [MQTT-3.2.0-1]" % name(first))
        if ptype == PUBLISH:
            return self._on_publish(flags, p, rem, now)
        if ptype in _SERVER_MAY_NOT_SEND:
            raise ProtocolError("broker sent %s, which only a client may send" % name(first))
        if flags != (2 if ptype == PUBREL else 0):
            raise MalformedPacket("%s with reserved flags 0x%x [MQTT-2.2.2-2]" % (name(first), flags))
        if ptype in _ID_ACKS:
            if rem != 2:
                raise MalformedPacket("%s with remaining length %d" % (name(first), rem))
            pid = get_u16(rx, p)
            if pid == 0:
                raise MalformedPacket("%s with packet id 0 [MQTT-2.3.1-1]" % name(first))
            if self.trace:
                self.trace("< %s pid=%d" % (name(first), pid))
            if ptype == PUBREL:
                # [MQTT-4.3.3-2]: forget the id, answer PUBCOMP (also for unknown ids)
                if self.store.in_has(pid):
                    self.store.in_remove(pid)
                self._ack(PUBCOMP, pid, now)
                return None
            if ptype == UNSUBACK:
                if self.pending.get(pid, -1) == 0:
                    del self.pending[pid]
                    return (UNSUBACKED, pid)
                return None  # stray: ignore
            return self._on_ack(ptype, pid, now)
        if ptype == CONNACK:
            return self._on_connack(p, rem, now)
        if ptype == SUBACK:
            if rem < 3:
                raise MalformedPacket("SUBACK with remaining length %d" % rem)
            pid = get_u16(rx, p)
            codes = bytes(rx[p + 2 : p + rem])
            for c in codes:
                if c not in (0, 1, 2, 0x80):
                    raise MalformedPacket("SUBACK return code 0x%02x [MQTT-3.9.3-2]" % c)
            if self.trace:
                self.trace("< SUBACK pid=%d codes=%r" % (pid, list(codes)))
            n = self.pending.get(pid, 0)
            if not n:
                return None  # stray: ignore
            if n != len(codes):
                raise ProtocolError("SUBACK has %d return codes for %d filters [MQTT-3.8.4-5]" % (len(codes), n))
            del self.pending[pid]
            return (SUBACKED, pid, codes)
        if ptype == PINGRESP:
            if rem:
                raise MalformedPacket("PINGRESP with remaining length %d" % rem)
            if self.trace:
                self.trace("< PINGRESP")
            self._ping_at = None
            return _PONG
        raise ProtocolError("broker sent %s, which only a client may send" % name(first))

    def _on_connack(self, p, rem, now):
        if self.connected:
            raise ProtocolError("second CONNACK")
        if rem != 2:
            raise MalformedPacket("CONNACK with remaining length %d" % rem)
        ack_flags = self.rx[p]
        rc = self.rx[p + 1]
        if self.trace:
            self.trace("< CONNACK session_present=%d rc=%d" % (ack_flags & 1, rc))
        if ack_flags & 0xFE:
            raise MalformedPacket("CONNACK reserved flags 0x%02x [MQTT-3.2.2]" % ack_flags)
        sp = ack_flags & 1
        if rc:
            if sp:
                raise ProtocolError("refusing CONNACK with session present [MQTT-3.2.2-4]")
            raise ConnectRefused(rc)
        if sp and self._clean:
            raise ProtocolError("session present for a clean session [MQTT-3.2.2-1]")
        self.connected = True
        store = self.store
        slots = store.ordered()
        if not sp:
            # The broker has no session: it holds none of our ids and will send no
            # PUBREL.  Stored messages are re-sent as new publications (3.1.1 leaves
            # this open; dropping them would lose accepted messages).
            store.clear_inbound()
            for i in slots:
                store.set_state(i, AWAIT_PUBACK if store.qos[i] == 1 else AWAIT_PUBREC)
        # Resend what the store holds, in original order [MQTT-4.4.0-1][MQTT-4.6.0-1]:
        # with DUP=1 and the same id when the broker kept the session.
        for i in slots:
            store.dup[i] = bool(sp)
        for i in slots:
            if self.inflight >= self.window:
                break  # the rest follow, in order, as acks free the window
            self._send_slot(i, now)
        return (CONNECTED, sp)

    def _send_slot(self, i, now):
        s = self.store
        pid = s.pid[i]
        if s.state[i] == AWAIT_PUBCOMP:
            self._ack(PUBREL, pid, now)  # never the PUBLISH again [MQTT-4.3.3-1]
        else:
            msg = s.msg[i]
            if msg is None:
                msg = s.load(i)  # a flash store may keep payloads on the medium only
            topic = s.topic[i]
            q = s.qos[i]
            dup = s.dup[i]
            pos = self._room(publish_size(topic, msg, q), now)
            self.txn = put_publish(self.tx, pos, topic, msg, q, s.retain[i], dup, pid)
            s.dup[i] = True
            if self.trace:
                self._trace_pub(">", topic, msg, q, s.retain[i], dup, pid)
        s.sent[i] = True
        s.sent_at[i] = now
        self.inflight += 1
        self._arm(now)

    def _arm(self, now):
        if self.ack_timeout_ms:
            due = ticks_add(now, self.ack_timeout_ms)
            if self._deadline is None or ticks_diff(due, self._deadline) < 0:
                self._deadline = due

    def _on_ack(self, ptype, pid, now):
        s = self.store
        i = s.find(pid)
        if i < 0:
            if ptype == PUBREC:
                self._ack(PUBREL, pid, now)  # unknown id: release it anyway
            return None  # PUBACK/PUBCOMP for an unknown id: ignore
        state = s.state[i]
        new = SENDER.get(state << 8 | ptype, -1)
        if new < 0:
            raise ProtocolError("%s for packet id %d, which awaits %s" % (
                name(ptype), pid, ("PUBACK", "PUBREC", "PUBCOMP")[state - 1]))
        if new:
            if new != state:
                s.set_state(i, new)
                s.tries[i] = 0
            self._ack(PUBREL, pid, now)  # [MQTT-4.6.0-4] in PUBREC arrival order
            s.sent_at[i] = now  # the PUBCOMP deadline starts now
            if not s.sent[i]:
                s.sent[i] = True
                self.inflight += 1
            self._arm(now)
            return None
        if s.sent[i]:
            self.inflight -= 1
        s.remove(i)
        if s.count > self.inflight and self.connected:
            # A store larger than the window has queued messages: send the oldest.
            while self.inflight < self.window:
                j = s.oldest_unsent()
                if j < 0:
                    break
                self._send_slot(j, now)
        return None

    def _on_publish(self, flags, p, rem, now):
        qos = (flags >> 1) & 3
        dup = flags & 8
        rx = self.rx
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
        if qos == 0 and dup:
            raise MalformedPacket("QoS 0 PUBLISH with DUP set [MQTT-3.3.1-2]")
        if rem < 2:
            raise MalformedPacket("PUBLISH too short")
        tl = get_u16(rx, p)
        end = p + rem
        t0 = p + 2
        mp = t0 + tl + (2 if qos else 0)
        if mp > end:
            raise MalformedPacket("PUBLISH topic length %d overruns the packet" % tl)
        topic = bytes(rx[t0 : t0 + tl])
        if not tl:
            raise MalformedPacket("PUBLISH with empty topic [MQTT-4.7.3-1]")
        check_utf8(topic, "PUBLISH topic")
        if b"+" in topic or b"#" in topic:
            raise MalformedPacket("PUBLISH topic contains a wildcard [MQTT-3.3.2-2]")
        pid = 0
        if qos:
            pid = get_u16(rx, t0 + tl)
            if not pid:
                raise MalformedPacket("PUBLISH QoS %d with packet id 0 [MQTT-2.3.1-1]" % qos)
        msg = bytes(rx[mp:end])
        if self.trace:
            self._trace_pub("<", topic, msg, qos, flags & 1, dup, pid)
        if qos == 2 and self.store.in_has(pid):
            self._ack(PUBREC, pid, now)  # already delivered: PUBREC only [MQTT-4.3.3-2]
            return None
        return (MESSAGE, topic, msg, qos, bool(flags & 1), bool(dup), pid)

    def acknowledge(self, ev, now):
        """Acknowledge a delivered MESSAGE event [MQTT-4.5.0-2]; call after the app has
        it.  QoS 2: the id is stored before PUBREC goes out, so a duplicate PUBLISH
        (even after a reboot, with a flash store) is never delivered again."""
        qos = ev[3]
        if qos == 1:
            self._ack(PUBACK, ev[6], now)
        elif qos == 2:
            if not self.store.in_has(ev[6]):
                self.store.in_add(ev[6])
            self._ack(PUBREC, ev[6], now)

    def _trace_pub(self, d, topic, msg, qos, retain, dup, pid):
        self.trace("%s PUBLISH pid=%d qos=%d dup=%d retain=%d topic=%s len=%d" % (
            d, pid, qos, dup, retain, topic.decode(), len(msg)))
