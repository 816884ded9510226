"""The NOR flash simulator (host_tests/norflash.py) itself, on CPython and the unix port:
the esp32.Partition block protocol, NOR AND semantics, counters and the time model,
power cuts, images handed between the runtimes; and littlefs over it on the unix port."""
import hashlib

import pytest

from conftest import ok, ROOT, Runtime, MICROPYTHON
from norflash import NorFlash, PowerCut, mount_littlefs

HOST_TESTS = ROOT / "host_tests"
HEAP = "4M"  # the harness holds whole flash images; a device holds none of this

PRELUDE = """
import sys
sys.path.insert(0, sys.argv[1])
from norflash import NorFlash, PowerCut, PROG_MODES, ERASE_MODES, mount_littlefs

def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("no %s" % exc.__name__)
"""

SIM = PRELUDE + """
BS = 4096
# ---- protocol: ioctl, erased state, AND semantics, raised bits
f = NorFlash(4)
assert f.ioctl(4, 0) == 4 and f.ioctl(5, 0) == BS
assert f.ioctl(1, 0) == 0 and f.ioctl(2, 0) == 0 and f.ioctl(3, 0) == 0
assert f.ioctl(99, 0) is None
assert f.image() == b"\\xff" * (4 * BS)
buf = bytearray(4)
f.writeblocks(1, b"\\xf0\\x0f\\xaa\\x00", 100)
assert f.raised_bits == 0
f.writeblocks(1, b"\\x0f\\xff\\x55\\xff", 100)   # tries to raise 4 + 4 + 4 + 8 bits
f.readblocks(1, buf, 100)
assert buf == b"\\x00\\x0f\\x00\\x00", buf
assert f.raised_bits == 20, f.raised_bits
assert f.prog_calls == 2 and f.prog_bytes == 8 and f.ops == 2
big = bytearray(BS)
f.readblocks(1, big)                 # no offset: from the start of block 1
assert big[100:104] == b"\\x00\\x0f\\x00\\x00" and big[:100] == b"\\xff" * 100
mv = memoryview(bytearray(6))
f.readblocks(1, mv[1:5], 100)        # a memoryview, as the vfs layer may pass
assert bytes(mv) == b"\\x00\\x00\\x0f\\x00\\x00\\x00"
assert f.read_calls == 3 and f.read_bytes == BS + 8
f.writeblocks(0, b"\\x00" * 10, BS - 5)  # a program may cross a sector boundary
assert f.image()[BS - 5:BS + 5] == b"\\x00" * 10
print("OK and-semantics")

# ---- erase: ioctl(6) and writeblocks without an offset; per-sector counts
assert f.ioctl(6, 1) == 0
f.readblocks(1, big)
assert big == b"\\xff" * BS
assert f.erases == [0, 1, 0, 0]
f.writeblocks(2, b"\\x00" * 64, 0)
data = bytes(range(256)) * 16
f.writeblocks(2, data)               # erase block 2, then program: exactly data
f.readblocks(2, big)
assert big == data and f.erases == [0, 1, 1, 0] and f.raised_bits == 20
f.writeblocks(2, bytes(2 * BS))      # erases blocks 2 and 3
assert f.erases == [0, 1, 2, 1]
e = raises(OSError, f.writeblocks, 0, b"x" * 100)      # erase_range needs whole sectors
assert e.args[0] == -0x104, e.args
e = raises(OSError, f.readblocks, 4, bytearray(1))
assert e.args[0] == -0x104
raises(OSError, f.readblocks, 5, bytearray(1))
raises(OSError, f.writeblocks, 3, bytearray(10), BS - 5)
e = raises(OSError, f.ioctl, 6, 4)
assert e.args[0] == -0x102
print("OK erase")

# ---- counters, time model, stats
f.reset_counters()
assert f.erases == [0, 0, 0, 0] and f.prog_calls == 0 and f.ops == 0 and f.time_us() == 0
f.ioctl(6, 0)
f.ioctl(6, 0)
for i in range(3):
    f.writeblocks(0, b"\\x00" * 100, 100 * i)
assert f.time_us() == 2 * 45000 + 3 * 20 + 810, f.time_us()
s = f.stats()
assert s["erases"] == 2 and s["erase_max"] == 2 and s["sectors_erased"] == 1, s
assert s["prog_calls"] == 3 and s["prog_bytes"] == 300 and s["ops"] == 5 and s["time_us"] == 90870
f.ERASE_US = 1000                    # the constants are attributes
assert f.time_us() == 2000 + 60 + 810
print("OK time", NorFlash(1).time_us(), s["time_us"])

# ---- power cuts during a program
OLD = bytes((i * 37 + 11) & 0xFF | 0x81 for i in range(256))
NEW = bytes((i * 91 + 5) & 0x7E for i in range(256))
AND = bytes(a & b for a, b in zip(OLD, NEW))

def programmed(mode, seed=0, k=3):
    g = NorFlash(2)
    g.writeblocks(0, OLD, 256)
    g.cut_after(k, mode, seed=seed)
    g.ioctl(6, 1)                    # op 1 of k
    g.writeblocks(0, b"\\xfe", 0)    # op 2
    assert not g.dead
    e = raises(PowerCut, g.writeblocks, 0, NEW, 256)  # op 3: cut
    assert g.dead and "program" in str(e)
    return g, g.image()[256:512]

g, got = programmed("none")
assert got == OLD
for call in ((g.readblocks, 0, bytearray(1)), (g.writeblocks, 0, b"\\x00", 0), (g.ioctl, 4, 0),
             (g.ioctl, 6, 0), (g.writeblocks, 1, bytes(BS))):
    raises(PowerCut, *call)          # dead: every operation fails, nothing changes
assert g.image()[256:512] == OLD and g.ops == 4 and g.prog_calls == 3
g.revive()
assert not g.dead and g.life == 1
g.writeblocks(0, NEW, 256)           # same memory, new life, no cut left armed
g.writeblocks(0, b"\\x00", 0)
assert g.image()[256:512] == AND and g.image()[0] == 0
g, got = programmed("all")
assert got == AND
prefixes = set()
for seed in range(8):
    g, got = programmed("prefix", seed)
    k = [i for i in range(257) if got[:i] == AND[:i] and got[i:] == OLD[i:]]
    assert k and k[-1] < 256, (seed, got)
    prefixes.add(k[-1])
assert len(prefixes) > 4, prefixes
for seed in range(4):
    g, got = programmed("bits", seed)
    for o, a, r in zip(OLD, AND, got):
        assert r & ~o == 0 and a & ~r == 0   # only bits meant to clear, some of them
    assert got != OLD and got != AND
print("OK program-cuts", sorted(prefixes))

# ---- power cuts during an erase
def erased(mode, seed=0):
    g = NorFlash(2)
    g.writeblocks(1, bytes(BS), 0)
    g.cut_after(1, erase_mode=mode, seed=seed)
    e = raises(PowerCut, g.ioctl, 6, 1)
    assert g.dead and "erase" in str(e) and g.erases == [0, 1]
    raises(PowerCut, g.readblocks, 0, bytearray(1))
    g.revive()
    return g.image()[BS:]

assert erased("none") == bytes(BS)
assert erased("all") == b"\\xff" * BS
for seed in range(3):
    got = erased("partial", seed)
    ff = got.count(b"\\xff")
    assert 0 < ff < BS and ff + got.count(b"\\x00") == BS, ff
print("OK erase-cuts")

# a cut inside writeblocks without offset: the erase is interrupted, nothing programmed
g = NorFlash(3)
g.writeblocks(1, bytes(2 * BS))
g.cut_after(2, erase_mode="none")
raises(PowerCut, g.writeblocks, 1, b"\\x11" * (2 * BS))
assert g.image()[BS:2 * BS] == b"\\xff" * BS and g.image()[2 * BS:] == bytes(BS)
g.revive()
g.power_off()                        # a cut between operations
raises(PowerCut, g.ioctl, 5, 0)
g.revive()
assert g.life == 2
raises(ValueError, g.cut_after, 0)
raises(ValueError, g.cut_after, 1, "half")
raises(ValueError, g.cut_after, 1, "none", "some")

# ---- bit flips, images
g = NorFlash(2)
g.flip_bit(5, 3)
assert g.image()[5] == 0xF7 and g.ops == 0
h = NorFlash.from_image(g.image())
assert h.sectors == 2 and h.image() == g.image()
raises(ValueError, NorFlash.from_image, b"\\xff" * 100)
r = raises(NotImplementedError, mount_littlefs, g) if sys.implementation.name != "micropython" else None
print("OK misc", r)
"""


