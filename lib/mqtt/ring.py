# Flash ring store: the in-flight store kept in a preallocated file, so accepted QoS
# 1/2 messages survive reboot, kill -9 and power cuts.  Format: docs/ring-format.md.
#   - The file is N sectors of 4096 bytes (the ESP32 flash erase unit).  A sector
#     starts with a 20-byte header: magic, generation, erase count, base sequence, CRC.
#   - Records are appended in sequence: PUB (a whole message), REL (PUBREC seen, PUBREL
#     owed), DONE (acknowledged), IN_ADD / IN_DEL (inbound QoS 2 id stored / released),
#     CLEAR (session discarded).  Each has a sequence number and a CRC and never spans
#     sectors.  State changes never rewrite a payload.
#   - PUB and IN_ADD records also carry two "marks" outside the CRC, written in place
#     (clearing bits, as flash allows without an erase): released and done.  A mark
#     counts only when both its bytes are 0x00, and a DONE/REL record is written too, so
#     one flipped bit can neither resurrect a completed message nor lose a pending one.
#   - When the ring is full the oldest sector is reclaimed: its live records are copied
#     to the head (durably) first, then it is erased.  One sector stays free for that.
# Recovery replays every CRC-valid record newer than what it has seen, in (generation,
# offset) order, resynchronising after a corrupt one; torn and corrupt records are
# skipped and counted.  Sectors are reclaimed oldest first, so a DONE never disappears
# while its PUB survives: a completed message is never resurrected.
import struct
from binascii import crc32

from .store import MemoryStore, StoreFull
from .compat import const, MICROPYTHON

# The format (docs/ring-format.md).  const(): folded into the code; the names without
# an underscore stay importable (tools/ringdump.py reads files with them).
SECTOR = const(4096)
SEC_HDR = const(20)  # magic 4, generation u32, erase count u32, base seq u32, crc u32
REC_HDR = const(14)  # type u8, flags u8, body length u16, seq u32, pid u16, marks 4 (no CRC)
MARKS = const(10)    # offset of the marks in a record: released u16, done u16
VERSION = const(2)
MAGIC = b"RQ\x02\xa5"

# record types
PUB = const(1)
_REL = const(2)
_DONE = const(3)
_IN_ADD = const(4)
_IN_DEL = const(5)
_CLEAR = const(6)
TYPES = {PUB: "PUB", _REL: "REL", _DONE: "DONE", _IN_ADD: "IN_ADD", _IN_DEL: "IN_DEL", _CLEAR: "CLEAR"}

# PUB flags: bits 0-1 QoS, then
F_RETAIN = const(4)
F_RELEASED = const(8)  # a PUB copied while its PUBREL was owed

# sender states (store.py)
_AWAIT_PUBACK = const(1)
_AWAIT_PUBREC = const(2)
_AWAIT_PUBCOMP = const(3)

_FF = b"\xff" * 256


class RingError(Exception):
    """The file cannot be used as a ring (not ours, or unwritable).  Never raised for
    torn or corrupt records: those are skipped and counted."""


def rec_size(body):
    """Bytes a record with a body of `body` bytes takes (CRC included, 4-byte aligned)."""
    return (body + REC_HDR + 7) & ~3


def record_bytes(topic_len, payload_len):
    """Ring bytes one message takes (its PUB record; its DONE adds rec_size(0))."""
    return rec_size(6 + topic_len + payload_len)


