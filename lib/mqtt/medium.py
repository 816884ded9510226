# Media the flash ring (ring.py) runs on.  Each has the same small interface:
#   sectors          number of 4096-byte sectors
#   inplace          True when a written record may be programmed again (clearing
#                    bits: the ring's in-place marks); False for append-only media
#   ours             True when the space belongs to the ring whatever it holds (a
#                    partition, a ring directory): foreign data is erased, not refused
#   read(off, buf)   fill buf from byte offset off (erased space reads as 0xFF)
#   program(off, buf, n)  write n bytes of buf at off (NOR rule: only clears bits)
#   erase(s)         sector s back to all 0xFF
#   sync()           everything programmed so far is durable
#   written(s)       bytes of sector s that already hold data an append must not
#                    overwrite (0 where the ring can tell from the content alone)
import os

from .compat import MICROPYTHON
from .ringfmt import SECTOR, FF


class RingError(Exception):
    """The medium cannot be used as a ring (not ours, another format, unwritable).
    Never raised for torn or corrupt records: those are skipped and counted."""


def _size(path):
    try:
        st = os.stat(path)
    except OSError:
        return -1, False
    return st[6], st[0] & 0x4000 != 0  # S_IFDIR


def _fsync(f):
    f.flush()  # MicroPython: fsync (unix port) / littlefs sync (ESP32)
    if not MICROPYTHON:
        os.fsync(f.fileno())


class BlockMedium:
    """A raw flash partition: any object with the block protocol of esp32.Partition
    (ports/esp32/esp32_partition.c): readblocks(n, buf, off), writeblocks(n, buf, off)
    = program without erase, ioctl(4) block count, ioctl(5) block size, ioctl(6, n)
    erase block n, ioctl(3) sync.  Flash costs only what the ring writes."""
    inplace = True
    ours = True

    def __init__(self, dev):
        bs = dev.ioctl(5, 0)
        if bs != SECTOR:
            # ioctl(6) erases one block; the ring's sector must be that block
            raise RingError("ring partition block size is %s, must be %d" % (bs, SECTOR))
        self.dev = dev
        self.sectors = dev.ioctl(4, 0)
        self.name = "partition %s" % (getattr(dev, "info", lambda: ("?",) * 5)()[4],)

    def read(self, off, buf):
        self.dev.readblocks(off // SECTOR, buf, off % SECTOR)

    def program(self, off, buf, n):
        self.dev.writeblocks(off // SECTOR, memoryview(buf)[:n], off % SECTOR)

    def erase(self, s):
        self.dev.ioctl(6, s)

    def sync(self):
        self.dev.ioctl(3, 0)

    def written(self, s):
        return 0

    def close(self):
        pass


class FileMedium:
    """One preallocated file of whole sectors (hosts: CPython, the unix port).  Marks
    are rewritten in place, which is cheap on a host file system and a disaster on
    littlefs (it rewrites the file's tail): boards use LogMedium for paths."""
    inplace = True
    ours = False

    def __init__(self, path, sectors):
        length, isdir = _size(path)
        if isdir:
            raise RingError("%s is a directory, not a ring file" % path)
        self.name = path
        self.length = max(length, 0)
        self.fresh = length <= 0
        # never shrink: a smaller ring size would drop whatever the last sectors hold
        self.sectors = max(sectors, (self.length + SECTOR - 1) // SECTOR)
        try:
            self._f = open(path, "r+b" if length >= 0 else "w+b")
        except OSError as e:
            raise RingError("cannot open ring file %s: %s" % (path, e))

    def read(self, off, buf):
        f = self._f
        f.seek(off)
        got = f.readinto(buf) or 0
        for i in range(got, len(buf)):  # beyond the end of the file: erased
            buf[i] = 0xFF

    def program(self, off, buf, n):
        f = self._f
        f.seek(off)
        if MICROPYTHON:
            f.write(buf, n)
        else:
            f.write(memoryview(buf)[:n])

    def erase(self, s):
        f = self._f
        f.seek(s * SECTOR)
        for _ in range(SECTOR // 256):
            f.write(FF)

    def extend(self):
        """Preallocate: write whole erased sectors up to the ring's size (no holes)."""
        end = self.sectors * SECTOR
        if self.length < end:
            self._f.seek(self.length)
            while self.length < end:
                k = min(256, end - self.length, SECTOR - self.length % SECTOR)
                self._f.write(FF[:k])
                self.length += k

    def sync(self):
        _fsync(self._f)

    def written(self, s):
        return 0

    def close(self):
        if self._f:
            self._f.close()
            self._f = None


class LogMedium:
    """A directory with one file per sector (`<dir>/<n>`), only ever appended to: the
    form a ring takes on littlefs (the ESP32 vfs).  littlefs is copy-on-write per block
    and rewrites a file from any in-place write to its end, so no byte is ever written
    twice here: the ring records state changes without marks.  A sector file is at
    most one 4096-byte littlefs block, so a sync copies at most that one block; an
    erase is a file removal (atomic in littlefs)."""
    inplace = False
    ours = True

    def __init__(self, path, sectors):
        length, isdir = _size(path)
        if length >= 0 and not isdir:
            raise RingError("%s is a file: a log ring is a directory" % path)
        if length < 0:
            try:
                os.mkdir(path)
            except OSError as e:
                raise RingError("cannot create ring directory %s: %s" % (path, e))
        self.name = path
        self.fresh = length < 0
        n = sectors
        for name in os.listdir(path):
            if name.isdigit():
                n = max(n, int(name) + 1)  # never shrink
        self.sectors = n
        self._w = None   # the sector file being appended to
        self._ws = -1    # its sector
        self._wlen = 0   # its length
        self._dirty = False

    def _path(self, s):
        return "%s/%d" % (self.name, s)

    def read(self, off, buf):
        s = off // SECTOR
        if s == self._ws and self._dirty:
            self.sync()  # littlefs: another handle sees only what was synced
        got = 0
        try:
            with open(self._path(s), "rb") as f:
                f.seek(off % SECTOR)
                got = f.readinto(buf) or 0
        except OSError:
            pass  # no file: an erased sector
        for i in range(got, len(buf)):
            buf[i] = 0xFF

    def written(self, s):
        return _size(self._path(s))[0] if s != self._ws else self._wlen

    def program(self, off, buf, n):
        s = off // SECTOR
        if s != self._ws:
            self._close_head()
            self._wlen = max(0, self.written(s))
            self._w = open(self._path(s), "ab")
            self._ws = s
        at = off % SECTOR
        if at != self._wlen:
            raise RingError("log ring: write at %d of sector %d, not at its end %d" % (at, s, self._wlen))
        if MICROPYTHON:
            self._w.write(buf, n)
        else:
            self._w.write(memoryview(buf)[:n])
        self._wlen += n
        self._dirty = True

    def erase(self, s):
        if s == self._ws:
            self._close_head()
        try:
            os.remove(self._path(s))
        except OSError:
            pass  # already erased

    def sync(self):
        if self._dirty:
            _fsync(self._w)
            self._dirty = False

    def _close_head(self):
        if self._w:
            self.sync()
            self._w.close()
        self._w = None
        self._ws = -1

    def close(self):
        self._close_head()
