# NOR flash simulator for the host tests: runs unchanged on CPython 3.11+ and on the
# MicroPython unix port (plain Python only: no typing, dataclasses or f-strings).
#
# NorFlash speaks exactly the block protocol of the ESP32 port's esp32.Partition
# (ports/esp32/esp32_partition.c in MicroPython v1.25.0):
#   readblocks(n, buf, off=0)    read len(buf) bytes at n*bs+off
#   writeblocks(n, buf, off)     program without erase (NOR: new = old AND data)
#   writeblocks(n, buf)          erase the len(buf) bytes at n*bs, then program
#   ioctl(op, arg)               1 init, 2 deinit, 3 sync -> 0; 4 block count; 5 block size;
#                                6 erase block arg -> 0; any other op -> None
# Range and alignment errors raise OSError like the ESP-IDF calls do through check_esp_err
# (errno -258 ESP_ERR_INVALID_ARG, -260 ESP_ERR_INVALID_SIZE).  One block is one erase
# sector (the port's default: 4096-byte blocks).
#
# It counts erases per sector, programs, program bytes, reads and "raised bits" (bits a
# program tried to turn from 0 to 1, which NOR flash cannot do), models the flash time, and
# cuts the power in the middle of the k-th program or erase (cut_after), after which the
# device is dead until revive() (a reboot: same memory, new life).
#
# mount_littlefs() mounts littlefs v2 over a NorFlash on the MicroPython unix port the way
# the ESP32 port mounts its vfs partition (inisetup.py / _boot.py).
#
# Use from a script run by either runtime:
#   import sys; sys.path.insert(0, "<repo>/host_tests")
#   from norflash import NorFlash, PowerCut, mount_littlefs

ESP_ERR_INVALID_ARG = 0x102
ESP_ERR_INVALID_SIZE = 0x104

_POPCOUNT = bytes(bin(i).count("1") for i in range(256))

PROG_MODES = ("none", "prefix", "bits", "all")
ERASE_MODES = ("none", "partial", "all")


class PowerCut(Exception):
    """The power failed during (or before) a flash operation; the device is off."""


def _esp_err(code, name):
    # check_esp_err (ports/esp32/mphalport.c) raises OSError(-code, name)
    return OSError(-code, name)