class RingStore(MemoryStore):
    persistent = True

    def __init__(self, path, size=32768, capacity=64, sync_every=1, cache=16, log=None, inbound=256):
        """path: the ring file (created and preallocated when missing).
        size: bytes, rounded down to whole 4096-byte sectors (at least 3).
        capacity: most messages held at once (RAM index slots).
        sync_every: 1 = every change is on the medium before the call returns;
          N > 1 = group commit: a power cut can lose the last N-1 changes (accepted
          messages among them); commit() syncs, and the client calls it before idling.
        cache: payloads kept in RAM; the others are read back from the file when sent.
        log: callable(str) for recovery notes (skipped records and why)."""
        MemoryStore.__init__(self, capacity)
        self.nsec = n = size // SECTOR
        if n < 3:
            raise ValueError("ring size must be at least 3 sectors (12288 bytes)")
        self.path = path
        self.size = n * SECTOR
        self.sync_every = sync_every
        self.cache = cache
        self.log = log
        self.loc = [0] * capacity  # file offset of each slot's PUB record
        self.inloc = {}            # inbound pid -> offset of its IN_ADD record
        self.inbound_max = inbound  # inbound QoS 2 ids held at once (see in_room)
        self.erases = [0] * n
        self.fill = [0] * n        # next write offset inside the sector
        self.used = []             # sectors in generation order (oldest first)
        self.free = []
        self.reasons = []
        self.skipped = 0           # corrupt or torn records/sectors found at recovery
        self.bytes_written = self.records_written = self.syncs = 0
        self._unsynced = self._cached = self._seq_rec = self._gen = 0
        self._buf = bytearray(256)  # grows to the largest record written
        self._mv = memoryview(self._buf)
        import os

        try:
            length = os.stat(path)[6]
        except OSError:
            length = -1
        try:
            self._f = open(path, "r+b" if length >= 0 else "w+b")
        except OSError as e:
            raise RingError("cannot open ring file %s: %s" % (path, e))
        if length > 0:
            if length != self.size:
                self._note("file is %d bytes, not %d: %s" % (length, self.size, "missing sectors reformatted"
                                                              if length < self.size else "the rest is ignored"))
            self._recover(length)
        else:
            for s in range(n):
                self._erase(s, False)
            self._sync()
            self.free = list(range(n))

    # ---- file -------------------------------------------------------------------
    def close(self):
        if self._f:
            self.commit()
            self._f.close()
            self._f = None

    def _note(self, why):
        self.skipped += 1
        if len(self.reasons) < 32:
            self.reasons.append(why)
        if self.log:
            self.log("ring: " + why)

    def _write(self, off, buf, n):
        f = self._f
        f.seek(off)
        if MICROPYTHON:
            f.write(buf, n)
        else:
            f.write(memoryview(buf)[:n])
        self.bytes_written += n

    def _sync(self):
        f = self._f
        f.flush()  # MicroPython: fsync (unix port) / littlefs sync (ESP32)
        if not MICROPYTHON:
            import os

            os.fsync(f.fileno())
        self.syncs += 1
        self._unsynced = 0

    def _changed(self, lazy=False):
        """A change was written.  Lazy changes ride on the next sync: losing one to a
        power cut only repeats a step the broker tolerates (see remove/set_state)."""
        self._unsynced += 1
        if not lazy and self._unsynced >= self.sync_every:
            self._sync()

    def commit(self):
        """Make every change so far durable (group commit)."""
        if self._unsynced:
            self._sync()

    def _erase(self, s, count=True):
        """'Erase' a sector: all 0xFF, as erased flash."""
        f = self._f
        f.seek(s * SECTOR)
        for _ in range(SECTOR // 256):
            f.write(_FF)
        self.bytes_written += SECTOR
        if count:
            self.erases[s] += 1
        self.fill[s] = 0

    def _open_sector(self, s):
        self._gen += 1
        h = struct.pack("<4sIII", MAGIC, self._gen, self.erases[s], self._seq_rec + 1)
        self._write(s * SECTOR, h + struct.pack("<I", crc32(h)), SEC_HDR)
        self.fill[s] = SEC_HDR
        self.used.append(s)

    # ---- appending ------------------------------------------------------------
    def _append(self, rtype, flags, pid, topic=None, msg=None, order=0, copy_from=None):
        """Write one record at the head and return its file offset.  A PUB body is
        order u32 (acceptance order, kept by copies), topic length u16, topic, payload;
        copy_from=(offset, body length) re-appends an existing record's body."""
        if copy_from:
            n = copy_from[1]
        elif rtype == PUB:
            n = 6 + len(topic) + len(msg)
        else:
            n = 0
        size = rec_size(n)
        if size > SECTOR - SEC_HDR:
            raise ValueError("message too large for a ring record (%d bytes, max %d)" % (size, SECTOR - SEC_HDR))
        off = self._room(size)  # may reclaim, which appends copies: fill the buffer after
        self._seq_rec += 1
        if size > len(self._buf):
            self._buf = bytearray(size)
            self._mv = memoryview(self._buf)
        b = self._buf
        mv = self._mv
        end = REC_HDR + n
        if copy_from:
            self._f.seek(copy_from[0] + REC_HDR)
            self._f.readinto(mv[REC_HDR:end])
        elif n:
            tl = len(topic)
            struct.pack_into("<IH", b, REC_HDR, order, tl)
            p = REC_HDR + 6 + tl
            b[REC_HDR + 6 : p] = topic
            b[p:end] = msg
        struct.pack_into("<BBHIHi", b, 0, rtype, flags, n, self._seq_rec, pid, -1)  # marks: 0xFF
        # the CRC covers the header without the marks, and the body
        struct.pack_into("<I", b, end, crc32(mv[REC_HDR:end], crc32(mv[:MARKS])))
        for i in range(end + 4, size):
            b[i] = 0xFF
        self._write(off, b, size)
        self.fill[off // SECTOR] += size
        self.records_written += 1
        return off

    def _mark(self, off, which):
        """Set a mark (0: released, 2: done) of the record at off, in place."""
        self._write(off + MARKS + which, b"\0\0", 2)

    def _room(self, size):
        """Offset where `size` bytes fit at the head, reclaiming old sectors if needed.
        One free sector is kept as the spare that reclaiming copies live records into."""
        for _ in range(2 * self.nsec + 2):
            if self.used:
                h = self.used[-1]
                if self.fill[h] + size <= SECTOR:
                    return h * SECTOR + self.fill[h]
            if len(self.free) > 1:
                self._open_sector(self.free.pop(0))
            elif not self._reclaim():
                break
        raise StoreFull("flash ring full (%d bytes, %d messages)" % (self.size, self.count))

    def _reclaim(self):
        """Free the oldest sector; its live records move to the head first (into the
        spare sector if the head has no room).  False when nothing can be freed."""
        if len(self.used) < 2:
            return False
        t = self.used[0]
        lo = t * SECTOR
        live = []  # in acceptance order
        for i in self.ordered():
            if lo <= self.loc[i] < lo + SECTOR:
                live.append(i)
        inbound = []
        for p in self.inloc:
            if lo <= self.inloc[p] < lo + SECTOR:
                inbound.append(p)
        if live or inbound:
            need = len(inbound) * rec_size(0)
            for i in live:
                need += rec_size(self._read_hdr(self.loc[i])[2])
            if self.fill[self.used[-1]] + need > SECTOR:
                if not self.free:
                    return False
                self._open_sector(self.free.pop(0))
            for i in live:
                old = self.loc[i]
                hdr = self._read_hdr(old)
                flags = hdr[1] | (F_RELEASED if self.state[i] == _AWAIT_PUBCOMP else 0)
                self.loc[i] = self._append(PUB, flags, self.pid[i], copy_from=(old, hdr[2]))
            for p in inbound:
                self.inloc[p] = self._append(_IN_ADD, 0, p)
            self._sync()  # the copies must be durable before the originals go
        self.used.pop(0)
        self._erase(t)
        self._sync()
        self.free.append(t)
        return True

    def _read_hdr(self, off):
        """(type, flags, body length, seq, pid) of the record at off."""
        hb = bytearray(REC_HDR)
        self._f.seek(off)
        self._f.readinto(hb)
        return struct.unpack_from("<BBHIH", hb, 0)

    # ---- the store interface ------------------------------------------------------
    def add(self, pid, qos, retain, topic, msg):
        if self.count >= self.capacity:
            raise StoreFull("flash ring index full (%d messages)" % self.capacity)
        off = self._append(PUB, qos | (F_RETAIN if retain else 0), pid, topic, msg, self._seq + 1)
        self._changed()
        i = MemoryStore.add(self, pid, qos, retain, topic, msg)  # takes seq _seq + 1
        self.loc[i] = off
        if self._cached >= self.cache:
            self.topic[i] = self.msg[i] = None  # read back from the file when sent
        else:
            self._cached += 1
        return i

    def load(self, i):
        """Read slot i's topic and payload back from its PUB record."""
        off = self.loc[i]
        body = bytearray(self._read_hdr(off)[2])
        self._f.seek(off + REC_HDR)
        self._f.readinto(body)
        tl = body[4] | body[5] << 8
        self.topic[i] = bytes(body[6 : 6 + tl])
        self.msg[i] = m = bytes(body[6 + tl :])
        self._cached += 1
        return m

    def set_state(self, i, state):
        if state == _AWAIT_PUBCOMP and self.state[i] != _AWAIT_PUBCOMP:
            self._append(_REL, 0, self.pid[i])
            self._mark(self.loc[i], 0)
            # lazy: if lost, the PUBLISH is resent (DUP) instead of the PUBREL and the
            # broker, still holding it, answers PUBREC again: no duplicate delivery
            self._changed(True)
        elif state != _AWAIT_PUBCOMP and self.state[i] == _AWAIT_PUBCOMP:
            # the broker lost the session: restart the QoS 2 flow from a fresh PUB copy
            old = self.loc[i]
            self.loc[i] = self._append(PUB, self.qos[i] | (F_RETAIN if self.retain[i] else 0),
                                       self.pid[i], copy_from=(old, self._read_hdr(old)[2]))
            self._mark(old, 2)
            self._changed()
        self.state[i] = state

    def remove(self, i):
        self._append(_DONE, 0, self.pid[i])
        self._mark(self.loc[i], 2)
        # QoS 1: lazy - a power cut before the next sync can only resend an acknowledged
        # message once more, which QoS 1 allows.  QoS 2: durable, or a resend after a
        # power cut would be a new (duplicate) message to the broker.
        self._changed(self.qos[i] == 1)
        if self.msg[i] is not None:
            self._cached -= 1
        MemoryStore.remove(self, i)

    def in_room(self):
        """Room for another inbound QoS 2 id: at most `inbound` of them (bounded RAM),
        and ring space for its record (reclaiming old sectors if needed).  A broker
        may send thousands of QoS 2 PUBLISH before the first PUBREL; when this says
        no, the session drops the link unacknowledged and the broker resends later."""
        if len(self.inbound) >= self.inbound_max:
            return False
        try:
            self._room(rec_size(0))
            return True
        except StoreFull:
            return False

    def in_add(self, pid):
        self.inloc[pid] = self._append(_IN_ADD, 0, pid)
        self._changed()
        MemoryStore.in_add(self, pid)

    def in_remove(self, pid):
        self._append(_IN_DEL, 0, pid)
        off = self.inloc.pop(pid, None)
        if off is not None:
            self._mark(off, 2)
        self._changed()
        MemoryStore.in_remove(self, pid)

    def clear_inbound(self):
        for pid in list(self.inloc):
            self.in_remove(pid)

    def discard_session(self):
        """clean_session=1 with a flash store: the broker forgets our ids and the inbound
        ids go, but accepted messages are never discarded - they are re-sent after the
        CONNACK as new publications, as when a broker lost the session."""
        self.clear_inbound()

    def clear(self):
        """Discard the whole session, messages included."""
        for i in range(self.capacity):
            if self.pid[i]:
                self._mark(self.loc[i], 2)
        for off in self.inloc.values():
            self._mark(off, 2)
        self._append(_CLEAR, 0, 0)
        self._changed()
        MemoryStore.clear(self)
        self.inloc = {}
        self._cached = 0

    # ---- recovery -------------------------------------------------------------------
    def _recover(self, length):
        f = self._f
        hdr = bytearray(SEC_HDR)
        order = []
        foreign = 0
        for s in range(self.nsec):
            if (s + 1) * SECTOR > length:
                order.append((0, 0, s))  # missing from the file
                continue
            f.seek(s * SECTOR)
            f.readinto(hdr)
            if hdr[:4] == MAGIC and struct.unpack_from("<I", hdr, 16)[0] == crc32(memoryview(hdr)[:16]):
                g, e, base = struct.unpack_from("<III", hdr, 4)
                self.erases[s] = e
                order.append((g, base, s))
            elif hdr == _FF[:SEC_HDR]:
                order.append((-1, 0, s))  # free
            else:
                foreign += 1
                self._note("sector %d: bad header (torn erase or foreign data)" % s)
                order.append((0, 0, s))
        if foreign == self.nsec:
            raise RingError("%s is not a ring file (no valid sector header)" % self.path)
        order.sort()
        self._last = 0  # highest record sequence replayed
        for g, base, s in order:
            if g <= 0:
                # a free sector needs no erase (no wear) if it reads as all 0xFF
                if not (g < 0 and self._blank(s * SECTOR, SECTOR)):
                    self._erase(s, (s + 1) * SECTOR <= length)
                self.free.append(s)
                continue
            self._gen = max(self._gen, g)
            self.used.append(s)
            self.fill[s] = self._scan_sector(s, base)
        self._seq_rec = max(self._seq_rec, self._last)
        self._cached = 0
        for i in range(self.capacity):
            if self.pid[i]:
                self.topic[i] = self.msg[i] = None  # loaded from the file when sent
        if self.skipped:
            self._sync()

    def _scan_sector(self, s, base_seq):
        """Replay sector s.  Returns where appending may continue: after the last valid
        record if only erased space follows it, else SECTOR (never append after garbage)."""
        f = self._f
        hb = bytearray(REC_HDR + 4)
        base = s * SECTOR
        pos = end = SEC_HDR
        bad = False  # inside a run of garbage (noted once per run)
        while pos + REC_HDR + 4 <= SECTOR:
            f.seek(base + pos)
            f.readinto(hb)
            if hb == _FF[: REC_HDR + 4] and self._blank(base + pos, SECTOR - pos):
                break  # erased from here on
            rtype, flags, n, seq, pid = struct.unpack_from("<BBHIH", hb, 0)
            size = rec_size(n)
            if not (rtype in TYPES and pos + size <= SECTOR and self._crc_ok(base + pos, n, hb)):
                if not bad:
                    self._note("sector %d offset %d: torn or corrupt record skipped" % (s, pos))
                bad = True
                pos += 4  # resynchronise on the next 4-byte boundary
                continue
            bad = False
            if seq < base_seq or seq <= self._last:
                self._note("sector %d offset %d: stale record (seq %d) skipped" % (s, pos, seq))
                pos += size
                continue
            self._last = seq
            released = hb[MARKS] == 0 and hb[MARKS + 1] == 0
            done = hb[MARKS + 2] == 0 and hb[MARKS + 3] == 0
            order = 0
            if rtype == PUB and n >= 6:
                f.seek(base + pos + REC_HDR)
                f.readinto(hb)
                order = struct.unpack_from("<I", hb, 0)[0]
            self._replay(rtype, flags, pid, seq, base + pos, n, order, released, done)
            pos += size
            end = pos
        return end if self._blank(base + end, SECTOR - end) else SECTOR

    def _blank(self, off, n):
        """True if n bytes at off read as erased (0xFF)."""
        f = self._f
        f.seek(off)
        chunk = bytearray(256)
        while n > 0:
            k = min(n, 256)
            got = f.readinto(memoryview(chunk)[:k])
            if got != k or (chunk if k == 256 else chunk[:k]) != _FF[:k]:
                return False
            n -= k
        return True

    def _crc_ok(self, off, n, hb):
        """CRC check of the record at off, body read in chunks (no sector buffer)."""
        f = self._f
        mv = self._mv
        crc = crc32(memoryview(hb)[:MARKS])
        f.seek(off + REC_HDR)
        while n:
            k = min(n, len(mv))
            f.readinto(mv[:k])
            crc = crc32(mv[:k], crc)
            n -= k
        tail = bytearray(4)
        f.readinto(tail)
        return struct.unpack_from("<I", tail, 0)[0] == crc

    def _replay(self, rtype, flags, pid, seq, off, n, order, released, done):
        if rtype == PUB:
            if n < 6:
                self._note("record seq %d: PUB body too short, skipped" % seq)
                return
            self._last_pid = pid
            i = self.find(pid)
            if done:  # completed (or superseded by a later copy): its mark says so
                if i >= 0:
                    MemoryStore.remove(self, i)
                return
            q = flags & 3
            if i < 0:
                if self.count >= self.capacity:
                    self._note("record seq %d: more messages than capacity %d, dropped" % (seq, self.capacity))
                    return
                i = MemoryStore.add(self, pid, q, bool(flags & F_RETAIN), None, None)
            self.loc[i] = off
            self.qos[i] = q
            self.retain[i] = bool(flags & F_RETAIN)
            rel = released or flags & F_RELEASED
            self.state[i] = _AWAIT_PUBCOMP if rel else (_AWAIT_PUBACK if q == 1 else _AWAIT_PUBREC)
            self.seq[i] = order
            self._seq = max(self._seq, order)
        elif rtype == _REL or rtype == _DONE:
            i = self.find(pid)
            if i >= 0:
                if rtype == _REL:
                    self.state[i] = _AWAIT_PUBCOMP
                else:
                    MemoryStore.remove(self, i)
        elif rtype == _IN_ADD:
            if done:
                return
            if pid not in self.inloc:
                MemoryStore.in_add(self, pid)
            self.inloc[pid] = off
        elif rtype == _IN_DEL:
            if pid in self.inloc:
                del self.inloc[pid]
                MemoryStore.in_remove(self, pid)
        elif rtype == _CLEAR:
            MemoryStore.clear(self)
            self.inloc = {}

    # ---- reporting ------------------------------------------------------------------
    def stats(self):
        used_bytes = 0
        for s in self.used:
            used_bytes += self.fill[s]
        return {
            "size": self.size, "sectors": self.nsec, "messages": self.count,
            "capacity": self.capacity, "inbound": len(self.inbound),
            "free_bytes": self.size - used_bytes, "skipped": self.skipped,
            "bytes_written": self.bytes_written, "records_written": self.records_written,
            "syncs": self.syncs, "erases": sum(self.erases), "max_erases": max(self.erases),
            "record_overhead": REC_HDR + 6 + 4,  # + topic + payload, rounded up to 4
            "done_record": rec_size(0),
        }
