# The flash ring's on-medium format (docs/ring-format.md): constants and pure
# functions, no I/O.  Shared by the ring (ring.py) and tools/ringdump.py, so the
# format is written down once.
#   - The ring is N sectors of 4096 bytes (the ESP32 flash erase unit).  A sector
#     starts with a 20-byte header: magic, generation, erase count, base sequence, CRC.
#   - Records follow back to back, 4-byte aligned, never spanning sectors: type, flags,
#     body length, sequence, packet id, two marks (outside the CRC), body, CRC-32.
#   - Marks start erased (0xFFFF) and are cleared in place (a NOR program only clears
#     bits); one counts only when both its bytes are 0x00.
import struct
from binascii import crc32

from .compat import const

SECTOR = const(4096)
SEC_HDR = const(20)  # magic 4, generation u32, erase count u32, base seq u32, crc u32
REC_HDR = const(14)  # type u8, flags u8, body length u16, seq u32, pid u16, marks 4 (no CRC)
MARKS = const(10)    # offset of the marks in a record: released u16, done u16
VERSION = const(2)
MAGIC = b"RQ\x02\xa5"

# record types
PUB = const(1)
REL = const(2)
DONE = const(3)
IN_ADD = const(4)
IN_DEL = const(5)
CLEAR = const(6)
HOLD = const(7)    # body: the message's acceptance order u32 - set aside (poison)
UNHOLD = const(8)  # body: acceptance order u32 - a held message released or dropped
TYPES = {PUB: "PUB", REL: "REL", DONE: "DONE", IN_ADD: "IN_ADD", IN_DEL: "IN_DEL", CLEAR: "CLEAR",
         HOLD: "HOLD", UNHOLD: "UNHOLD"}

# PUB flags: bits 0-1 QoS, then
F_RETAIN = const(4)
F_RELEASED = const(8)  # a PUB copied while its PUBREL was owed
F_HELD = const(16)     # a PUB copied while it was held

# marks as scan() reports them
M_RELEASED = const(1)
M_DONE = const(2)

FF = b"\xff" * 256


def rec_size(body):
    """Bytes a record with a body of `body` bytes takes (CRC included, 4-byte aligned)."""
    return (body + REC_HDR + 7) & ~3


def record_bytes(topic_len, payload_len):
    """Ring bytes one message takes (its PUB record; its DONE adds rec_size(0))."""
    return rec_size(6 + topic_len + payload_len)


def sector_header(gen, erases, base):
    h = struct.pack("<4sIII", MAGIC, gen, erases, base)
    return h + struct.pack("<I", crc32(h))


def pub_body(b, order, topic, msg):
    """Write a PUB body (acceptance order u32, topic length u16, topic, payload) into
    b after the record header; returns its length."""
    tl = len(topic)
    struct.pack_into("<IH", b, REC_HDR, order, tl)
    p = REC_HDR + 6 + tl
    b[REC_HDR + 6:p] = topic
    n = p + len(msg)
    b[p:n] = msg
    return n - REC_HDR


def seal(b, mv, rtype, flags, n, seq, pid):
    """Finish the record whose body (n bytes) is already in b after the header:
    header with erased marks, CRC, 0xFF padding.  Returns the record's size."""
    struct.pack_into("<BBHIHi", b, 0, rtype, flags, n, seq, pid, -1)  # marks: 0xFF
    end = REC_HDR + n
    # the CRC covers the header without the marks, and the body
    struct.pack_into("<I", b, end, crc32(mv[REC_HDR:end], crc32(mv[:MARKS])))
    size = rec_size(n)
    for i in range(end + 4, size):
        b[i] = 0xFF
    return size