def test_simulator(rt, tmp_path):
    """Block protocol, AND semantics, raised bits, erase counts, time model, every cut
    mode, dead-until-revive, bit flips and images: the same script on both runtimes."""
    rt.heap = HEAP
    out = ok(rt.run(SIM, args=[HOST_TESTS]))
    for step in ("and-semantics", "erase", "time", "program-cuts", "erase-cuts", "misc"):
        assert "OK " + step in out, out


CUTS = PRELUDE + """
import binascii, hashlib
seed = int(sys.argv[2])
g = NorFlash(3)
g.writeblocks(0, bytes((i * 7) & 0xFF for i in range(3 * 4096)))
for n, (mode, emode) in enumerate([("prefix", "partial"), ("bits", "partial"), ("bits", "none")]):
    g.cut_after(1 + n, mode, emode, seed=seed + n)
    try:
        for i in range(1 + n):
            if i == n and emode != "none":
                g.ioctl(6, n)
            else:
                g.writeblocks(n, bytes((i * 13 + 1) & 0xFF for _ in range(1000)), 64 * i)
        raise AssertionError("no cut")
    except PowerCut:
        pass
    g.revive()
print("IMAGE", binascii.hexlify(hashlib.sha256(g.image()).digest()).decode(), g.stats()["ops"])
"""


