# MQTT 3.1.1 packet encoding and strict decoding.  No I/O and no protocol state:
# encoders write into a caller-supplied bytearray at an offset and return the new
# offset (so the hot publish path allocates nothing); decoders take a buffer and
# offsets and raise MalformedPacket on anything the spec calls malformed.

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
PUBREC = 0x50
PUBREL = 0x60
PUBCOMP = 0x70
SUBSCRIBE = 0x80
SUBACK = 0x90
UNSUBSCRIBE = 0xA0
UNSUBACK = 0xB0
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK",
    PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ", PINGRESP: "PINGRESP", DISCONNECT: "DISCONNECT",
}

MAX_REMAINING = 268435455  # 4 length bytes [MQTT-2.2.3]


class MQTTException(Exception):
    """Base of every MQTT error (umqtt.simple raises this class too)."""


class ProtocolError(MQTTException):
    """The broker broke MQTT 3.1.1; the connection must be closed [MQTT-4.8.0-1]."""


class MalformedPacket(ProtocolError):
    pass


def name(ptype):
    return NAMES.get(ptype & 0xF0, "type %d" % (ptype >> 4))


# ---- encoding ---------------------------------------------------------------


def put_header(buf, pos, first, remaining):
    """Fixed header: type/flags byte + variable-length remaining length [MQTT-2.2.3]."""
    buf[pos] = first
    pos += 1
    while True:
        b = remaining & 0x7F
        remaining >>= 7
        if remaining:
            buf[pos] = b | 0x80
            pos += 1
        else:
            buf[pos] = b
            return pos + 1


def header_size(remaining):
    return 2 if remaining < 128 else 3 if remaining < 16384 else 4 if remaining < 2097152 else 5


def put_u16(buf, pos, v):
    buf[pos] = v >> 8
    buf[pos + 1] = v & 0xFF
    return pos + 2


def put_str(buf, pos, s):
    """A length-prefixed string or binary field [MQTT-1.5.3]."""
    n = len(s)
    buf[pos] = n >> 8
    buf[pos + 1] = n & 0xFF
    pos += 2
    buf[pos : pos + n] = s
    return pos + n


def publish_size(topic, msg, qos):
    rem = 2 + len(topic) + len(msg) + (2 if qos else 0)
    if rem > MAX_REMAINING:
        raise ValueError("packet too large")
    return header_size(rem) + rem


def put_publish(buf, pos, topic, msg, qos, retain, dup, pid):
    """PUBLISH; dup must be False for QoS 0 [MQTT-3.3.1-2]; pid only for QoS>0 [MQTT-2.3.1-5]."""
    rem = 2 + len(topic) + len(msg)
    first = PUBLISH | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    if qos:
        rem += 2
    pos = put_header(buf, pos, first, rem)
    pos = put_str(buf, pos, topic)
    if qos:
        pos = put_u16(buf, pos, pid)
    n = len(msg)
    buf[pos : pos + n] = msg
    return pos + n


def put_ack(buf, pos, ptype, pid):
    """PUBACK/PUBREC/PUBREL/PUBCOMP; PUBREL carries flags 0b0010 [MQTT-3.6.1-1]."""
    buf[pos] = ptype | 2 if ptype == PUBREL else ptype
    buf[pos + 1] = 2
    buf[pos + 2] = pid >> 8
    buf[pos + 3] = pid & 0xFF
    return pos + 4


def connect_size(client_id, will, user, password):
    rem = 10 + 2 + len(client_id)
    if will:
        rem += 4 + len(will[0]) + len(will[1])
    if user is not None:
        rem += 2 + len(user)
        if password is not None:
            rem += 2 + len(password)
    return header_size(rem) + rem, rem


def put_connect(buf, pos, client_id, clean, keepalive, will, user, password):
    """CONNECT [MQTT-3.1]; will = (topic, msg, qos, retain) or None.  A password is
    only sent with a user name [MQTT-3.1.2-22]."""
    _, rem = connect_size(client_id, will, user, password)
    flags = 2 if clean else 0
    if will:
        flags |= 4 | (will[2] << 3) | (0x20 if will[3] else 0)
    if user is not None:
        flags |= 0x80
        if password is not None:
            flags |= 0x40
    pos = put_header(buf, pos, CONNECT, rem)
    pos = put_str(buf, pos, b"MQTT")
    buf[pos] = 4  # protocol level 3.1.1
    buf[pos + 1] = flags
    pos = put_u16(buf, pos + 2, keepalive)
    pos = put_str(buf, pos, client_id)
    if will:
        pos = put_str(buf, pos, will[0])
        pos = put_str(buf, pos, will[1])
    if user is not None:
        pos = put_str(buf, pos, user)
        if password is not None:
            pos = put_str(buf, pos, password)
    return pos


def subscribe_size(topics):
    rem = 2
    for t, _ in topics:
        rem += 3 + len(t)
    return header_size(rem) + rem, rem


def put_subscribe(buf, pos, pid, topics):
    """SUBSCRIBE with flags 0b0010 [MQTT-3.8.1-1]; topics = [(filter, qos), ...]."""
    _, rem = subscribe_size(topics)
    pos = put_header(buf, pos, SUBSCRIBE | 2, rem)
    pos = put_u16(buf, pos, pid)
    for t, q in topics:
        pos = put_str(buf, pos, t)
        buf[pos] = q
        pos += 1
    return pos


def put_unsubscribe(buf, pos, pid, topics):
    """UNSUBSCRIBE with flags 0b0010 [MQTT-3.10.1-1]."""
    rem = 2
    for t in topics:
        rem += 2 + len(t)
    pos = put_header(buf, pos, UNSUBSCRIBE | 2, rem)
    pos = put_u16(buf, pos, pid)
    for t in topics:
        pos = put_str(buf, pos, t)
    return pos


def unsubscribe_size(topics):
    rem = 2
    for t in topics:
        rem += 2 + len(t)
    return header_size(rem) + rem


# ---- decoding ---------------------------------------------------------------


def get_header(buf, pos, end):
    """Decode a fixed header at buf[pos:end].

    Returns (first_byte, remaining_length, header_length), or None when more
    bytes are needed.  A fifth length byte is malformed [MQTT-2.2.3]."""
    mult = 1
    rem = 0
    i = pos + 1
    while True:
        if i >= end:
            return None
        b = buf[i]
        rem += (b & 0x7F) * mult
        i += 1
        if not b & 0x80:
            return buf[pos], rem, i - pos
        mult <<= 7
        if i - pos > 4:
            raise MalformedPacket("remaining length longer than 4 bytes")


def get_u16(buf, pos):
    return (buf[pos] << 8) | buf[pos + 1]


def check_utf8(b, what):
    """Well-formed UTF-8 without U+0000 or surrogates [MQTT-1.5.3-1/2]."""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        i += 1
        if c < 0x80:
            if c == 0:
                raise MalformedPacket(what + " contains U+0000")
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            k = 1
        elif 0xE0 <= c <= 0xEF:
            k = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F  # U+D800..U+DFFF are not allowed
        elif 0xF0 <= c <= 0xF4:
            k = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            raise MalformedPacket(what + " is not valid UTF-8")
        if i + k > n or not lo <= b[i] <= hi:
            raise MalformedPacket(what + " is not valid UTF-8")
        for j in range(i + 1, i + k):
            if not 0x80 <= b[j] <= 0xBF:
                raise MalformedPacket(what + " is not valid UTF-8")
        i += k
