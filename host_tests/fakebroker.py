"""A scripted fake MQTT 3.1.1 broker for byte-exact client tests.

It runs in the pytest process, listens on a free 127.0.0.1 port and plays one scripted
scenario: the test sends exactly the bytes it chooses (well-formed or not) and asserts the
exact bytes the client sends back.  Every blocking step has a timeout, so a client that
stays silent or never closes fails the test instead of hanging it.

    with FakeBroker() as fb:
        proc = rt.spawn(CLIENT_SCRIPT, args=(fb.port,))
        c = fb.accept()                      # one client connection
        c.expect(connect("id", keepalive=30))  # exactly these bytes, else a hex diff
        c.send(connack())
        pkt = c.read_packet()                # one whole raw packet
        c.send(pubrec(1))
        c.expect(h("62 02 00 01"))
        c.expect_disconnect()                # e0 00, then EOF
        # or: c.expect_closed(timeout) -> packets before EOF, asserting no DISCONNECT
        # or: c.expect_silence(seconds)

Packet builders (connect, connack, publish, puback, ...) encode MQTT 3.1.1 independently of
the library under test; `h("20 02 00 00")` turns hex text into bytes for literal packets.
"""
import socket
import time

DEFAULT_TIMEOUT = 5.0

NAMES = {
    0: "type 0 (reserved)", 1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
    6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "type 15 (reserved)",
}


# ---- bytes and packets ----------------------------------------------------------


def h(text):
    """b'\\x20\\x02...' from '20 02 ...' (spaces and newlines ignored)."""
    return bytes.fromhex("".join(text.split()))


def hexs(data):
    return " ".join("%02x" % b for b in data)


