# The ring on one preallocated host file (see medium.py for the interface).
from .compat import MICROPYTHON
from .medium import RingError, SECTOR, FF, file_size, fsync


class FileMedium:
    """One preallocated file of whole sectors (hosts: CPython, the unix port).  Marks
    are rewritten in place, which is cheap on a host file system and a disaster on
    littlefs (it rewrites the file's tail): boards use LogMedium for paths."""
    inplace = True
    ours = False

    def __init__(self, path, sectors):
        length, isdir = file_size(path)
        if isdir:
            raise RingError("%s is a directory, not a ring file" % path)
        self.name = path
        self.length = max(length, 0)
        self.fresh = length <= 0
        # never shrink: a smaller ring size would drop whatever the last sectors hold
        self.sectors = max(sectors, (self.length + SECTOR - 1) // SECTOR)
        self.note = None if self.sectors == sectors else \
            "%s holds %d sectors, more than ring_size asks (%d): kept whole" % (path, self.sectors, sectors)
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
        fsync(self._f)

    def written(self, s):
        return 0

    def close(self):
        if self._f:
            self._f.close()
            self._f = None
