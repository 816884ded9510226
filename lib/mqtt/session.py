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
#            AWAIT_PUBREC  --PUBACK-->  done: the broker downgraded QoS 2 to 1 (RabbitMQ
#                                       3.10 does); counted in `downgraded`, logged once
#            AWAIT_PUBCOMP --PUBCOMP--> done
#            AWAIT_PUBCOMP --PUBREC-->  AWAIT_PUBCOMP + PUBREL (broker retried)
#            any other ack for a known id is a protocol violation.
#   receiver QoS 2 id unknown  --PUBLISH--> deliver, remember id, PUBREC [MQTT-4.3.3-2]
#            QoS 2 id remembered --PUBLISH--> PUBREC only (never deliver twice)
#            any id --PUBREL--> forget id, PUBCOMP
# Unknown ids: PUBACK/PUBCOMP ignored, PUBREC answered with PUBREL, PUBREL with PUBCOMP.
#
# A PUBLISH larger than max_packet is not a violation: only its head (topic, id) is
# buffered, its payload is dropped as it arrives, and it is acknowledged as if it had
# been delivered (QoS 2 with the same id bookkeeping), so the broker does not resend
# it forever.  It is counted in `oversize` and logged.  Any other oversize packet
# raises PacketTooLarge.

from .codec import MQTTException, ProtocolError, MalformedPacket, name, put_publish, packet, connect_packet, \
    utf8_error, check_topic
from .compat import const, ticks_diff, ticks_add

# Packet types: the first byte without its flags [MQTT-2.2.1] (const copies, see codec.py)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_PUBREC = const(0x50)
_PUBREL = const(0x60)
_PUBCOMP = const(0x70)
_SUBSCRIBE = const(0x80)
_SUBACK = const(0x90)
_UNSUBSCRIBE = const(0xA0)
_UNSUBACK = const(0xB0)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

# Sender states, as the store keeps them (the same values as store.py)
_AWAIT_PUBACK = const(1)
_AWAIT_PUBREC = const(2)
_AWAIT_PUBCOMP = const(3)
_AWAITS = const(("PUBACK", "PUBREC", "PUBCOMP"))  # what each state waits for, for messages

# Events returned by next_event()
CONNECTED = const(1)   # (CONNECTED, 0, session_present)
MESSAGE = const(2)     # (MESSAGE, topic, msg, qos, retain, dup, pid)
SUBACKED = const(3)    # (SUBACKED, pid, return_codes)
UNSUBACKED = const(4)  # (UNSUBACKED, pid, None)
PONG = const(5)        # (PONG,)

# Sender transitions: state << 8 | ack type -> new state (0 = complete).  Integer
# keys: a tuple key would be allocated for every ack.
SENDER = {
    _AWAIT_PUBACK << 8 | _PUBACK: 0,
    _AWAIT_PUBREC << 8 | _PUBREC: _AWAIT_PUBCOMP,
    _AWAIT_PUBREC << 8 | _PUBACK: 0,  # QoS 2 downgraded by the broker: complete, never resend
    _AWAIT_PUBCOMP << 8 | _PUBCOMP: 0,
    _AWAIT_PUBCOMP << 8 | _PUBREC: _AWAIT_PUBCOMP,
}


class ConnectRefused(MQTTException):
    """CONNACK return code != 0; args[0] is the code."""

    def __str__(self):
        rc = self.args[0]
        return "connection refused, return code %d (%s)" % (rc, (
            "unacceptable protocol version", "identifier rejected", "server unavailable",
            "bad user name or password", "not authorized")[rc - 1] if 0 < rc < 6 else "reserved")


class PacketTooLarge(ProtocolError):
    pass


class ConnectionLost(MQTTException):
    """The link is dead: broker closed it, or no PINGRESP in time."""


def _b(s):
    return s.encode() if isinstance(s, str) else s


# MicroPython looks a builtin up in the module's globals first, and a miss in a table as full
# as this module's costs more than the call: the ones publish0 calls per message are globals.
len = len
isinstance = isinstance


