# MQTT 3.1.1 packet encoding and strict decoding.  No I/O and no protocol state.
# The hot encoder (PUBLISH) writes into a caller-supplied bytearray at an offset and
# returns the new offset, so the publish path allocates nothing; the rare packets
# (CONNECT, SUBSCRIBE, UNSUBSCRIBE) are built as a new bytearray by one generic
# encoder.  Decoding helpers raise MalformedPacket on anything the spec calls malformed.
# Two layouts are so small that the session handles them inline (no call, no tuple per
# packet): the 4-byte acks (Session._ack) and the fixed header of received packets.
#
# Packet types are const(): MicroPython folds them into the bytecode at compile time
# (an underscore name then costs nothing), so each module that needs a packet type
# keeps its own copy of the few it uses.  Values: [MQTT-2.2.1], Table 2.1.
from .compat import const

_CONNECT = const(0x10)
_PUBLISH = const(0x30)


class MQTTException(Exception):
    """Base of every MQTT error (umqtt.simple raises this class too)."""


class ProtocolError(MQTTException):
    """The broker broke MQTT 3.1.1; the connection must be closed [MQTT-4.8.0-1]."""


class MalformedPacket(ProtocolError):
    pass


class TopicError(ValueError):
    """A topic name or filter that MQTT 3.1.1 forbids, refused before anything is stored
    or sent (a ValueError: the caller's mistake, not the broker's or the link's)."""


def name(first):
    """The name of a packet type, from its first byte (for messages and traces)."""
    return ("type0 CONNECT CONNACK PUBLISH PUBACK PUBREC PUBREL PUBCOMP SUBSCRIBE SUBACK "
            "UNSUBSCRIBE UNSUBACK PINGREQ PINGRESP DISCONNECT type15").split()[first >> 4]


# ---- encoding ---------------------------------------------------------------


def put_header(buf, pos, first, rem):
    """Fixed header: type/flags byte, then the remaining length, 7 bits a byte, low
    first, bit 7 set while more follow (at most 4 bytes) [MQTT-2.2.3]."""
    buf[pos] = first
    while True:
        pos += 1
        if rem < 128:
            buf[pos] = rem
            return pos + 1
        buf[pos] = rem & 0x7F | 0x80
        rem >>= 7


def put_publish(buf, pos, topic, msg, qos, retain, dup, pid):
    """PUBLISH; dup must be False for QoS 0 [MQTT-3.3.1-2]; pid only for QoS>0
    [MQTT-2.3.1-5].  Needs at most len(topic) + len(msg) + 9 bytes of buf."""
    tl = len(topic)
    n = len(msg)
    pos = put_header(buf, pos, _PUBLISH | qos << 1 | (1 if retain else 0) | (8 if dup else 0),
                     tl + n + (4 if qos else 2))
    buf[pos] = tl >> 8  # topic: a length-prefixed string [MQTT-1.5.3]
    buf[pos + 1] = tl & 0xFF
    pos += 2
    buf[pos : pos + tl] = topic
    pos += tl
    if qos:
        buf[pos] = pid >> 8
        buf[pos + 1] = pid & 0xFF
        pos += 2
    buf[pos : pos + n] = msg
    return pos + n


def packet(first, fields):
    """A whole packet as a new bytearray, for the rare ones (CONNECT, SUBSCRIBE,
    UNSUBSCRIBE).  Each field is an int (one byte) or bytes (a string or binary
    field: 2-byte length, then the bytes [MQTT-1.5.3])."""
    body = bytearray()
    for f in fields:
        if isinstance(f, int):
            body.append(f)
        else:
            if len(f) > 65535:  # MicroPython's bytearray would wrap the length silently
                raise ValueError("field longer than 65535 bytes")
            body.append(len(f) >> 8)
            body.append(len(f) & 0xFF)
            body += f
    h = bytearray(5)
    return h[: put_header(h, 0, first, len(body))] + body


def connect_packet(client_id, clean, keepalive, will, user, password):
    """CONNECT [MQTT-3.1]; will = (topic, msg, qos, retain) or None.  A password is
    only sent with a user name [MQTT-3.1.2-22]."""
    flags = 2 if clean else 0
    f = [b"MQTT", 4, 0, keepalive >> 8, keepalive & 0xFF, client_id]  # protocol level 4: 3.1.1
    if will:
        flags |= 4 | will[2] << 3 | (0x20 if will[3] else 0)
        f += will[:2]
    if user is not None:
        flags |= 0x80
        f.append(user)
        if password is not None:
            flags |= 0x40
            f.append(password)
    f[2] = flags
    return packet(_CONNECT, f)


# ---- decoding ---------------------------------------------------------------


def utf8_error(b):
    """Why b is no MQTT string, or None: it must be well-formed UTF-8 without U+0000 or
    an encoded surrogate [MQTT-1.5.3-1/2] (MicroPython's own decoder is more lenient)."""
    if b"\0" in b:
        return "contains U+0000"
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        i += 1
        if c < 0x80:
            continue
        # k continuation bytes; the first must lie in lo..hi (no overlong forms, no
        # surrogates U+D800..U+DFFF, nothing above U+10FFFF), the others in 80..BF
        k = (c > 0xC1) + (c > 0xDF) + (c > 0xEF) if c < 0xF5 else 0
        lo = 0xA0 if c == 0xE0 else 0x90 if c == 0xF0 else 0x80
        hi = 0x9F if c == 0xED else 0x8F if c == 0xF4 else 0xBF
        if not (k and i + k <= n and lo <= b[i] <= hi):
            return "is not valid UTF-8"
        for j in range(i + 1, i + k):
            if not 0x80 <= b[j] <= 0xBF:
                return "is not valid UTF-8"
        i += k


def check_topic(t, wild):
    """t (str or bytes) as bytes, if it is a valid topic name (wild=False) or filter
    (wild=True); else TopicError, with the same message on every runtime.  Checked
    before anything is stored or sent: a broker drops the connection over a bad topic,
    and a stored one would be resent on every reconnect."""
    if isinstance(t, str):
        # surrogatepass: CPython encodes a lone surrogate as MicroPython does, and
        # utf8_error refuses it on both
        t = t.encode("utf-8", "surrogatepass")
    n = len(t)
    why = None
    if not n:
        why = "is empty"  # [MQTT-4.7.3-1]
    elif n > 65535:
        why = "is longer than 65535 bytes"  # [MQTT-1.5.3]
    elif not wild:
        if b"+" in t or b"#" in t:
            why = "contains a wildcard"  # [MQTT-3.3.2-2]
    else:
        for i in range(n):
            c = t[i]
            if c == 0x23 or c == 0x2B:  # "#", "+": a whole level, "#" last [MQTT-4.7.1-2/3]
                if i and t[i - 1] != 0x2F or i < n - 1 and (c == 0x23 or t[i + 1] != 0x2F):
                    why = "has + or # inside a level, or # not last"
                    break
    if why is None and (b"\0" in t or max(t) > 0x7F):
        why = utf8_error(t)
    if why:
        raise TopicError("topic %s %s: %r" % ("filter" if wild else "name", why, t[:64]))
    return t
