# Flash ring: the journal that makes the in-flight store (store.py) survive reboot,
# kill -9 and power cuts.  Format: ringfmt.py and docs/ring-format.md; media:
# medium.py (raw partition, host file, littlefs directory).
#   - Records are appended in sequence: PUB (a whole message), REL (PUBREC seen,
#     PUBREL owed), DONE (acknowledged), IN_ADD / IN_DEL (inbound QoS 2 id stored /
#     released), CLEAR (session discarded).  State changes never rewrite a payload.
#   - On media that allow it (flash, host file) a state change also clears a mark in
#     the record it changes; on append-only media (littlefs) its record is written
#     twice instead.  Either way one flipped bit can neither resurrect a completed
#     message nor lose a pending one.
#   - When the ring is full the oldest sector is reclaimed: its live records are copied
#     to the head (durably) first, the sector is retired (its magic cleared, so a torn
#     erase can never bring it back), then erased.  One sector stays free for that.
# Recovery replays every CRC-valid record newer than what it has seen, in (generation,
# offset) order, resynchronising after a corrupt one; torn and corrupt records are
# skipped and counted.  Sectors are reclaimed oldest first, so a DONE never disappears
# while its PUB survives: a completed message is never resurrected.
import struct

from .store import MemoryStore, StoreFull
from .compat import const, unload
from .medium import RingError, BlockMedium  # noqa: F401 (RingError: part of the API)
from .ringfmt import (SECTOR, SEC_HDR, REC_HDR, MARKS, PUB, REL, DONE, IN_ADD, IN_DEL, CLEAR, HOLD, UNHOLD,
                      F_RETAIN, F_RELEASED, F_HELD, rec_size, record_bytes,  # noqa: F401 (record_bytes: API)
                      sector_header, pub_body, seal)

# sender states (store.py)
_AWAIT_PUBACK = const(1)
_AWAIT_PUBREC = const(2)
_AWAIT_PUBCOMP = const(3)


