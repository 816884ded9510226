# The ring as a directory of append-only sector files: for littlefs (see medium.py).
import os

from .compat import MICROPYTHON
from .medium import RingError, SECTOR, file_size, fsync


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
        length, isdir = file_size(path)
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
            if not name.isdigit():
                raise RingError("%s holds %s: not a ring directory" % (path, name))
            n = max(n, int(name) + 1)  # never shrink
        self.sectors = n
        self.note = None if n == sectors else \
            "%s holds %d sectors, more than ring_size asks (%d): kept whole" % (path, n, sectors)
        self._w = None   # the sector file being appended to
        self._ws = -1    # its sector
        self._wlen = 0   # its length
        self._dirty = False
        self._r = None   # a read handle, kept while recovery reads one sector piecewise
        self._rs = -1

    def _path(self, s):
        return "%s/%d" % (self.name, s)

    def read(self, off, buf):
        s = off // SECTOR
        if s == self._ws and self._dirty:
            self.sync()  # littlefs: another handle sees only what was synced
        got = 0
        if s != self._rs:
            self._drop_reader()
            try:
                self._r = open(self._path(s), "rb")
            except OSError:
                self._r = None  # no file: an erased sector
            self._rs = s
        if self._r:
            self._r.seek(off % SECTOR)
            got = self._r.readinto(buf) or 0
        for i in range(got, len(buf)):
            buf[i] = 0xFF

    def written(self, s):
        return file_size(self._path(s))[0] if s != self._ws else self._wlen

    def _drop_reader(self):
        if self._r:
            self._r.close()
        self._r = None
        self._rs = -1

    def program(self, off, buf, n):
        s = off // SECTOR
        if s == self._rs:
            self._drop_reader()  # littlefs: an open handle would not see the new data
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
        if s == self._rs:
            self._drop_reader()
        try:
            os.remove(self._path(s))
        except OSError:
            pass  # already erased

    def sync(self):
        if self._dirty:
            fsync(self._w)
            self._dirty = False

    def _close_head(self):
        if self._w:
            self.sync()
            self._w.close()
        self._w = None
        self._ws = -1

    def close(self):
        self._drop_reader()
        self._close_head()
