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

from .store import MemoryStore, StoreFull, AWAIT_PUBACK, AWAIT_PUBREC, AWAIT_PUBCOMP
from .compat import MICROPYTHON

SECTOR = 4096
SEC_HDR = 20   # magic 4, generation u32, erase count u32, base seq u32, crc u32
REC_HDR = 14   # type u8, flags u8, body length u16, seq u32, pid u16, marks 4 (no CRC)
MARKS = 10     # offset of the marks in a record: released u16, done u16
VERSION = 2
MAGIC = b"RQ\x02\xa5"

PUB = 1
REL = 2
DONE = 3
IN_ADD = 4
IN_DEL = 5
CLEAR = 6
TYPES = {PUB: "PUB", REL: "REL", DONE: "DONE", IN_ADD: "IN_ADD", IN_DEL: "IN_DEL", CLEAR: "CLEAR"}

F_RETAIN = 4
F_RELEASED = 8  # a PUB copied while its PUBREL was owed

_FF = b"\xff" * 256
_ZERO2 = b"\x00\x00"


class RingError(Exception):
    """The file cannot be used as a ring (not ours, or unwritable).  Never raised for
    torn or corrupt records: those are skipped and counted."""


def rec_size(body):
    """Bytes a record with a body of `body` bytes takes (CRC included, 4-byte aligned)."""
    return (REC_HDR + body + 4 + 3) & ~3


def record_bytes(topic_len, payload_len):
    """Ring bytes one message takes (its PUB record; its DONE adds rec_size(0))."""
    return rec_size(6 + topic_len + payload_len)


def max_message(topic_len):
    """Largest payload a ring record holds for a topic of topic_len bytes."""
    return SECTOR - SEC_HDR - rec_size(6) - topic_len


def _crc(mv, start, end, crc=0):
    """CRC of a record's CRC'd bytes: header without the marks, then the body."""
    crc = crc32(mv[start : start + MARKS], crc)
    return crc32(mv[start + REC_HDR : end], crc)