POISON_STRIKES = const(5)  # see Session.link_ended
POISON_MS = const(2000)


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
        self.log = None    # callable(str) for the rare events below, or None
        self.tx = bytearray(256)  # tx[txoff:txn] is waiting to be written
        # publish0 (see there and _lay): the topic whose length and bytes are laid at tx[5:]
        # (None: nothing laid) and where its payload goes; the fixed header in tx[_t0o:5] is
        # for a packet ending at _t0e with retain flag _t0r
        self._t0 = self._t0r = None
        self._t0p = self._t0o = self._t0e = 0
        self.rx = bytearray(256)
        self._rxview = memoryview(self.rx)
        self.keepalive_ms = self._last_tx = 0
        self.resends = 0  # in-session resends so far (for reports)
        self.completed = 0     # outgoing QoS 1/2 messages acknowledged (PUBACK/PUBCOMP)
        self.downgraded = 0    # of those, QoS 2 messages the broker answered with PUBACK
        self.oversize = 0      # inbound PUBLISH over max_packet: skipped and acknowledged
        self.held = 0          # stored messages set aside as poison (see link_ended)
        self._strike = None    # [order, count]: the poison candidate (see link_ended)
        self._clean = True
        self.reset()

    def reset(self):
        """Forget the connection (not the session): call when the socket is gone."""
        self.connected = False  # CONNACK accepted
        self.open = False       # CONNECT sent, DISCONNECT not sent
        self.txoff = self.txn = self._rxoff = self._rxn = 0
        self._need = 0          # size of the packet being received (see rx_space)
        self._skip = 0          # bytes of an oversize PUBLISH still to drop
        self._big = None        # [first byte, size, topic, pid, rest] of that PUBLISH
        self.inflight = 0       # store entries sent on this connection
        self.pending = {}       # SUBSCRIBE/UNSUBSCRIBE id -> number of filters (0 = unsubscribe)
        self.shed = 0           # inbound QoS 2 PUBLISH left unacknowledged: store full
        self._ping_at = None
        self._deadline = None   # earliest ack deadline of anything in flight
        self._head = 0          # order of the first stored PUBLISH sent on this connection
        self._head_at = 0       # when it was sent
        self._heard = False     # the broker answered anything after it (see link_ended)
        s = self.store
        for i in range(s.capacity):
            s.sent[i] = False

    # ---- output ---------------------------------------------------------------
    def _room(self, n, now):
        """Make room for n more bytes in tx; returns the write offset.  (txoff == txn
        only when both are 0: written() and reset() keep it so.)"""
        tx = self.tx
        end = self.txn
        self._t0 = None  # what publish0 laid at tx[5:] is overwritten
        if len(tx) - end < n:
            used = end - self.txoff
            new = bytearray(max(2 * len(tx), used + n))
            new[:used] = tx[self.txoff : end]
            self.tx = new
            self.txoff = 0
            self.txn = end = used
        self._last_tx = now
        return end

    def written(self, n):
        """n bytes of tx[txoff:txn] went out."""
        self.txoff += n
        if self.txoff >= self.txn:
            self.txoff = self.txn = 0

    def _send(self, data, now):
        """Queue a whole packet (the rare kinds, built by codec.packet)."""
        n = len(data)
        pos = self._room(n, now)
        self.tx[pos : pos + n] = data
        self.txn = pos + n
        if self.trace:
            self._tr(">", self.tx, pos, pos + n)

    def _ack(self, first, pid, now):
        """PUBACK/PUBREC/PUBREL/PUBCOMP: first byte (PUBREL's carries flags 0b0010
        [MQTT-3.6.1-1]), remaining length 2, packet id."""
        pos = self._room(4, now)
        tx = self.tx
        tx[pos] = first
        tx[pos + 1] = 2
        tx[pos + 2] = pid >> 8
        tx[pos + 3] = pid & 0xFF
        self.txn = pos + 4
        if self.trace:
            self._tr(">", tx, pos, pos + 4)

    def _publish(self, topic, msg, qos, retain, dup, pid, now):
        pos = self._room(len(topic) + len(msg) + 9, now)
        self.txn = put_publish(self.tx, pos, topic, msg, qos, retain, dup, pid)
        if self.trace:
            self._tr(">", self.tx, pos, self.txn)

    def _tr(self, d, b, p, end):
        """Trace one line for the well-formed packet b[p:end]; d is ">" (sent) or "<"
        (received).  Called after a received packet has been validated."""
        first = b[p]
        t = first & 0xF0
        p += 1
        while b[p] & 0x80:  # the remaining length [MQTT-2.2.3]
            p += 1
        p += 1  # the variable header
        rem = end - p
        s = d + " " + name(first)
        if t == _PUBLISH:
            q = first >> 1 & 3
            tl = b[p] << 8 | b[p + 1]
            s += " pid=%d qos=%d dup=%d retain=%d topic=%s len=%d" % (
                b[p + tl + 2] << 8 | b[p + tl + 3] if q else 0, q, first >> 3 & 1, first & 1,
                bytes(b[p + 2 : p + tl + 2]).decode(), rem - tl - (4 if q else 2))
        elif t == 0x10:  # our CONNECT: protocol name and level, flags, keepalive, client id
            s += " id=%s clean=%d keepalive=%d" % (
                bytes(b[p + 12 : p + 12 + (b[p + 10] << 8 | b[p + 11])]).decode(), b[p + 7] >> 1 & 1,
                b[p + 8] << 8 | b[p + 9])
        elif t == _CONNACK:
            s += " session_present=%d rc=%d" % (b[p], b[p + 1])
        elif rem:
            s += " pid=%d" % (b[p] << 8 | b[p + 1])
            if rem > 2:  # SUBSCRIBE filters and QoS, UNSUBSCRIBE filters, SUBACK codes
                s += " %r" % bytes(b[p + 2 : p + rem])
        self.trace(s)

    # ---- commands ---------------------------------------------------------------
    def connect(self, client_id, clean_session, keepalive, now, will=None, user=None, password=None):
        """Queue CONNECT.  will = (topic, msg, qos, retain) or None."""
        client_id = _b(client_id)
        if not client_id and not clean_session:
            raise ValueError("empty client id needs clean_session=True")  # [MQTT-3.1.3-7]
        if not 0 <= keepalive <= 65535:
            raise ValueError("keepalive must be 0..65535")
        if will:
            will = (_b(will[0]), _b(will[1]), will[2], will[3])
        self.reset()
        if clean_session:
            self.store.discard_session()  # [MQTT-3.1.2-6]; a flash store keeps messages
        self._clean = clean_session
        self.keepalive_ms = keepalive * 1000
        self._send(connect_packet(client_id, clean_session, keepalive, will, _b(user), _b(password)), now)
        self.open = True

    def publish(self, topic, msg, qos, retain, now):
        """Queue a PUBLISH; QoS 1/2 go into the store first.  Returns the packet id (0 for QoS 0).

        QoS 1/2 are sent at once while fewer than `window` are in flight, else queued
        (the caller should wait for `window_full()` to clear to bound its memory).
        For QoS 0 the front ends try publish0 first."""
        topic = check_topic(topic, False)  # TopicError before anything is stored or sent
        msg = _b(msg)
        if qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        if len(topic) + len(msg) + (4 if qos else 2) > 268435455:
            raise ValueError("packet too large")  # 4 length bytes at most [MQTT-2.2.3]
        if not qos:
            self._publish(topic, msg, 0, retain, False, 0, now)
            return 0
        if isinstance(msg, bytearray):
            msg = bytes(msg)  # the store keeps a reference: it must not change under us
        if isinstance(topic, bytearray):
            topic = bytes(topic)
        pid = self.store.next_pid(self.pending)
        i = self.store.add(pid, qos, retain, topic, msg)
        if self.connected and self.inflight < self._win():
            self._send_slot(i, now)
        return pid

    def publish0(self, topic, msg, retain, now):
        """publish() at QoS 0 the short way, when nothing else is queued: True when the
        PUBLISH is queued, False when it was not (call publish()).  The same bytes: the
        topic's length and bytes stay laid at tx[5:] from one call to the next (until
        another packet is queued), so a topic object used again (bytes or str: immutable)
        is neither checked nor copied again; the payload goes after it and the fixed header
        right before it, ending at tx[5] (txoff 3, or 2 for a remaining length over 127),
        where it also stays for the next message of the same length and retain flag.
        Small on purpose: MicroPython puts the frame of a function with more than 11 words
        of arguments, locals and stack on the heap, at every call."""
        if self.txn:
            return False
        if isinstance(msg, str):
            msg = msg.encode()
        if topic is not self._t0 or self._t0p + len(msg) != self._t0e or retain is not self._t0r:
            if not self._lay(topic, msg, retain):
                return False
        self.tx[self._t0p : self._t0e] = msg
        self.txoff = self._t0o
        self.txn = self._t0e
        self._last_tx = now
        if self.trace:
            self._tr(">", self.tx, self._t0o, self._t0e)
        return True

    def _lay(self, topic, msg, retain):
        """publish0's layout for this topic, payload length and retain flag: check the topic
        (TopicError, as publish) and lay its length and bytes at tx[5:] unless it is laid
        already, then the fixed header before it.  False when publish0 cannot take it (a
        mutable topic, no room in tx, a remaining length over 16383)."""
        tx = self.tx
        if topic is not self._t0:
            if not isinstance(topic, (bytes, str)):
                return False
            t = check_topic(topic, False)
            n = len(t)
            if n + 7 > len(tx):
                return False
            self._t0e = -1  # nothing valid for the new topic yet
            tx[5] = n >> 8
            tx[6] = n & 0xFF
            tx[7 : 7 + n] = t
            self._t0 = topic
            self._t0p = 7 + n
        end = self._t0p + len(msg)
        rem = end - 5
        if end > len(tx) or rem > 16383:
            return False
        if rem < 128:
            n = 3
            tx[4] = rem
        else:
            n = 2
            tx[3] = rem & 0x7F | 0x80
            tx[4] = rem >> 7
        tx[n] = 0x31 if retain else 0x30
        self._t0o = n
        self._t0e = end
        self._t0r = retain
        return True

    def _win(self):
        # While a poison candidate is under test it goes out alone (see link_ended):
        # a reset can wipe the acks of whatever shared its connection.
        return 1 if self._strike else self.window

    def window_full(self):
        return self.inflight >= self._win()

    def busy(self):
        """Anything still owed in either direction (outgoing store or inbound QoS 2)."""
        return bool(self.store.count or self.store.inbound)

    def subscribe(self, topics, now):
        """topics = [(filter, qos), ...]; returns the packet id to match with SUBACKED."""
        f = []
        for t, q in topics:
            if q not in (0, 1, 2):
                raise ValueError("qos must be 0, 1 or 2")
            f += (check_topic(t, True), q)
        return self._request(_SUBSCRIBE | 2, f, len(topics), now)  # flags 0b0010 [MQTT-3.8.1-1]

    def unsubscribe(self, topics, now):
        f = []
        for t in topics:
            f.append(check_topic(t, True))
        return self._request(_UNSUBSCRIBE | 2, f, 0, now)  # flags 0b0010 [MQTT-3.10.1-1]

    def _request(self, first, fields, n, now):
        pid = self.store.next_pid(self.pending)
        self._send(packet(first, [pid >> 8, pid & 0xFF] + fields), now)
        self.pending[pid] = n
        return pid

    def ping(self, now):
        self._send(b"\xc0\x00", now)  # PINGREQ
        if self._ping_at is None:
            self._ping_at = now

    def disconnect(self, now):
        """Queue DISCONNECT; nothing may be sent after it [MQTT-3.14.4-1]."""
        if self.open:
            self._send(b"\xe0\x00", now)
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
        if self.keepalive_ms:
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
                if st == _AWAIT_PUBREC or s.tries[i] >= self.retries:
                    raise ConnectionLost("no %s for packet id %d within %d ms" % (_AWAITS[st - 1], s.pid[i], limit))
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
        n = self._rxn - off
        if not n:  # all consumed (the usual case): the whole buffer, no slice allocated
            self._rxoff = self._rxn = 0
            return self._rxview
        if off:
            # keep the partial packet at the front so a packet never straddles the end
            self._rxview[:n] = self._rxview[off : self._rxn]
            self._rxoff = 0
            self._rxn = n
        if n == len(self.rx):
            # full with one partial packet, whose size next_event noted in _need
            new = bytearray(min(max(self._need, 2 * n), self.max_packet + 5))
            new[:n] = self.rx
            self.rx = new
            self._rxview = memoryview(new)
        return self._rxview[n:]

    def link_ended(self, by_broker, now):
        """The connection is gone (call before reset).  Poison rule: a stored message
        the broker cannot take (too big for it, refused by a plugin) makes it close the
        link each time it arrives, which would block the queue behind it forever.  A
        connection counts as a strike against message M when the broker closed it
        (EOF or reset) after accepting the CONNECT, M was the first stored PUBLISH sent
        on it, the close came within POISON_MS of sending M, and nothing the broker sent
        after M answered anything.  POISON_STRIKES strikes in a row against the same M
        (any other ending, or M acknowledged, starts over) and M is held: kept in the
        store, out of the queue, counted in self.held and logged (store.release() or
        tools/ringdump.py --release put it back).  While M has strikes it is sent alone,
        so the messages that shared its connection are not blamed for it (a reset can
        wipe their acks).  A link that merely flaps would have to die inside the one
        round trip after the first PUBLISH, every time in a row."""
        if not self.connected:
            return  # no connection was up (an attempt failed, or this one was counted)
        o = self._head
        if not (by_broker and o and not self._heard and ticks_diff(now, self._head_at) <= POISON_MS):
            self._strike = None
            return
        st = self._strike
        if st and st[0] == o:
            st[1] += 1
        else:
            st = self._strike = [o, 1]
        if st[1] < POISON_STRIKES:
            return
        self._strike = None
        s = self.store
        for i in range(s.capacity):
            if s.pid[i] and s.seq[i] == o and s.state[i] != _AWAIT_PUBCOMP:
                if self.log:
                    t = s.topic[i]
                    self.log("message %d held (topic %s): the broker closed the link the last %d times it "
                             "got it" % (o, t.decode() if isinstance(t, bytes) else t, POISON_STRIKES))
                s.hold(i)
                self.held += 1
                return

    def received(self, n):
        self._rxn += n

    def next_event(self, now):
        """Handle received packets until one yields an event; None when no complete
        packet is buffered.  Raises ProtocolError on anything the broker may not send."""
        rx = self.rx
        while True:
            pos = self._rxoff
            end = self._rxn
            if self._skip:  # an oversize PUBLISH: drop its bytes as they arrive
                k = min(self._skip, end - pos)
                self._rxoff = pos = pos + k
                self._skip -= k
                if self._skip:
                    return None
            big = self._big
            if big:
                if big[3] < 0:  # its packet id follows the topic just dropped
                    if end - pos < 2:
                        return None
                    big[3] = rx[pos] << 8 | rx[pos + 1]
                    if not big[3]:
                        raise MalformedPacket("PUBLISH with packet id 0")  # [MQTT-2.3.1-1]
                    self._rxoff = pos + 2
                    self._skip = big[4]
                else:
                    self._big = None
                    self._skipped(big, now)
                continue
            # fixed header [MQTT-2.2.3], decoded inline: no tuple per packet
            if end - pos < 2:
                return None
            rem = 0
            shift = 0
            i = pos + 1
            while True:
                if i >= end:
                    return None
                b = rx[i]
                rem |= (b & 0x7F) << shift
                i += 1
                if b < 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MalformedPacket("remaining length over 4 bytes")
            n = i - pos + rem
            if n > self.max_packet:
                if rx[pos] & 0xF0 != _PUBLISH:
                    raise PacketTooLarge("%s of %d bytes, max_packet %d" % (name(rx[pos]), n, self.max_packet))
                # Buffer only the head: the topic length, then topic and id if they fit
                # in max_packet (else _on_publish drops the topic unseen).
                h = i - pos + 2
                if end - pos >= h:
                    k = h + (rx[i] << 8 | rx[i + 1]) + (2 if rx[pos] & 6 else 0)
                    if k <= self.max_packet:
                        h = k
                if end - pos < h:
                    self._need = h
                    return None
                if not self.connected:
                    raise ProtocolError("first packet is PUBLISH, not CONNACK")  # [MQTT-3.2.0-1]
                self._on_publish(rx[pos], pos, i, rem, now, True)
                continue
            if pos + n > end:
                self._need = n
                return None
            self._rxoff = pos + n
            ev = self._handle(rx[pos], pos, i, rem, now)
            if ev is not None:
                return ev

    def _handle(self, first, pos, p, rem, now):
        """The packet at rx[pos], body at rx[p : p + rem]."""
        t = first & 0xF0
        flags = first & 0x0F
        rx = self.rx
        if not self.connected and t != _CONNACK:
            raise ProtocolError("first packet is %s, not CONNACK" % name(first))  # [MQTT-3.2.0-1]
        if t == _PUBLISH:
            return self._on_publish(first, pos, p, rem, now, False)
        if t in (0, 0x10, _SUBSCRIBE, _UNSUBSCRIBE, _PINGREQ, _DISCONNECT, 0xF0):
            raise ProtocolError("broker sent %s, which only a client may send" % name(first))
        if flags != (2 if t == _PUBREL else 0):
            raise MalformedPacket("%s with flags 0x%x" % (name(first), flags))  # reserved [MQTT-2.2.2-2]
        if rem < 3 if t == _SUBACK else rem != (0 if t == _PINGRESP else 2):
            raise MalformedPacket("%s with remaining length %d" % (name(first), rem))
        if self.trace:
            self._tr("<", rx, pos, p + rem)
        self._heard = True  # an answer to something we sent (PUBLISH above is unsolicited)
        if self._strike and self._strike[0] == self._head:
            self._strike = None  # the candidate went through: not poison
        if t == _PINGRESP:
            self._ping_at = None
            return (PONG,)
        if t == _CONNACK:
            return self._on_connack(rx[p], rx[p + 1], now)
        pid = rx[p] << 8 | rx[p + 1]
        if t == _SUBACK:
            codes = bytes(rx[p + 2 : p + rem])
            for c in codes:
                if c not in (0, 1, 2, 0x80):
                    raise MalformedPacket("SUBACK return code 0x%02x" % c)  # [MQTT-3.9.3-2]
            n = self.pending.get(pid, 0)
            if not n:
                return None  # stray: ignore
            if n != len(codes):
                raise ProtocolError("SUBACK has %d codes for %d filters" % (len(codes), n))  # [MQTT-3.8.4-5]
            del self.pending[pid]
            return (SUBACKED, pid, codes)
        if not pid:
            raise MalformedPacket("%s with packet id 0" % name(first))  # [MQTT-2.3.1-1]
        if t == _PUBREL:
            # [MQTT-4.3.3-2]: forget the id, answer PUBCOMP (also for unknown ids)
            if pid in self.store.inbound:
                self.store.in_remove(pid)
            self._ack(_PUBCOMP, pid, now)
            return None
        if t == _UNSUBACK:
            if self.pending.get(pid, -1) == 0:
                del self.pending[pid]
                return (UNSUBACKED, pid, None)
            return None  # stray: ignore
        return self._on_ack(t, pid, now)

    def _on_connack(self, ack_flags, rc, now):
        if self.connected:
            raise ProtocolError("second CONNACK")
        if ack_flags & 0xFE:
            raise MalformedPacket("CONNACK flags 0x%02x" % ack_flags)  # reserved [MQTT-3.2.2]
        sp = ack_flags & 1
        if rc:
            if sp:
                raise ProtocolError("refusing CONNACK with session present")  # [MQTT-3.2.2-4]
            raise ConnectRefused(rc)
        if sp and self._clean:
            raise ProtocolError("session present for a clean session")  # [MQTT-3.2.2-1]
        self.connected = True
        store = self.store
        slots = store.ordered()
        if not sp:
            # The broker has no session: it holds none of our ids and will send no
            # PUBREL.  Messages not yet PUBREC'd are re-sent as new publications (3.1.1
            # leaves this open; dropping them would lose accepted messages).  A QoS 2
            # message that got its PUBREC keeps AWAIT_PUBCOMP and gets its PUBREL again:
            # its PUBLISH is never sent twice [MQTT-4.3.3-1] (the broker may have
            # forwarded it already), and a broker answers PUBCOMP to a PUBREL for an
            # id it does not know (Mosquitto does), which completes it.
            store.clear_inbound()
        # Resend what the store holds, in original order [MQTT-4.4.0-1][MQTT-4.6.0-1]:
        # with DUP=1 and the same id when the broker kept the session.
        for i in slots:
            store.dup[i] = bool(sp)
        for i in slots:
            if self.inflight >= self._win():
                break  # the rest follow, in order, as acks free the window
            self._send_slot(i, now)
        return (CONNECTED, 0, sp)

    def _send_slot(self, i, now):
        s = self.store
        pid = s.pid[i]
        if s.state[i] == _AWAIT_PUBCOMP:
            self._ack(_PUBREL | 2, pid, now)  # never the PUBLISH again [MQTT-4.3.3-1]
        else:
            msg = s.msg[i]
            if msg is None:
                msg = s.load(i)  # a flash store may keep payloads on the medium only
            self._publish(s.topic[i], msg, s.qos[i], s.retain[i], s.dup[i], pid, now)
            s.dup[i] = True
            if not self._head:
                self._head = s.seq[i]
                self._head_at = now
                self._heard = False
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
            if ptype == _PUBREC:
                self._ack(_PUBREL | 2, pid, now)  # unknown id: release it anyway
            return None  # PUBACK/PUBCOMP for an unknown id: ignore
        state = s.state[i]
        new = SENDER.get(state << 8 | ptype, -1)
        if new < 0:
            raise ProtocolError("%s for packet id %d, which awaits %s" % (name(ptype), pid, _AWAITS[state - 1]))
        if new:
            if new != state:
                s.set_state(i, new)
                s.tries[i] = 0
            self._ack(_PUBREL | 2, pid, now)  # [MQTT-4.6.0-4] in PUBREC arrival order
            s.sent_at[i] = now  # the PUBCOMP deadline starts now
            if not s.sent[i]:
                s.sent[i] = True
                self.inflight += 1
            self._arm(now)
            return None
        if state == _AWAIT_PUBREC:  # PUBACK for QoS 2 (see SENDER): the broker took it at QoS 1
            self.downgraded += 1
            if self.downgraded == 1 and self.log:
                self.log("QoS 2 PUBLISH %d got PUBACK: the broker downgraded QoS 2 to 1 (taken as done)" % pid)
        if s.sent[i]:
            self.inflight -= 1
        s.remove(i)
        self.completed += 1
        if s.count > self.inflight and self.connected:
            # A store larger than the window has queued messages: send the oldest.
            while self.inflight < self._win():
                j = s.oldest_unsent()
                if j < 0:
                    break
                self._send_slot(j, now)
        return None

    def _on_publish(self, first, pos, p, rem, now, big):
        """A PUBLISH; big: over max_packet, only its head is buffered (see next_event)."""
        qos = first >> 1 & 3
        dup = first & 8
        rx = self.rx
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")  # [MQTT-3.3.1-4]
        if dup and not qos:
            raise MalformedPacket("QoS 0 PUBLISH with DUP set")  # [MQTT-3.3.1-2]
        if rem < 2:
            raise MalformedPacket("PUBLISH too short")
        tl = rx[p] << 8 | rx[p + 1]
        t0 = p + 2
        mp = t0 + tl + (2 if qos else 0)  # the payload
        if mp > p + rem:
            raise MalformedPacket("PUBLISH too short")  # topic (and id) overrun the packet
        if big and mp > self._rxn:
            # even its topic is over max_packet: drop the topic unseen, then read the id
            self._rxoff = t0
            self._skip = tl if qos else p + rem - t0
            self._big = [first, p - pos + rem, None, -qos, p + rem - mp]
            return None
        topic = bytes(rx[t0 : t0 + tl])
        if not tl:
            raise MalformedPacket("PUBLISH with empty topic")  # [MQTT-4.7.3-1]
        e = utf8_error(topic)
        if e:
            raise MalformedPacket("topic " + e)
        if b"+" in topic or b"#" in topic:
            raise MalformedPacket("PUBLISH topic has a wildcard")  # [MQTT-3.3.2-2]
        pid = 0
        if qos:
            pid = rx[mp - 2] << 8 | rx[mp - 1]
            if not pid:
                raise MalformedPacket("%s with packet id 0" % name(first))  # [MQTT-2.3.1-1]
        if self.trace:
            self._tr("<", rx, pos, p + rem)  # reads only the head: fine for a big one
        if big:
            self._rxoff = mp
            self._skip = p + rem - mp
            self._big = [first, p - pos + rem, topic, pid, 0]
            return None
        msg = bytes(rx[mp : p + rem])
        if qos == 2:
            if pid in self.store.inbound:
                self._ack(_PUBREC, pid, now)  # already delivered: PUBREC only [MQTT-4.3.3-2]
                return None
            if not self.store.in_room():
                # Neither delivered nor acknowledged: the front end drops the link once
                # the acks queued so far are sent (see `shed`), and the broker resends it
                # after the reconnect, by which time its PUBRELs have freed room.
                self.shed += 1
                return None
        return (MESSAGE, topic, msg, qos, bool(first & 1), bool(dup), pid)

    def _skipped(self, big, now):
        """The last byte of an oversize PUBLISH went by: acknowledge it per its QoS
        [MQTT-4.5.0-2] (else the broker resends it after every reconnect, forever), with
        the usual exactly-once bookkeeping for QoS 2 [MQTT-4.3.3-2]; count and log it."""
        qos = big[0] >> 1 & 3
        pid = big[3]
        self.oversize += 1
        if self.log:
            self.log("skipped a QoS %d PUBLISH of %d bytes (over max_packet %d), topic %s" % (
                qos, big[1], self.max_packet, big[2].decode() if big[2] else "too long to show"))
        if qos == 2:
            st = self.store
            if pid not in st.inbound:
                if not st.in_room():
                    self.shed += 1  # as in _on_publish: the broker resends it later
                    return
                st.in_add(pid)
            self._ack(_PUBREC, pid, now)
        elif qos:
            self._ack(_PUBACK, pid, now)

    def acknowledge(self, ev, now):
        """Acknowledge a delivered MESSAGE event [MQTT-4.5.0-2]; call after the app has
        it.  QoS 2: the id is stored before PUBREC goes out, so a duplicate PUBLISH
        (even after a reboot, with a flash store) is never delivered again."""
        qos = ev[3]
        pid = ev[6]
        if qos == 2 and pid not in self.store.inbound:
            self.store.in_add(pid)
        if qos:
            self._ack(_PUBACK if qos == 1 else _PUBREC, pid, now)