class NorFlash:
    # flash time model, in microseconds (typical SPI NOR: 45 ms sector erase, 0.7 ms per
    # 256-byte page program)
    ERASE_US = 45000
    PROG_CALL_US = 20
    PROG_BYTE_US = 2.7

    def __init__(self, sectors, sector_size=4096):
        if sectors < 1 or sector_size < 1:
            raise ValueError("sectors and sector_size must be positive")
        self.sectors = sectors
        self.sector_size = sector_size
        self.size = sectors * sector_size
        self._ff = b"\xff" * sector_size
        self.mem = bytearray(self.size)  # filled sector by sector: no second full-size copy
        for s in range(sectors):
            a = s * sector_size
            self.mem[a:a + sector_size] = self._ff
        self._mv = memoryview(self.mem)
        self._dead = False
        self.life = 0  # revive() starts a new one
        self._off = PowerCut("the flash has no power")  # raised where nothing can be allocated
        self._cut_in = 0  # program/erase operations left until the armed cut; 0 = none armed
        self._mode = "none"
        self._erase_mode = "none"
        self._rng = 1
        self.reset_counters()

    # ---- counters and the time model ------------------------------------------------

    def reset_counters(self):
        self.erases = [0] * self.sectors  # per sector
        self.prog_calls = 0
        self.prog_bytes = 0
        self.raised_bits = 0
        self.read_calls = 0
        self.read_bytes = 0
        self.ops = 0  # program + erase operations, the unit cut_after counts in

    def time_us(self):
        """Modelled flash time of the counted operations, in whole microseconds."""
        t = (sum(self.erases) * self.ERASE_US + self.prog_calls * self.PROG_CALL_US
             + self.prog_bytes * self.PROG_BYTE_US)
        return int(t + 0.5)

    def stats(self):
        return {
            "erases": sum(self.erases),
            "erase_max": max(self.erases),
            "sectors_erased": len([e for e in self.erases if e]),
            "prog_calls": self.prog_calls,
            "prog_bytes": self.prog_bytes,
            "raised_bits": self.raised_bits,
            "read_calls": self.read_calls,
            "read_bytes": self.read_bytes,
            "ops": self.ops,
            "time_us": self.time_us(),
        }

    # ---- the esp32.Partition block protocol ----------------------------------------

    def readblocks(self, n, buf, off=0):
        self._alive()
        addr = n * self.sector_size + off
        ln = len(buf)
        self._check_range(addr, ln)
        buf[:] = self._mv[addr:addr + ln]
        self.read_calls += 1
        self.read_bytes += ln

    def writeblocks(self, n, buf, off=None):
        self._alive()
        bs = self.sector_size
        ln = len(buf)
        if off is None:
            # esp_partition_erase_range(offset, len(buf)), then esp_partition_write
            addr = n * bs
            self._check_range(addr, ln)
            if ln % bs:
                raise _esp_err(ESP_ERR_INVALID_SIZE, "ESP_ERR_INVALID_SIZE")
            for s in range(n, n + ln // bs):
                self._erase(s)
        else:
            addr = n * bs + off
            self._check_range(addr, ln)
        self._program(addr, buf)

    def ioctl(self, op, arg):
        self._alive()
        if op == 1 or op == 2 or op == 3:  # init, deinit, sync
            return 0
        if op == 4:  # block count
            return self.sectors
        if op == 5:  # block size
            return self.sector_size
        if op == 6:  # erase block arg
            if arg < 0 or arg >= self.sectors:
                raise _esp_err(ESP_ERR_INVALID_ARG, "ESP_ERR_INVALID_ARG")
            self._erase(arg)
            return 0
        return None

    # ---- power cuts ---------------------------------------------------------------

    def cut_after(self, k, mode="none", erase_mode="none", seed=0):
        """Interrupt the k-th program-or-erase operation from now (k = 1: the next one).

        A cut program writes nothing (mode "none"), a random prefix of its bytes
        ("prefix"), a random subset of the bits it should clear ("bits") or everything
        ("all"); a cut erase leaves the sector untouched ("none"), sets a random subset
        of its bytes to 0xFF ("partial") or erases it ("all").  Then PowerCut is raised
        and the device stays dead until revive().  The cut operation is counted (ops,
        erases or prog_calls/prog_bytes, raised_bits).  The randomness is a seeded
        xorshift, so a cut is the same on both runtimes."""
        if k < 1:
            raise ValueError("k must be >= 1")
        if mode not in PROG_MODES:
            raise ValueError("mode must be one of %s" % (PROG_MODES,))
        if erase_mode not in ERASE_MODES:
            raise ValueError("erase_mode must be one of %s" % (ERASE_MODES,))
        self._cut_in = k
        self._mode = mode
        self._erase_mode = erase_mode
        self._rng = ((seed * 2654435761) ^ 0x6D2B79F5) & 0xFFFFFFFF or 0x6D2B79F5

    def cancel_cut(self):
        self._cut_in = 0

    def power_off(self):
        """Cut the power between operations: the device is dead until revive()."""
        self._dead = True
        self._cut_in = 0

    @property
    def dead(self):
        return self._dead

    def revive(self):
        """Reboot: the same memory, a new life (self.life counts them); an armed cut is
        dropped.  The garbage collector runs first, while the device is still dead, so
        that finalisers of dropped objects of the old life (littlefs files closing
        themselves) fail now instead of writing later; on MicroPython such a failure
        prints "PowerCut: ..." with a traceback on stdout.  Code that keeps this
        NorFlash itself across the cut must not use state from the old life."""
        import gc
        gc.collect()
        self._dead = False
        self._cut_in = 0
        self.life += 1
        return self

    def flip_bit(self, offset, bit):
        """Flip one bit (a retention or disturb error); not counted as an operation."""
        self.mem[offset] ^= 1 << bit

    # ---- images -------------------------------------------------------------------

    def image(self):
        return bytes(self.mem)

    @classmethod
    def from_image(cls, data, sector_size=4096):
        if len(data) % sector_size or not len(data):
            raise ValueError("image size %d is not a whole number of %d-byte sectors"
                             % (len(data), sector_size))
        f = cls(len(data) // sector_size, sector_size)
        f.mem[:] = data
        return f

    def save(self, path):
        """Write the raw image (as `esptool read-flash` writes a partition)."""
        with open(path, "wb") as f:
            f.write(self.mem)

    @classmethod
    def load(cls, path, sector_size=4096):
        import os
        size = os.stat(path)[6]
        if size % sector_size or not size:
            raise ValueError("image size %d is not a whole number of %d-byte sectors"
                             % (size, sector_size))
        fl = cls(size // sector_size, sector_size)
        with open(path, "rb") as f:
            got = 0
            while got < size:
                n = f.readinto(fl._mv[got:])
                if not n:
                    raise OSError("short read of %s" % path)
                got += n
        return fl

    # ---- internals ----------------------------------------------------------------

    def _alive(self):
        if self._dead:
            self._raise_off("the flash has no power (call revive())")

    def _raise_off(self, msg):
        try:
            e = PowerCut(msg)
        except MemoryError:  # a finaliser runs with the heap locked (MicroPython)
            e = self._off
        raise e

    def _check_range(self, addr, ln):
        # esp_partition_read/write: offset past the end -> INVALID_ARG, end past the
        # end -> INVALID_SIZE
        if addr < 0 or addr > self.size:
            raise _esp_err(ESP_ERR_INVALID_ARG, "ESP_ERR_INVALID_ARG")
        if addr + ln > self.size:
            raise _esp_err(ESP_ERR_INVALID_SIZE, "ESP_ERR_INVALID_SIZE")

    def _tick(self):
        """Count one program/erase operation; True if the power fails during it."""
        self.ops += 1
        if self._cut_in:
            self._cut_in -= 1
            return self._cut_in == 0
        return False

    def _die(self, what):
        self._dead = True
        raise PowerCut("power cut during " + what)

    def _rand32(self):
        x = self._rng
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._rng = x
        return x

    def _randbytes(self, n):
        out = bytearray(n)
        for i in range(0, n, 4):
            r = self._rand32()
            for j in range(i, min(i + 4, n)):
                out[j] = r & 0xFF
                r >>= 8
        return out

    def _erase(self, s):
        cut = self._tick()
        self.erases[s] += 1
        bs = self.sector_size
        a = s * bs
        if not cut:
            self.mem[a:a + bs] = self._ff
            return
        if self._erase_mode == "all":
            self.mem[a:a + bs] = self._ff
        elif self._erase_mode == "partial":
            p = 1 + self._rand32() % 255  # share of bytes that reach 0xFF: 1/256 .. 255/256
            r = self._randbytes(bs)
            mem = self.mem
            for i in range(bs):
                if r[i] < p:
                    mem[a + i] = 0xFF
        self._die("erase of sector %d" % s)

    def _program(self, addr, data):
        n = len(data)
        if not n:
            return
        cut = self._tick()
        self.prog_calls += 1
        self.prog_bytes += n
        end = addr + n
        oldb = self.mem[addr:end]
        if not cut and n <= self.sector_size and oldb == self._ff[:n]:
            self.mem[addr:end] = data  # programming erased flash: the common case
            return
        mask = (1 << (8 * n)) - 1
        old = int.from_bytes(oldb, "big")
        new = int.from_bytes(data, "big")
        up = new & (old ^ mask)  # bits asked to go 0 -> 1: impossible on NOR
        if up:  # (bin(up).count("1") is ~50x slower on MicroPython)
            c = 0
            for x in up.to_bytes(n, "big"):
                c += _POPCOUNT[x]
            self.raised_bits += c
        res = old & new
        if cut:
            if self._mode == "none":
                res = old
            elif self._mode == "prefix":
                k = self._rand32() % n  # bytes that made it: 0 .. n-1
                res = (res >> (8 * (n - k)) << (8 * (n - k))) | (old & ((1 << (8 * (n - k))) - 1))
            elif self._mode == "bits":
                clear = old & (new ^ mask)
                res = old ^ (clear & int.from_bytes(self._randbytes(n), "big"))
        if res == new and not cut:
            self.mem[addr:end] = data
        else:
            self.mem[addr:end] = res.to_bytes(n, "big")
        if cut:
            self._die("program of %d bytes at 0x%x" % (n, addr))


class _LifeHandle:
    """The flash as one life sees it.  littlefs objects of a life that ended in a power
    cut (a mounted VfsLfs2, open files whose finalisers close them at some later
    garbage collection) keep the handle of their life, so after revive() they get
    PowerCut instead of writing the dead life's state into the new one."""

    def __init__(self, flash):
        self.flash = flash
        self.life = flash.life

    def _check(self):
        if self.flash.life != self.life:
            self.flash._raise_off("a handle from before a power cut")

    def readblocks(self, n, buf, off=0):
        self._check()
        return self.flash.readblocks(n, buf, off)

    def writeblocks(self, n, buf, off=None):
        self._check()
        return self.flash.writeblocks(n, buf, off)

    def ioctl(self, op, arg):
        self._check()
        return self.flash.ioctl(op, arg)


def mount_littlefs(flash, mountpoint="/flash", mkfs=True):
    """Mount littlefs v2 over `flash` at `mountpoint` (MicroPython unix port only).

    As the ESP32 port does with its vfs partition: mkfs=True is inisetup.setup()
    (vfs.VfsLfs2.mkfs(bdev); vfs.mount(vfs.VfsLfs2(bdev), ...)); mkfs=False is _boot.py
    (vfs.mount(bdev, ...), which finds the littlefs superblock and makes VfsLfs2(bdev)).
    Both use the VfsLfs2 defaults (readsize 32, progsize 32, lookahead 32, block_cycles
    100, cache 128 bytes) and the flash's block size.  littlefs sees the flash through
    a handle of the flash's current life (same block protocol), so that objects left
    over from before a power cut can never write after revive().  Whatever was mounted
    at `mountpoint` is unmounted first.  Returns the VfsLfs2 object."""
    import sys
    if sys.implementation.name != "micropython":
        raise NotImplementedError(
            "mount_littlefs: the littlefs model needs the MicroPython unix port "
            "(vfs.VfsLfs2); CPython has no littlefs - run this test under rt 'micropython'")
    import vfs
    try:
        vfs.umount(mountpoint)
    except OSError:
        pass
    bdev = _LifeHandle(flash)
    if mkfs:
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
        vfs.mount(fs, mountpoint)
        return fs
    vfs.mount(bdev, mountpoint)
    for fs, path in vfs.mount():
        if path == mountpoint:
            return fs
    return None