def test_cuts_are_the_same_on_both_runtimes(tmp_path):
    """The cut randomness is a seeded xorshift: a given seed tears the same bytes and bits
    under CPython and the unix port, so a failing cut can be replayed on either."""
    outs = []
    for name in ("cpython", "micropython"):
        r = Runtime(name, tmp_path, heap=HEAP)
        outs.append(ok(r.run(CUTS, args=[HOST_TESTS, 5])).split("IMAGE")[1])
    assert outs[0] == outs[1]


ROUND_TRIP = PRELUDE + """
src, dst = sys.argv[2], sys.argv[3]
g = NorFlash.load(src)
assert g.sectors == 8 and g.image() == open(src, "rb").read()
assert g.image()[4096 * 3 + 17] == 0x5A and g.image()[4096 * 5:4096 * 6] == b"\\xff" * 4096
g.writeblocks(3, b"\\x0f", 17)       # AND with what the other runtime programmed
g.writeblocks(6, sys.implementation.name.encode(), 0)
g.ioctl(6, 7)
g.save(dst)
try:
    NorFlash.load(sys.argv[0])       # this script: not a whole number of sectors
    raise AssertionError("loaded a non-image")
except ValueError:
    pass
print("SAVED", g.sectors, "RAISED", g.raised_bits)
"""


def test_image_round_trip_between_runtimes(rt, tmp_path):
    """An image saved by CPython (a raw partition image, as esptool read-flash writes)
    is loaded by the runtime under test, programmed there, saved, and read back here."""
    g = NorFlash(8)
    for s in range(8):
        g.writeblocks(s, hashlib.sha256(b"%d" % s).digest() * 128)
    g.ioctl(6, 3)
    g.writeblocks(3, b"\x5a", 17)
    g.ioctl(6, 5)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    g.save(src)
    assert src.read_bytes() == g.image() and len(g.image()) == 8 * 4096
    rt.heap = HEAP
    out = ok(rt.run(ROUND_TRIP, args=[HOST_TESTS, src, dst]))
    h = NorFlash.load(dst)
    g.reset_counters()
    g.writeblocks(3, b"\x0f", 17)
    g.writeblocks(6, rt.name.encode(), 0)
    g.ioctl(6, 7)
    assert h.image() == g.image()
    assert h.image()[3 * 4096 + 17] == 0x0A
    assert "SAVED 8 RAISED %d" % g.raised_bits in out and g.raised_bits > 2


def test_mount_littlefs_is_unix_port_only():
    with pytest.raises(NotImplementedError, match="unix port"):
        mount_littlefs(NorFlash(4))


def _micropython(tmp_path):
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port missing at %s: run `make setup`" % MICROPYTHON)
    return Runtime("micropython", tmp_path, heap=HEAP)


LFS = PRELUDE + """
import os
N = int(sys.argv[2])
fl = NorFlash(64)
fs = mount_littlefs(fl)
print("MKFS", fl.stats()["erases"], "erases", fl.stats()["prog_calls"], "programs")
with open("/flash/hello.txt", "w") as f:
    f.write("hello")
assert open("/flash/hello.txt").read() == "hello" and "hello.txt" in os.listdir("/flash")

def rec(i):
    r = b"%05d:" % i
    return r + b"x" * (129 - len(r)) + b"\\n"        # 130 bytes

f = open("/flash/log", "ab")
for i in range(10):                  # warm up: the file's first blocks, the metadata pair
    f.write(rec(i))
    f.flush()
fl.reset_counters()
for i in range(10, 10 + N):
    f.write(rec(i))
    f.flush()
s = fl.stats()
print("APPEND_SYNC per record: %.2f erases %.1f programs %.0f bytes %.1f reads %.1f ms"
      % (s["erases"] / N, s["prog_calls"] / N, s["prog_bytes"] / N, s["read_calls"] / N,
         s["time_us"] / N / 1000))
print("APPEND_SYNC sectors erased", s["sectors_erased"], "max per sector", s["erase_max"])
f.close()
fl.reset_counters()
for i in range(10 + N, 10 + 2 * N):  # open, append, close per record
    with open("/flash/log", "ab") as f:
        f.write(rec(i))
s = fl.stats()
print("OPEN_APPEND_CLOSE per record: %.2f erases %.1f ms" % (s["erases"] / N, s["time_us"] / N / 1000))
fs2 = mount_littlefs(fl, mkfs=False)  # remount, as _boot.py does at boot
assert fs2 is not fs
data = open("/flash/log", "rb").read()
assert data == b"".join(rec(i) for i in range(10 + 2 * N)), len(data)
assert fl.raised_bits == 0
print("RAISED", fl.raised_bits)
"""


