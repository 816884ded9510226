# Reading the flash ring back: the format's readers (shared with tools/ringdump.py) and
# the recovery that rebuilds the in-flight index at start-up.  Runs once per boot: the
# ring imports it, recovers, and unloads it (compat.unload) so its code does not sit
# in a small heap for the months the device then runs.
import struct
from binascii import crc32

from .medium import RingError
from .ringfmt import (SECTOR, SEC_HDR, REC_HDR, MARKS, MAGIC, PUB, REL, DONE, IN_ADD, IN_DEL, CLEAR, HOLD,
                      UNHOLD, F_RETAIN, F_RELEASED, F_HELD, M_RELEASED, M_DONE, FF, rec_size)
from .compat import const

_AWAIT_PUBACK = const(1)
_AWAIT_PUBREC = const(2)
_AWAIT_PUBCOMP = const(3)


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


def recover(self):
    """Rebuild ring `self` (a ring.Ring, its index attached) from its medium."""
    if getattr(self.m, "note", None):
        self.log and self.log("ring: " + self.m.note)  # the one warning: geometry kept
    m = self.m
    hdr = bytearray(SEC_HDR)
    self._scratch = bytearray(64)  # recovery reads in small pieces: no sector-sized buffer
    order = []  # (base seq, generation, sector): -1 free, 0 bad, else in use
    valid = foreign = 0
    for s in range(self.nsec):
        m.read(s * SECTOR, hdr)
        h = parse_sector_header(hdr)
        if h is None:
            order.append((-2, -1, s))  # free
        elif not isinstance(h, str):
            valid += 1
            self.erases[s] = h[1]
            order.append((h[2], h[0], s))
        elif h[0] == "r":
            raise RingError("%s sector %d holds %s; this code reads version 2 (left untouched)" % (
                m.name, s, h))
        else:
            first = -1
            if h[0] == "d":  # a flipped bit in the header: order it by its records
                self._s = s
                self._first = -1
                scan(lambda p, mv: _read(self, p, mv), self._scratch, lambda *a: _first_seq(self, *a))
                first = self._first
            if first >= 0:
                valid += 1
                self._note("sector %d: damaged header, records kept" % s)
                order.append((first, 1, s))
            else:
                foreign += not ours(hdr)
                order.append((-1, 0, s))
    if foreign and not valid and not m.ours:
        raise RingError("%s is not a ring file (no valid sector header)" % m.name)
    bad = [s for _, g, s in order if g == 0]
    if bad:  # noted only now: a file that is not a ring gets the one error above instead
        self._note("sector(s) %s: bad header (torn erase, retired or foreign data), erased" % bad)
    if hasattr(m, "extend"):
        m.extend()  # a short file gets its missing sectors, erased
    order.sort()  # sectors are opened in record sequence order
    self._last = 0  # highest record sequence replayed
    for base, g, s in order:
        if g <= 0:
            # a free sector needs no erase (no wear) if it reads as all 0xFF
            self._s = s
            if not (g < 0 and blank(lambda p, mv: _read(self, p, mv), self._scratch, 0, SECTOR)):
                self._erase(s)
            self.free.append(s)
            continue
        self._gen = max(self._gen, g)
        self.used.append(s)
        self._s, self._base = s, base
        end, clean = scan(lambda p, mv: _read(self, p, mv), self._scratch, lambda *a: _visit(self, *a))
        # never append after garbage; on append-only media never before the end
        self.fill[s] = max(end, (m.written(s) + 3) & ~3) if clean else SECTOR
    self._scratch = None
    self._seq_rec = max(self._seq_rec, self._last)
    st = self.st
    self._cached = 0
    for i in range(st.capacity):
        if st.pid[i]:
            st.topic[i] = st.msg[i] = None  # loaded from the medium when sent
    if self.skipped:
        self._sync()

def _read(self, pos, mv):
    self.m.read(self._s * SECTOR + pos, mv)

def _first_seq(self, pos, rtype, flags, n, seq, pid, marks):
    if rtype and self._first < 0:
        self._first = seq

def _visit(self, pos, rtype, flags, n, seq, pid, marks):
    s = self._s
    if not rtype:
        self._note("sector %d offset %d: torn or corrupt record skipped" % (s, pos))
        return
    if seq < self._base or seq <= self._last:
        self._note("sector %d offset %d: stale record (seq %d) skipped" % (s, pos, seq))
        return
    self._last = seq
    off = s * SECTOR + pos
    st = self.st
    order = 0
    if n >= 4:  # PUB, HOLD, UNHOLD: the acceptance order leads the body
        b = self._scratch
        _read(self, pos + REC_HDR, memoryview(b)[:4])
        order = struct.unpack_from("<I", b, 0)[0]
    if rtype == PUB:
        if n < 6:
            self._note("record seq %d: PUB body too short, skipped" % seq)
            return
        q = flags & 3
        if flags & F_HELD:
            if not marks & M_DONE:
                st.held[order] = [q, bool(flags & F_RETAIN), None, None]
                self.heldloc[order] = off
            return
        st._last_pid = pid
        i = st.find(pid)
        if marks & M_DONE:  # completed: its mark says so
            if i >= 0:
                st.drop(i)
            return
        state = _AWAIT_PUBCOMP if marks & M_RELEASED or flags & F_RELEASED else \
            (_AWAIT_PUBACK if q == 1 else _AWAIT_PUBREC)
        if i >= 0:
            st.drop(i)  # a later copy of the same message
        elif st.count >= st.capacity:
            self._note("more messages than capacity %d: index grown" % st.capacity)
            self.loc.extend([0] * 16)
            st.grow(16)
        i = st.put(st.find(0), pid, q, bool(flags & F_RETAIN), None, None, order, state)
        self.loc[i] = off
    elif rtype == REL or rtype == DONE:
        i = st.find(pid)
        if i >= 0:
            if rtype == REL:
                st.state[i] = _AWAIT_PUBCOMP
            else:
                st.drop(i)
    elif rtype == IN_ADD:
        if marks & M_DONE:
            return
        if pid not in self.inloc:
            st.inbound.append(pid)
        self.inloc[pid] = off
    elif rtype == IN_DEL:
        if pid in self.inloc:
            del self.inloc[pid]
            st.inbound.remove(pid)
    elif rtype == HOLD:
        i = st.find(pid)
        if i >= 0 and st.seq[i] == order:
            st.held[order] = [st.qos[i], st.retain[i], None, None]
            self.heldloc[order] = self.loc[i]
            st.drop(i)
    elif rtype == UNHOLD:
        if order in st.held:
            del st.held[order]
            del self.heldloc[order]
    elif rtype == CLEAR:
        for i in range(st.capacity):
            if st.pid[i]:
                st.drop(i)
        st.inbound = []
        st.held = {}
        self.inloc = {}
        self.heldloc = {}