class RingStore(MemoryStore):
    persistent = True

    def __init__(self, path, size=32768, capacity=64, sync_every=1, cache=16, log=None):
        """path: the ring file (created and preallocated when missing).
        size: bytes, rounded down to whole 4096-byte sectors (at least 3).
        capacity: most messages held at once (RAM index slots).
        sync_every: 1 = every change is on the medium before the call returns;
          N > 1 = group commit: a power cut can lose the last N-1 changes (accepted
          messages among them); commit() syncs, and the client calls it before idling.
        cache: payloads kept in RAM; the others are read back from the file when sent.
        log: callable(str) for recovery notes (skipped records and why)."""
        MemoryStore.__init__(self, capacity)
        self.path = path
        self.nsec = size // SECTOR
        if self.nsec < 3:
            raise ValueError("ring size must be at least 3 sectors (12288 bytes)")
        self.size = self.nsec * SECTOR
        self.sync_every = sync_every
        self.cache = cache
        self.log = log
        self.loc = [0] * capacity     # file offset of each slot's PUB record
        self.inloc = {}               # inbound pid -> offset of its IN_ADD record
        self.gen = [0] * self.nsec    # sector generation (0: free)
        self.erases = [0] * self.nsec
        self.fill = [0] * self.nsec   # next write offset inside the sector
        self.used = []                # sectors in generation order (oldest first)
        self.free = []
        self.skipped = 0              # corrupt or torn records/sectors found at recovery
        self.reasons = []
        self.bytes_written = 0
        self.records_written = 0
        self.syncs = 0
        self._unsynced = 0
        self._cached = 0
        self._seq_rec = 0
        self._gen = 0
        self._buf = bytearray(256)  # grows to the largest record written
        self._mv = memoryview(self._buf)
        self._f = None
        self._open()

    # ---- file -------------------------------------------------------------------
    def _open(self):
        import os

        try:
            length = os.stat(self.path)[6]
            exists = True
        except OSError:
            exists = False
            length = 0
        try:
            self._f = open(self.path, "r+b" if exists else "w+b")
        except OSError as e:
            raise RingError("cannot open ring file %s: %s" % (self.path, e))
        if length == 0:
            for s in range(self.nsec):
                self._erase(s, count=False)
            self._sync()
            self.free = list(range(self.nsec))
            return
        if length < self.size:
            self._note("file is %d bytes, expected %d: truncated; the missing sectors are reformatted"
                       % (length, self.size))
        elif length > self.size:
            self._note("file is %d bytes, larger than the configured %d: the rest is ignored"
                       % (length, self.size))
        self._recover(length)

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
        for _ in range(SECTOR // len(_FF)):
            f.write(_FF)
        self.bytes_written += SECTOR
        if count:
            self.erases[s] += 1
        self.gen[s] = 0
        self.fill[s] = 0

    def _erased(self, s, length):
        """True if sector s reads as all 0xFF (then it needs no erase: no wear)."""
        return (s + 1) * SECTOR <= length and self._blank(s * SECTOR, SECTOR)

    def _open_sector(self, s):
        self._gen += 1
        self.gen[s] = self._gen
        h = bytearray(SEC_HDR)
        h[0:4] = MAGIC
        struct.pack_into("<III", h, 4, self._gen, self.erases[s], self._seq_rec + 1)
        struct.pack_into("<I", h, 16, crc32(h[:16]))
        self._write(s * SECTOR, h, SEC_HDR)
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
        off = self._room(size)
        self._seq_rec += 1
        if size > len(self._buf):
            self._buf = bytearray(size)
            self._mv = memoryview(self._buf)
        b = self._buf
        if copy_from:
            self._f.seek(copy_from[0] + REC_HDR)
            self._f.readinto(self._mv[REC_HDR : REC_HDR + n])
        elif rtype == PUB:
            tl = len(topic)
            struct.pack_into("<IH", b, REC_HDR, order, tl)
            p = REC_HDR + 6
            b[p : p + tl] = topic
            b[p + tl : REC_HDR + n] = msg
        struct.pack_into("<BBHIHI", b, 0, rtype, flags, n, self._seq_rec, pid, 0xFFFFFFFF)
        end = REC_HDR + n
        struct.pack_into("<I", b, end, _crc(self._mv, 0, end))
        for i in range(end + 4, size):
            b[i] = 0xFF
        self._write(off, b, size)
        self.fill[off // SECTOR] += size
        self.records_written += 1
        return off

    def _mark(self, off, which):
        """Set a mark (0: released, 2: done) of the record at off, in place."""
        self._write(off + MARKS + which, _ZERO2, 2)

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
        hi = lo + SECTOR
        live = [i for i in range(self.capacity) if self.pid[i] and lo <= self.loc[i] < hi]
        inbound = [p for p in self.inloc if lo <= self.inloc[p] < hi]
        if live or inbound:
            need = 0
            for i in live:
                need += rec_size(self._read_hdr(self.loc[i])[2])
            need += len(inbound) * rec_size(0)
            h = self.used[-1]
            if self.fill[h] + need > SECTOR:
                if not self.free:
                    return False
                self._open_sector(self.free.pop(0))
            live.sort(key=lambda i: self.seq[i])
            for i in live:
                old = self.loc[i]
                hdr = self._read_hdr(old)
                flags = hdr[1] | (F_RELEASED if self.state[i] == AWAIT_PUBCOMP else 0)
                self.loc[i] = self._append(PUB, flags, self.pid[i], copy_from=(old, hdr[2]))
            for p in inbound:
                self.inloc[p] = self._append(IN_ADD, 0, p)
            self._sync()  # the copies must be durable before the originals go
        self.used.pop(0)
        self._erase(t)
        self._sync()
        self.free.append(t)
        return True

    def _read_hdr(self, off):
        hb = bytearray(REC_HDR)
        self._f.seek(off)
        self._f.readinto(hb)
        return struct.unpack_from("<BBHIH", hb, 0)

    # ---- the store interface ------------------------------------------------------
    def add(self, pid, qos, retain, topic, msg):
        if self.count >= self.capacity:
            raise StoreFull("flash ring index full (%d messages)" % self.capacity)
        flags = qos | (F_RETAIN if retain else 0)
        off = self._append(PUB, flags, pid, topic, msg, self._seq + 1)
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
        n = self._read_hdr(off)[2]
        body = bytearray(n)
        self._f.seek(off + REC_HDR)
        self._f.readinto(body)
        tl = struct.unpack_from("<H", body, 4)[0]
        self.topic[i] = bytes(body[6 : 6 + tl])
        self.msg[i] = bytes(body[6 + tl :])
        self._cached += 1
        return self.msg[i]

    def set_state(self, i, state):
        if state == AWAIT_PUBCOMP and self.state[i] != AWAIT_PUBCOMP:
            self._append(REL, 0, self.pid[i])
            self._mark(self.loc[i], 0)
            # lazy: if lost, the PUBLISH is resent (DUP) instead of the PUBREL and the
            # broker, still holding it, answers PUBREC again: no duplicate delivery
            self._changed(True)
        elif state != AWAIT_PUBCOMP and self.state[i] == AWAIT_PUBCOMP:
            # the broker lost the session: restart the QoS 2 flow from a fresh PUB copy
            old = self.loc[i]
            self.loc[i] = self._append(PUB, self.qos[i] | (F_RETAIN if self.retain[i] else 0),
                                       self.pid[i], copy_from=(old, self._read_hdr(old)[2]))
            self._mark(old, 2)
            self._changed()
        self.state[i] = state

    def remove(self, i):
        self._append(DONE, 0, self.pid[i])
        self._mark(self.loc[i], 2)
        # QoS 1: lazy - a power cut before the next sync can only resend an acknowledged
        # message once more, which QoS 1 allows.  QoS 2: durable, or a resend after a
        # power cut would be a new (duplicate) message to the broker.
        self._changed(self.qos[i] == 1)
        if self.msg[i] is not None:
            self._cached -= 1
        MemoryStore.remove(self, i)

    def in_add(self, pid):
        self.inloc[pid] = self._append(IN_ADD, 0, pid)
        self._changed()
        MemoryStore.in_add(self, pid)

    def in_remove(self, pid):
        self._append(IN_DEL, 0, pid)
        off = self.inloc.pop(pid, None)
        if off is not None:
            self._mark(off, 2)
        self._changed()
        MemoryStore.in_remove(self, pid)

    def clear_inbound(self):
        for pid in list(self.inloc):
            self.in_remove(pid)

    def clear(self):
        """Discard the whole session (clean_session=1 [MQTT-3.1.2-6])."""
        for i in range(self.capacity):
            if self.pid[i]:
                self._mark(self.loc[i], 2)
        for off in self.inloc.values():
            self._mark(off, 2)
        self._append(CLEAR, 0, 0)
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
                order.append((0, 0, s))
                continue
            f.seek(s * SECTOR)
            f.readinto(hdr)
            if hdr[0:4] == MAGIC and struct.unpack_from("<I", hdr, 16)[0] == crc32(memoryview(hdr)[:16]):
                g, e, base = struct.unpack_from("<III", hdr, 4)
                self.erases[s] = e
                order.append((g, base, s))
            else:
                blank = hdr == _FF[:SEC_HDR]
                if not blank:
                    foreign += 1
                    self._note("sector %d: bad header (torn erase or foreign data)" % s)
                order.append((-1 if blank else 0, 0, s))
        if foreign == self.nsec:
            raise RingError("%s is not a ring file (no valid sector header)" % self.path)
        order.sort()
        self._last = 0  # highest record sequence replayed
        for g, base, s in order:
            if g <= 0:
                if not (g < 0 and self._erased(s, length)):
                    self._erase(s, count=(s + 1) * SECTOR <= length)
                self.free.append(s)
                continue
            self.gen[s] = g
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
        mv = memoryview(hb)
        base = s * SECTOR
        pos = end = SEC_HDR
        bad = False  # inside a run of garbage (noted once per run)
        while pos + REC_HDR + 4 <= SECTOR:
            f.seek(base + pos)
            f.readinto(hb)
            if hb == _FF[: len(hb)] and self._blank(base + pos, SECTOR - pos):
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
                f.readinto(mv[:4])
                order = struct.unpack_from("<I", hb, 0)[0]
            self._replay(rtype, flags, pid, seq, base + pos, n, order, released, done)
            pos += size
            end = pos
        return end if self._blank(base + end, SECTOR - end) else SECTOR

    def _blank(self, off, n):
        """True if n bytes at off read as erased (0xFF)."""
        f = self._f
        f.seek(off)
        chunk = bytearray(len(_FF))
        while n > 0:
            k = min(n, len(chunk))
            got = f.readinto(memoryview(chunk)[:k])
            if got != k or (chunk if k == len(chunk) else chunk[:k]) != _FF[:k]:
                return False
            n -= k
        return True

    def _crc_ok(self, off, n, hb):
        """CRC check of the record at off, body read in chunks (no sector buffer)."""
        f = self._f
        crc = crc32(memoryview(hb)[:MARKS])
        f.seek(off + REC_HDR)
        left = n
        buf = self._buf
        while left:
            k = min(left, len(buf))
            f.readinto(self._mv[:k])
            crc = crc32(self._mv[:k], crc)
            left -= k
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
            if i < 0:
                if self.count >= self.capacity:
                    self._note("record seq %d: more messages than capacity %d, dropped" % (seq, self.capacity))
                    return
                i = MemoryStore.add(self, pid, flags & 3, bool(flags & F_RETAIN), None, None)
            q = flags & 3
            self.loc[i] = off
            self.qos[i] = q
            self.retain[i] = bool(flags & F_RETAIN)
            rel = released or flags & F_RELEASED
            self.state[i] = AWAIT_PUBCOMP if rel else (AWAIT_PUBACK if q == 1 else AWAIT_PUBREC)
            self.seq[i] = order
            self._seq = max(self._seq, order)
        elif rtype in (REL, DONE):
            i = self.find(pid)
            if i >= 0:
                if rtype == REL:
                    self.state[i] = AWAIT_PUBCOMP
                else:
                    MemoryStore.remove(self, i)
        elif rtype == IN_ADD:
            if done:
                return
            if pid not in self.inloc:
                MemoryStore.in_add(self, pid)
            self.inloc[pid] = off
        elif rtype == IN_DEL:
            if pid in self.inloc:
                del self.inloc[pid]
                MemoryStore.in_remove(self, pid)
        elif rtype == CLEAR:
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