def test_littlefs_on_norflash_erases_per_appended_synced_record(tmp_path):
    """mkfs + mount littlefs over a 64-sector NorFlash as the ESP32 port does, write,
    append and sync a file; littlefs never asks to raise a bit.  Prints the erases per
    appended+flushed 130-byte record: the figure a flash ring has to beat."""
    out = ok(_micropython(tmp_path).run(LFS, args=[HOST_TESTS, 100]))
    print(out)
    per = float(out.split("APPEND_SYNC per record:")[1].split()[0])
    assert 0.5 <= per <= 3, out
    assert "RAISED 0" in out


LFS_CUT = PRELUDE + """
import os
R = 30
base = NorFlash(64)
mount_littlefs(base)
with open("/flash/old.txt", "w") as f:
    f.write("kept")
base_img = base.image()

def rec(i):
    r = b"%05d:" % i
    return r + b"y" * (129 - len(r)) + b"\\n"

def workload(fl):
    # returns the number of records flushed before the cut
    synced = 0
    try:
        f = open("/flash/log", "ab")
        for i in range(R):
            f.write(rec(i))
            f.flush()
            synced = i + 1
        f.close()
    except PowerCut:
        return synced, True
    return synced, False

class Recording(NorFlash):
    # notes which operations are programs and which erases, to cut at either
    def _program(self, addr, data):
        NorFlash._program(self, addr, data)
        if len(data):
            self.progs.append(self.ops)

    def _erase(self, s):
        NorFlash._erase(self, s)
        self.erase_ops.append(self.ops)

fl = Recording.from_image(base_img)
mount_littlefs(fl, mkfs=False)
fl.reset_counters()
fl.progs = []
fl.erase_ops = []
assert workload(fl) == (R, False)
total = fl.ops
progs = fl.progs
erase_ops = fl.erase_ops
print("WORKLOAD", total, "operations", len(progs), "programs", len(erase_ops), "erases")
expect = b"".join(rec(i) for i in range(R))
seed = int(sys.argv[2])
x = seed * 7919 + 1
trials = int(sys.argv[3])
for t in range(trials):
    x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    # a random program, a random erase, or any operation
    k = (progs[x % len(progs)], erase_ops[x % len(erase_ops)], 1 + x % total)[t % 3]
    mode = PROG_MODES[t % 4]
    emode = ERASE_MODES[(t // 3) % 3]
    fl = NorFlash.from_image(base_img)
    mount_littlefs(fl, mkfs=False)
    fl.cut_after(k, mode, emode, seed=t)
    synced, cut = workload(fl)
    assert cut and fl.dead, (t, k)
    fl.revive()
    mount_littlefs(fl, mkfs=False)   # must mount: no mkfs after a power cut
    assert open("/flash/old.txt").read() == "kept"
    try:
        got = open("/flash/log", "rb").read()
    except OSError:
        got = b""
    n = len(got) // 130
    assert got == expect[:len(got)] and len(got) % 130 == 0, (t, k, len(got))
    assert synced <= n <= synced + 1, (t, k, synced, n)  # a flushed record is never lost
    with open("/flash/log", "ab") as f:  # and the file system is usable
        f.write(b"after")
    mount_littlefs(fl, mkfs=False)
    assert open("/flash/log", "rb").read() == got + b"after"
    assert fl.raised_bits == 0
    print("CUT t=%d op %d/%d (%s) %s/%s: %d flushed, %d after reboot"
          % (t, k, total, "erase" if k in erase_ops else "program", mode, emode, synced, n))
print("CUTS", trials)
"""


def test_littlefs_mounts_after_a_power_cut_at_a_random_operation(tmp_path):
    """Cut the power at a random program or erase of an append+flush workload on
    littlefs (every program and erase cut mode), reboot: the file system mounts without
    mkfs, keeps every flushed record and stays writable."""
    out = ok(_micropython(tmp_path).run(LFS_CUT, args=[HOST_TESTS, 11, 24], timeout=60))
    print(out)
    assert "CUTS 24" in out
