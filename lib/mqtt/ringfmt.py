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


def parse_sector_header(h):
    """(generation, erase count, base seq) of a valid header; None for an erased one;
    else a string saying what it is: a ring of another format version, a damaged header
    (magic within one bit, CRC wrong: a flipped bit - its records are still good), or
    a bad one (torn erase, retired sector, foreign data)."""
    if h[:SEC_HDR] == FF[:SEC_HDR]:
        return None
    ok = struct.unpack_from("<I", h, 16)[0] == crc32(h[:16])
    if h[:4] == MAGIC and ok:
        return struct.unpack_from("<III", h, 4)
    if ok and h[:2] == b"RQ" and h[3] == 0xA5:
        return "ring format version %d" % h[2]
    diff = 0
    for i in range(4):
        x = h[i] ^ MAGIC[i]
        while x:
            diff += x & 1
            x >>= 1
    return "damaged header" if diff <= 1 else "bad header (torn erase or foreign data)"


def ours(h):
    """An invalid header that is still a ring's: retired (magic cleared before an
    erase) or torn while being programmed (each magic byte still has its 1 bits)."""
    for i in range(4):
        if h[i] and h[i] & MAGIC[i] != MAGIC[i]:
            return False
    return True


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


def parse_pub(body):
    """(order, topic, payload) of a PUB body (bytes-like)."""
    tl = body[4] | body[5] << 8
    return struct.unpack_from("<I", body, 0)[0], body[6:6 + tl], body[6 + tl:]


def blank(read, buf, a, b):
    """True if bytes a..b of a sector read as erased flash (all 0xFF).
    read(pos, mv) fills mv from sector offset pos; buf: scratch bytearray."""
    mv = memoryview(buf)
    while a < b:
        k = min(b - a, len(buf))
        read(a, mv[:k])
        if (buf if k == len(buf) else buf[:k]) != FF[:k]:
            return False
        a += k
    return True


def scan(read, buf, visit):
    """Walk the records of one sector.  read(pos, mv) fills mv from sector offset pos;
    buf: a scratch bytearray (at least 24 bytes, a multiple of 4: RAM stays small).
    visit(pos, type, flags, n, seq, pid, marks) for each CRC-valid record (marks:
    M_RELEASED | M_DONE), and visit(pos, 0, ...) at the start of each run of torn or
    corrupt bytes (resynchronising on the next 4-byte boundary).  Returns (end,
    clean): end is just after the last valid record, clean says that only erased
    bytes follow it (appending may continue there; never after garbage)."""
    pos = end = SEC_HDR
    bad = False
    mv = memoryview(buf)
    hb = bytearray(REC_HDR + 4)
    while pos + REC_HDR + 4 <= SECTOR:
        read(pos, hb)
        if hb == FF[:REC_HDR + 4] and blank(read, buf, pos, SECTOR):
            break  # erased from here on
        rtype, flags, n, seq, pid = struct.unpack_from("<BBHIH", hb, 0)
        size = rec_size(n)
        ok = PUB <= rtype <= UNHOLD and pos + size <= SECTOR
        if ok:
            crc = crc32(memoryview(hb)[:MARKS])
            a = pos + REC_HDR
            e = a + n
            while a < e:
                k = min(e - a, len(buf))
                read(a, mv[:k])
                crc = crc32(mv[:k], crc)
                a += k
            read(e, mv[:4])
            ok = struct.unpack_from("<I", buf, 0)[0] == crc
        if ok:
            bad = False
            m = (M_RELEASED if hb[MARKS] == 0 and hb[MARKS + 1] == 0 else 0) | \
                (M_DONE if hb[MARKS + 2] == 0 and hb[MARKS + 3] == 0 else 0)
            visit(pos, rtype, flags, n, seq, pid, m)
            pos += size
            end = pos
        else:
            if not bad:
                visit(pos, 0, 0, 0, 0, 0, 0)
            bad = True
            pos += 4
    return end, blank(read, buf, end, SECTOR)