def RingStore(where, size=32768, capacity=64, sync_every=1, cache=16, log=None, inbound=256, medium=None):
    """The in-flight store on a flash ring: a MemoryStore index with a Ring journal.
    where: a block device (esp32.Partition protocol: the ring owns the partition) or
      a path: medium="file" one preallocated file (hosts), "log" a directory of
      append-only sector files (littlefs on a board, see medium.py); None picks "log"
      on a board and "file" on a host, unless what is at the path says otherwise.
    size: bytes, whole 4096-byte sectors (at least 3); never shrinks an existing ring.
    capacity: messages held at once (RAM index slots; grows if recovery finds more).
    sync_every, cache, log, inbound: see Ring."""
    if hasattr(where, "readblocks"):
        m = BlockMedium(where)
    elif (medium or default_medium(where)) == "log":
        from .logmedium import LogMedium  # each medium loads only where it is used

        m = LogMedium(where, size // SECTOR)
    else:
        from .filemedium import FileMedium

        m = FileMedium(where, size // SECTOR)
    try:
        return MemoryStore(capacity, Ring(m, sync_every, cache, log, inbound))
    except BaseException:
        m.close()
        raise


def default_medium(path):
    """"log" on a board (littlefs) unless a ring file is already there; "file" on a host."""
    import os
    from .compat import ON_BOARD

    if not ON_BOARD:
        return "file"
    try:
        return "log" if os.stat(path)[0] & 0x4000 else "file"  # keep using what is there
    except OSError:
        return "log"


class Ring:
    def __init__(self, medium, sync_every=1, cache=16, log=None, inbound=256):
        """medium: see medium.py.
        sync_every: 1 = every change is on the medium before the call returns;
          N > 1 = group commit: a power cut can lose the last N-1 changes (accepted
          messages among them); commit() syncs, and the client calls it before idling.
        cache: payloads kept in RAM; the others are read back from the medium when sent.
        log: callable(str) for recovery notes (skipped records and why).
        inbound: inbound QoS 2 ids held at once (see in_room)."""
        self.m = medium
        self.nsec = n = medium.sectors
        if n < 3:
            raise ValueError("ring size must be at least 3 sectors (12288 bytes)")
        self.size = n * SECTOR
        self.sync_every = sync_every
        self.cache = cache
        self.log = log
        self.inbound_max = inbound
        self.marks = medium.inplace
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
        self.loc = []              # medium offset of each slot's PUB record
        self.inloc = {}            # inbound pid -> offset of its IN_ADD record
        self.heldloc = {}          # held message's order -> offset of its PUB record
        self.st = None

    def attach(self, st):
        """Take the index (a MemoryStore) and replay the medium into it."""
        self.st = st
        self.loc = [0] * st.capacity
        from . import recovery  # once per boot: unloaded again right after

        recovery.recover(self)
        unload("mqtt.recovery")

    # ---- medium -------------------------------------------------------------------
    def close(self):
        if self.m:
            self.commit()
            self.m.close()
            self.m = None

    def _note(self, why):
        self.skipped += 1
        if len(self.reasons) < 32:
            self.reasons.append(why)
        if self.log:
            self.log("ring: " + why)

    def _write(self, off, buf, n):
        try:
            self.m.program(off, buf, n)
        except OSError as e:  # not a link error: the client must not take it for one
            raise RingError("ring write failed at %d: %s" % (off, e))
        self.bytes_written += n

    def _sync(self):
        try:
            self.m.sync()
        except OSError as e:
            raise RingError("ring sync failed: %s" % e)
        self.syncs += 1
        self._unsynced = 0

    def _changed(self, lazy=False):
        """A change was written.  Lazy changes ride on the next sync: losing one to a
        power cut only repeats a step the broker tolerates (see done/state)."""
        self._unsynced += 1
        if not lazy and self._unsynced >= self.sync_every:
            self._sync()

    def commit(self):
        """Make every change so far durable (group commit)."""
        if self._unsynced:
            self._sync()

    def _erase(self, s):
        try:
            self.m.erase(s)
        except OSError as e:
            raise RingError("ring erase of sector %d failed: %s" % (s, e))
        self.erases[s] += 1
        self.fill[s] = 0

    def _open_sector(self, s):
        self._gen += 1
        self._write(s * SECTOR, sector_header(self._gen, self.erases[s], self._seq_rec + 1), SEC_HDR)
        self.fill[s] = SEC_HDR
        self.used.append(s)

    # ---- appending ------------------------------------------------------------
    def _append(self, rtype, flags, pid, topic=None, msg=None, order=0, copy_from=None):
        """Write one record at the head and return its offset.  copy_from=(offset,
        body length) re-appends an existing record's body."""
        if copy_from:
            n = copy_from[1]
        elif rtype == PUB:
            n = 6 + len(topic) + len(msg)
        else:
            n = 4 if rtype >= HOLD else 0
        size = rec_size(n)
        if size > SECTOR - SEC_HDR:
            raise ValueError("message too large for a ring record (%d bytes, max %d)" % (size, SECTOR - SEC_HDR))
        off = self._room(size)  # may reclaim, which appends copies: fill the buffer after
        self._seq_rec += 1
        if size > len(self._buf):
            self._buf = bytearray(size)
            self._mv = memoryview(self._buf)
        if copy_from:
            self.m.read(copy_from[0] + REC_HDR, self._mv[REC_HDR:REC_HDR + n])
        elif rtype == PUB:
            pub_body(self._buf, order, topic, msg)
        elif n:
            struct.pack_into("<I", self._buf, REC_HDR, order)
        seal(self._buf, self._mv, rtype, flags, n, self._seq_rec, pid)
        self._write(off, self._buf, size)
        self.fill[off // SECTOR] += size
        self.records_written += 1
        return off

    def _state_rec(self, rtype, pid, off, which, order=0):
        """Record a state change of the record at off: its own record, plus the mark
        (which: 0 released, 2 done) where the medium allows in-place writes, else the
        record twice (append-only media)."""
        self._append(rtype, 0, pid, order=order)
        if off < 0:
            return
        if self.marks:
            self._write(off + MARKS + which, b"\0\0", 2)
        else:
            self._append(rtype, 0, pid, order=order)

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
        raise StoreFull("flash ring full (%d bytes, %d messages)" % (self.size, self.st.count))

    def _reclaim(self):
        """Free the oldest sector; its live records move to the head first (into the
        spare sector if the head has no room).  False when nothing can be freed."""
        if len(self.used) < 2:
            return False
        st = self.st
        t = self.used[0]
        lo = t * SECTOR
        live = [i for i in st.ordered() if lo <= self.loc[i] < lo + SECTOR]  # in acceptance order
        inbound = [p for p in self.inloc if lo <= self.inloc[p] < lo + SECTOR]
        held = [o for o in self.heldloc if lo <= self.heldloc[o] < lo + SECTOR]
        if live or inbound or held:
            need = len(inbound) * rec_size(0)
            for i in live:
                need += rec_size(self._read_hdr(self.loc[i])[2])
            for o in held:
                need += rec_size(self._read_hdr(self.heldloc[o])[2])
            if self.fill[self.used[-1]] + need > SECTOR:
                if not self.free:
                    return False
                self._open_sector(self.free.pop(0))
            for i in live:
                old = self.loc[i]
                hdr = self._read_hdr(old)
                flags = hdr[1] | (F_RELEASED if st.state[i] == _AWAIT_PUBCOMP else 0)
                self.loc[i] = self._append(PUB, flags, st.pid[i], copy_from=(old, hdr[2]))
            for p in inbound:
                self.inloc[p] = self._append(IN_ADD, 0, p)
            for o in held:
                old = self.heldloc[o]
                hdr = self._read_hdr(old)
                self.heldloc[o] = self._append(PUB, hdr[1] | F_HELD, hdr[4], copy_from=(old, hdr[2]))
            self._sync()  # the copies must be durable before the originals go
        self.used.pop(0)
        if self.m.inplace:
            # retire it first: a torn erase then leaves no valid header, and recovery
            # never replays a half-erased sector (whose DONE records may be gone)
            self._write(lo, b"\0\0\0\0", 4)
            self._sync()
        self._erase(t)
        self.free.append(t)
        return True

    def _read_hdr(self, off):
        """(type, flags, body length, seq, pid) of the record at off."""
        hb = bytearray(REC_HDR)
        self.m.read(off, hb)
        return struct.unpack_from("<BBHIH", hb, 0)

    # ---- the journal interface (called by MemoryStore) ------------------------------
    def put(self, i, pid, qos, retain, topic, msg, order):
        """Record an accepted message in slot i; False: do not keep it in RAM."""
        self.loc[i] = self._append(PUB, qos | (F_RETAIN if retain else 0), pid, topic, msg, order)
        self._changed()
        if self._cached >= self.cache:
            return False
        self._cached += 1
        return True

    def load(self, i):
        """Read slot i's topic and payload back from its PUB record into the index."""
        off = self.loc[i]
        body = bytearray(self._read_hdr(off)[2])
        self.m.read(off + REC_HDR, body)
        tl = body[4] | body[5] << 8
        st = self.st
        st.topic[i] = bytes(body[6:6 + tl])
        st.msg[i] = m = bytes(body[6 + tl:])
        self._cached += 1
        return m

    def state(self, i, old, new):
        if new == _AWAIT_PUBCOMP and old != _AWAIT_PUBCOMP:
            self._state_rec(REL, self.st.pid[i], self.loc[i], 0)
            # durable before the PUBREL goes out: once the broker has the PUBREL it may
            # complete and forget the message, and a PUBLISH resent after a power cut
            # would then be a new message - a duplicate [MQTT-4.3.3-1]
            self._changed()
        # a step back from AWAIT_PUBCOMP is never recorded: once PUBREL is owed the
        # PUBLISH is never sent again [MQTT-4.3.3-1], whatever the session does in RAM

    def done(self, i):
        st = self.st
        self._state_rec(DONE, st.pid[i], self.loc[i], 2)
        # lazy: it rides on the next sync (which any later record forces first).  Lost
        # to a power cut, it only repeats a step the broker tolerates: a QoS 1 PUBLISH
        # once more (QoS 1 allows duplicates), or a PUBREL (REL was durable), which the
        # broker answers with PUBCOMP even for an id it has forgotten.
        self._changed(True)
        if st.msg[i] is not None:
            self._cached -= 1

    def hold(self, i):
        st = self.st
        self.heldloc[st.seq[i]] = self.loc[i]
        self._append(HOLD, 0, st.pid[i], order=st.seq[i])
        self._changed()
        if st.msg[i] is not None:
            self._cached -= 1

    def unhold(self, order):
        off = self.heldloc.pop(order)
        self._state_rec(UNHOLD, 0, off, 2, order)  # the PUB's done mark: gone for good
        self._changed()

    def load_held(self, order, h):
        """Read a held message's topic and payload into h ([qos, retain, topic, msg])."""
        off = self.heldloc[order]
        body = bytearray(self._read_hdr(off)[2])
        self.m.read(off + REC_HDR, body)
        tl = body[4] | body[5] << 8
        h[2] = bytes(body[6:6 + tl])
        h[3] = bytes(body[6 + tl:])

    def in_room(self):
        """Room for another inbound QoS 2 id: at most `inbound` of them (bounded RAM),
        and ring space for its record (reclaiming old sectors if needed).  A broker
        may send thousands of QoS 2 PUBLISH before the first PUBREL; when this says
        no, the session drops the link unacknowledged and the broker resends later."""
        if len(self.st.inbound) >= self.inbound_max:
            return False
        try:
            self._room(2 * rec_size(0))
            return True
        except StoreFull:
            return False

    def in_add(self, pid):
        self.inloc[pid] = self._append(IN_ADD, 0, pid)
        self._changed()

    def in_del(self, pid):
        self._state_rec(IN_DEL, pid, self.inloc.pop(pid, -1), 2)
        self._changed()

    def clear(self):
        """Discard the whole session, messages included."""
        st = self.st
        if self.marks:
            for i in range(st.capacity):
                if st.pid[i]:
                    self._write(self.loc[i] + MARKS + 2, b"\0\0", 2)
            for off in list(self.inloc.values()) + list(self.heldloc.values()):
                self._write(off + MARKS + 2, b"\0\0", 2)
        self._append(CLEAR, 0, 0)
        if not self.marks:
            self._append(CLEAR, 0, 0)
        self._changed()
        self.inloc = {}
        self.heldloc = {}
        self._cached = 0

    # ---- recovery -------------------------------------------------------------------
    # ---- reporting ------------------------------------------------------------------
    def stats(self):
        used_bytes = 0
        for s in self.used:
            used_bytes += self.fill[s]
        return {
            "size": self.size, "sectors": self.nsec, "free_bytes": self.size - used_bytes,
            "skipped": self.skipped, "bytes_written": self.bytes_written,
            "records_written": self.records_written, "syncs": self.syncs,
            "erases": sum(self.erases), "max_erases": max(self.erases),
            "record_overhead": REC_HDR + 6 + 4,  # + topic + payload, rounded up to 4
            "done_record": rec_size(0),
        }
