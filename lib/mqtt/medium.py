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
from .ringfmt import SECTOR, FF  # noqa: F401 (FF: for filemedium)


class RingError(Exception):
    """The medium cannot be used as a ring (not ours, another format, unwritable).
    Never raised for torn or corrupt records: those are skipped and counted."""


def file_size(path):
    try:
        st = os.stat(path)
    except OSError:
        return -1, False
    return st[6], st[0] & 0x4000 != 0  # S_IFDIR


def fsync(f):
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