def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def varlen(n):
    """Remaining-length encoding [MQTT-2.2.3]."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mstr(s):
    """A length-prefixed string [MQTT-1.5.3]."""
    s = _b(s)
    return bytes([len(s) >> 8, len(s) & 0xFF]) + s


def u16(n):
    return bytes([n >> 8, n & 0xFF])


def packet(first, body=b""):
    return bytes([first]) + varlen(len(body)) + bytes(body)


def connect(client_id, clean=True, keepalive=0, will=None, user=None, password=None):
    """CONNECT as a 3.1.1 client must send it; will = (topic, msg, qos, retain)."""
    flags = 0x02 if clean else 0
    payload = mstr(client_id)
    if will:
        topic, msg, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += mstr(topic) + mstr(msg)
    if user is not None:
        flags |= 0x80
        payload += mstr(user)
        if password is not None:
            flags |= 0x40
            payload += mstr(password)
    return packet(0x10, mstr("MQTT") + bytes([4, flags]) + u16(keepalive) + payload)


def connack(session_present=0, rc=0):
    return bytes([0x20, 2, session_present, rc])


def publish(topic, msg=b"", qos=0, pid=None, dup=False, retain=False):
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    body = mstr(topic)
    if qos:
        body += u16(pid)
    return packet(first, body + _b(msg))


def puback(pid):
    return bytes([0x40, 2]) + u16(pid)


def pubrec(pid):
    return bytes([0x50, 2]) + u16(pid)


def pubrel(pid):
    return bytes([0x62, 2]) + u16(pid)


def pubcomp(pid):
    return bytes([0x70, 2]) + u16(pid)


def subscribe(pid, filters):
    """filters = [(filter, qos), ...]; fixed-header flags 0b0010 [MQTT-3.8.1-1]."""
    body = u16(pid)
    for f, q in filters:
        body += mstr(f) + bytes([q])
    return packet(0x82, body)


def suback(pid, *codes):
    return packet(0x90, u16(pid) + bytes(codes))


def unsubscribe(pid, filters):
    body = u16(pid)
    for f in filters:
        body += mstr(f)
    return packet(0xA2, body)


def unsuback(pid):
    return bytes([0xB0, 2]) + u16(pid)


PINGREQ = h("c0 00")
PINGRESP = h("d0 00")
DISCONNECT = h("e0 00")


def parse_header(data, pos=0):
    """(first byte, remaining length, header length) or None when incomplete."""
    mult, rem, i = 1, 0, pos + 1
    while True:
        if i >= len(data):
            return None
        b = data[i]
        rem += (b & 0x7F) * mult
        i += 1
        if not b & 0x80:
            return data[pos], rem, i - pos
        mult <<= 7
        if i - pos > 4:
            raise AssertionError("client sent a remaining length longer than 4 bytes: %s" % hexs(data[pos:i]))


def split_packets(data):
    """Split a byte string into whole packets; returns (packets, leftover bytes)."""
    pkts, pos = [], 0
    while True:
        hdr = parse_header(data, pos)
        if hdr is None or pos + hdr[2] + hdr[1] > len(data):
            return pkts, bytes(data[pos:])
        end = pos + hdr[2] + hdr[1]
        pkts.append(bytes(data[pos:end]))
        pos = end


def ptype(pkt):
    return pkt[0] >> 4


def pid_offset(pkt):
    """Offset of the packet identifier in a raw packet, or None when it has none."""
    hdr = parse_header(pkt)
    if hdr is None:
        return None
    first, rem, hl = hdr
    t = first >> 4
    if t == 3:
        if not (first >> 1) & 3 or len(pkt) < hl + 2:
            return None
        return hl + 2 + ((pkt[hl] << 8) | pkt[hl + 1])
    if t in (4, 5, 6, 7, 8, 9, 10, 11):
        return hl
    return None


def pid_of(pkt):
    off = pid_offset(pkt)
    if off is None or off + 2 > len(pkt):
        return None
    return (pkt[off] << 8) | pkt[off + 1]


def describe(pkt):
    """One readable line for a raw packet (for failure messages)."""
    pkt = bytes(pkt)
    if not pkt:
        return "(nothing)"
    try:
        hdr = parse_header(pkt)
    except AssertionError as e:
        return str(e)
    if hdr is None:
        return "incomplete packet %s" % hexs(pkt)
    first, rem, hl = hdr
    t, flags = first >> 4, first & 15
    name = NAMES[t]
    body = pkt[hl:hl + rem]
    extra = "" if len(pkt) == hl + rem else " (+%d trailing bytes)" % (len(pkt) - hl - rem)
    if t == 3 and len(body) >= 2:
        qos = (flags >> 1) & 3
        tl = (body[0] << 8) | body[1]
        topic = body[2:2 + tl]
        p = pid_of(pkt) if qos else None
        payload = body[2 + tl + (2 if qos else 0):]
        return "PUBLISH qos=%d dup=%d retain=%d pid=%s topic=%r payload=%r%s" % (
            qos, flags >> 3, flags & 1, p, topic, payload, extra)
    if t == 1 and len(body) >= 10:
        cf = body[7]
        ka = (body[8] << 8) | body[9]
        return "CONNECT flags=0x%02x (clean=%d will=%d will_qos=%d will_retain=%d password=%d user=%d) keepalive=%d payload=%r%s" % (
            cf, (cf >> 1) & 1, (cf >> 2) & 1, (cf >> 3) & 3, (cf >> 5) & 1, (cf >> 6) & 1, cf >> 7, ka, body[10:], extra)
    if t in (4, 5, 6, 7, 11) and rem == 2:
        return "%s flags=0x%x pid=%d%s" % (name, flags, (body[0] << 8) | body[1], extra)
    if t in (8, 9, 10) and rem >= 2:
        return "%s flags=0x%x pid=%d rest=%s%s" % (name, flags, (body[0] << 8) | body[1], hexs(body[2:]), extra)
    return "%s flags=0x%x remaining=%d body=%s%s" % (name, flags, rem, hexs(body), extra)


def describe_all(data):
    pkts, rest = split_packets(bytes(data))
    lines = [describe(p) for p in pkts]
    if rest:
        lines.append("incomplete: %s" % hexs(rest))
    return "\n    ".join(lines) if lines else "(nothing)"


def diff(expected, got):
    """A hex diff of two byte strings, marking the first differing byte."""
    expected, got = bytes(expected), bytes(got)
    i = 0
    while i < min(len(expected), len(got)) and expected[i] == got[i]:
        i += 1
    lines = [
        "expected (%d bytes): %s" % (len(expected), hexs(expected)),
        "     got (%d bytes): %s" % (len(got), hexs(got)),
        " " * (len("     got (%d bytes): " % len(got)) + 3 * i) + "^^ first difference at byte %d" % i,
        "expected: " + describe_all(expected),
        "     got: " + describe_all(got),
    ]
    return "\n".join(lines)


def assert_bytes(got, expected, what="bytes from the client"):
    if bytes(got) != bytes(expected):
        raise AssertionError("%s differ\n%s" % (what, diff(expected, got)))


# ---- the broker -------------------------------------------------------------------


class FakeBroker:
    """Listens on a free loopback port (never 1883); accept() hands out scripted connections."""

    def __init__(self, timeout=DEFAULT_TIMEOUT):
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []

    def accept(self, timeout=10.0):
        """Wait for the next client connection (the child runtime may take a while to start)."""
        self.sock.settimeout(timeout)
        try:
            s, _ = self.sock.accept()
        except socket.timeout:
            raise AssertionError("no client connected to the fake broker within %.1f s" % timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = Conn(s, self.timeout)
        self.conns.append(c)
        return c

    def expect_no_connection(self, seconds):
        self.sock.settimeout(seconds)
        try:
            s, _ = self.sock.accept()
        except socket.timeout:
            return
        s.close()
        raise AssertionError("the client opened another connection")

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Conn:
    """One accepted client connection, read and written by the test script.

    Received bytes are buffered, with the arrival time of each chunk, so `last_time`
    (monotonic seconds) says when the last byte of the last packet read arrived."""

    def __init__(self, sock, timeout):
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray()
        self.chunks = []   # (cumulative end offset in the stream, arrival time)
        self.consumed = 0  # stream offset of buf[0]
        self.eof = False
        self.eof_time = None
        self.reset = False
        self.last_time = None
        self.sent_log = []
        self.received_log = bytearray()
        self.closed = False

    # -- writing ----------------------------------------------------------------
    def send(self, *parts):
        """Send the concatenation of parts in one write (one TCP segment on loopback)."""
        data = b"".join(bytes(p) for p in parts)
        self.sent_log.append(data)
        self.sock.sendall(data)
        return time.monotonic()

    def shutdown(self):
        """Half-close: the client sees EOF; we can still read what it sends."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        """Close with FIN (the client sees EOF)."""
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def abort(self):
        """Close with RST (the client sees ECONNRESET)."""
        if not self.closed:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close()

    # -- reading ----------------------------------------------------------------
    def _fill(self, deadline):
        """Receive one chunk; False at EOF/reset or when the deadline passes."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            data = b""
            self.reset = True
        now = time.monotonic()
        if not data:
            self.eof = True
            self.eof_time = now
            return False
        self.buf += data
        self.received_log += data
        self.chunks.append((self.consumed + len(self.buf), now))
        return True

    def _take(self, n):
        data = bytes(self.buf[:n])
        del self.buf[:n]
        last = self.consumed + n - 1
        self.consumed += n
        for end, t in self.chunks:
            if end > last:
                self.last_time = t
                break
        self.chunks = [c for c in self.chunks if c[0] > self.consumed]
        return data

    def _state(self):
        return "EOF" if self.eof else "no more bytes"

    def recv_exact(self, n, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise AssertionError("wanted %d bytes from the client, got %d before %s:\n    %s" % (
                    n, len(self.buf), "EOF" if self.eof else "the timeout",
                    describe_all(self.buf)))
        return self._take(n)

    def expect(self, expected, timeout=None):
        """Read exactly len(expected) bytes and assert they are equal (hex diff otherwise)."""
        expected = bytes(expected)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buf) < len(expected):
            if not self._fill(deadline):
                got = bytes(self.buf)
                raise AssertionError("client sent %d of the %d expected bytes before %s\n%s" % (
                    len(got), len(expected), "closing" if self.eof else "the timeout", diff(expected, got)))
        got = self._take(len(expected))
        assert_bytes(got, expected)
        return got

    def read_packet(self, timeout=None):
        """Read one whole packet and return its raw bytes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            hdr = parse_header(self.buf)
            if hdr is not None and len(self.buf) >= hdr[2] + hdr[1]:
                return self._take(hdr[2] + hdr[1])
            if not self._fill(deadline):
                raise AssertionError("no whole packet from the client before %s; buffered: %s" % (
                    "EOF" if self.eof else "the timeout", hexs(self.buf) or "(nothing)"))

    def read_packets(self, n, timeout=None):
        return [self.read_packet(timeout) for _ in range(n)]

    def expect_packet(self, expected, any_pid=False, timeout=None):
        """Read one packet and assert it equals expected.  any_pid=True accepts any
        non-zero packet id in place of expected's (ids the spec leaves to the client);
        returns the received packet's id (None for packets without one)."""
        got = self.read_packet(timeout)
        pid = pid_of(got)
        if any_pid and pid_of(expected) is not None and pid is not None and ptype(got) == ptype(expected):
            off = pid_offset(expected)
            if off == pid_offset(got):
                expected = expected[:off] + u16(pid) + expected[off + 2:]
            assert pid != 0, "client used packet id 0 [MQTT-2.3.1-1]: %s" % describe(got)
        assert_bytes(got, expected)
        return pid

    def expect_silence(self, seconds):
        """Assert the client sends nothing (and does not close) for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.buf:
                break
            if not self._fill(deadline) and self.eof:
                raise AssertionError("client closed the connection when it should have stayed silent")
        if self.buf:
            raise AssertionError("client should have stayed silent for %.1f s but sent:\n    %s" % (
                seconds, describe_all(self.buf)))

    def expect_closed(self, timeout=None, allow_disconnect=False):
        """Read until the client closes; return the whole packets it sent before.
        Asserts no DISCONNECT among them (a client closing on an error must not send
        one, so the broker publishes the will) unless allow_disconnect."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                raise AssertionError("client did not close the connection within %.1f s; it sent:\n    %s" % (
                    self.timeout if timeout is None else timeout, describe_all(self.buf)))
        pkts, rest = split_packets(self._take(len(self.buf)))
        if not allow_disconnect:
            for p in pkts:
                assert ptype(p) != 14, "client sent DISCONNECT before closing, but it must just close:\n    %s" % (
                    "\n    ".join(describe(q) for q in pkts))
        assert not rest, "client closed in the middle of a packet: %s" % hexs(rest)
        return pkts

    def expect_disconnect(self, timeout=None):
        """The orderly end: exactly DISCONNECT (e0 00), then the client closes [MQTT-3.14.4-1]."""
        self.expect(DISCONNECT, timeout)
        pkts = self.expect_closed(timeout)
        assert not pkts, "client sent packets after DISCONNECT [MQTT-3.14.4-2]:\n    %s" % (
            "\n    ".join(describe(p) for p in pkts))
