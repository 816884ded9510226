"""The flash ring store: no accepted QoS 1/2 message lost (nor, at QoS 2, duplicated)
across kill -9, power cuts and corrupt files — on CPython and the unix port."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import ok, ROOT

sys.path.insert(0, str(ROOT / "tools"))
from faultproxy import FaultProxy  # noqa: E402


def test_power_cut_at_every_write_boundary_recovers_without_loss_or_resurrection(rt, tmp_path):
    """ring_powercut.py tears every write of a workload (cut halfway, garbled, lost)
    and recovers; then flips single bits.  The harness needs more heap than a device,
    the library under test does not."""
    rt.heap = "32M"
    out = ok(rt.run(script=ROOT / "host_tests" / "ring_powercut.py", args=[tmp_path / "ring.bin"],
                    timeout=120))
    assert "torn images recovered" in out and "bit flips" in out


FUZZ = """
import sys, random
from mqtt.ring import RingStore, RingError
random.seed(int(sys.argv[2]))
path = sys.argv[1]
good = open(sys.argv[3], "rb").read()
n = 0
for trial in range(int(sys.argv[4])):
    kind = trial % 3
    if kind == 0:      # random bytes of a random length
        data = bytes(random.getrandbits(8) for _ in range(random.getrandbits(15)))
    elif kind == 1:    # a real ring, truncated anywhere
        data = good[: random.getrandbits(16) % (len(good) + 1)]
    else:              # a real ring with random bytes overwritten
        data = bytearray(good)
        for _ in range(1 + random.getrandbits(4)):
            data[random.getrandbits(16) % len(data)] = random.getrandbits(8)
    with open(path, "wb") as f:
        f.write(data)
    try:
        r = RingStore(path, 4 * 4096, capacity=32)
        r.close()
    except RingError:
        pass
    n += 1
print("FUZZED", n)
"""


def _good_ring(path):
    sys.path.insert(0, str(ROOT / "lib"))
    from mqtt.ring import RingStore
    st = RingStore(str(path), 4 * 4096, capacity=32)
    for n in range(40):
        i = st.add(st.next_pid(), 1 + n % 2, False, b"t/x", b"payload %d" % n)
        if n % 2:
            st.remove(i)
    st.in_add(9)
    st.close()
    return path


def test_recovery_scanner_survives_random_files(rt, tmp_path):
    """Random bytes, truncations and overwrites: recovery never raises anything but
    RingError (a file that is not a ring at all) and always terminates."""
    good = _good_ring(tmp_path / "good.bin")
    rt.heap = "4M"  # the harness builds whole files in RAM; the library needs far less
    out = ok(rt.run(FUZZ, args=[tmp_path / "fuzz.bin", 7, good, 150 if rt.name == "cpython" else 90],
                    timeout=120))
    assert "FUZZED" in out


def test_recovery_scanner_fuzzed_with_hypothesis(tmp_path):
    """CPython only (hypothesis): any bytes at all, any configured size."""
    from hypothesis import given, settings, strategies as st, HealthCheck

    sys.path.insert(0, str(ROOT / "lib"))
    from mqtt.ring import RingStore, RingError

    path = str(tmp_path / "h.bin")

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=5 * 4096), st.integers(min_value=3, max_value=5))
    def check(data, sectors):
        with open(path, "wb") as f:
            f.write(data)
        try:
            r = RingStore(path, sectors * 4096, capacity=16)
            assert r.count <= 16
            r.close()
        except RingError:
            pass

    check()


def test_store_full_raises_and_keeps_what_was_accepted(rt, broker, peer_factory, tmp_path):
    """Offline, the ring fills up: publish raises StoreFull; every message it had
    accepted is delivered once the broker is reachable."""
    p = peer_factory(broker)
    p.subscribe("full/t", 2)
    out = ok(rt.run("""
import sys
from mqtt import MQTTClient, StoreFull
c = MQTTClient("filler", "127.0.0.1", %d, store=sys.argv[1], ring_size=12288)
n = 0
try:
    while True:
        c.publish("full/t", "m%%04d" %% n + "x" * 200, qos=1 + n %% 2)  # not connected yet: into the ring
        n += 1
except StoreFull as e:
    print("FULL", n, e)
c.connect(clean_session=False)
print("FLUSHED", c.flush(10000))
c.disconnect()
""" % broker.port, args=[tmp_path / "full.ring"]))
    n = int(out.split("FULL")[1].split()[0])
    assert n > 20 and "FLUSHED True" in out
    got = p.wait_for(n)
    assert sorted(m[1][:5] for m in got) == sorted(b"m%04d" % i for i in range(n))


PUBLISHER = """
import sys
from mqtt import MQTTClient
port, store, qos, run, start, count = sys.argv[1:7]
qos = int(qos); start = int(start); count = int(count)
c = MQTTClient("durable-pub", "127.0.0.1", int(port), store=store, window=8, keepalive=30)
c.connect(clean_session=False)
for k in range(start, start + count):
    c.publish("dur/t", "%s-%d" % (run, k), qos=qos)
    print("ACK", run, k)       # accepted: publish() returned
print("FLUSHED", c.flush(20000))
c.disconnect()
"""


@pytest.mark.parametrize("qos", [1, 2])
def test_kill9_publisher_at_random_points_loses_nothing(rt, broker, peer_factory, tmp_path, qos):
    """kill -9 the publisher again and again while it publishes numbered messages with
    a ring store, restart it with the same store and client id (clean_session=False).
    Every accepted message arrives: at least once at QoS 1, exactly once at QoS 2."""
    rng = random.Random(qos)
    p = peer_factory(broker, client_id="durable-sub", clean=False)
    p.subscribe("dur/t", 2)
    store = tmp_path / "pub.ring"
    accepted = []
    k = 0
    cuts = 0
    for run in range(10):
        final = run == 9
        proc = rt.spawn(PUBLISHER, args=[broker.port, store, qos, "r%d" % run, k, 40 if final else 100000])
        if not final:
            time.sleep(rng.uniform(0.15, 0.6))
            proc.send_signal(signal.SIGKILL)
            cuts += 1
        out, err = proc.communicate(timeout=60)
        text = out.decode()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines.pop()  # cut short by the kill: not an acknowledgement the test can rely on
        acks = [ln.split()[1] + "-" + ln.split()[2] for ln in lines if ln.startswith("ACK")]
        accepted += acks
        k += len(acks) + 1
        if final:
            assert proc.returncode == 0, err.decode()
            assert "FLUSHED True" in lines
    got = p.wait_for(len(accepted), timeout=30)
    time.sleep(0.5)
    got = [m[1].decode() for m in p.messages]
    counts = {}
    for m in got:
        counts[m] = counts.get(m, 0) + 1
    lost = [a for a in accepted if a not in counts]
    dups = {m: n for m, n in counts.items() if n > 1}
    print("QoS %d: %d cuts, %d accepted, %d delivered, lost %d, duplicated %d" % (
        qos, cuts, len(accepted), len(got), len(lost), len(dups)))
    assert cuts == 9 and len(accepted) > 100
    assert lost == []
    if qos == 2:
        assert dups == {}


SUBSCRIBER = """
import sys
from mqtt import MQTTClient
port, store = int(sys.argv[1]), sys.argv[2]
c = MQTTClient("durable-in", "127.0.0.1", port, store=store, keepalive=30)
def cb(t, m):
    print("GOT", m.decode())
c.set_callback(cb)
print("SP", c.connect(clean_session=False))
c.subscribe("in/t", 2)
print("READY")
while True:
    c.wait_msg()
"""


def test_inbound_qos2_exactly_once_across_kill_between_pubrec_and_pubrel(rt, broker, peer_factory, tmp_path):
    """The subscriber stores the id before PUBREC; it is killed while the PUBREL is held
    back (the proxy drops it), restarted with its ring: the broker resends PUBREL, the
    app never sees the message twice, and later messages still arrive."""
    store = tmp_path / "in.ring"
    p = peer_factory(broker)
    with FaultProxy(broker.host, broker.port) as proxy:
        sub = rt.spawn(SUBSCRIBER, args=[proxy.port, store])
        try:
            assert sub.stdout.readline().startswith(b"SP")
            assert sub.stdout.readline().strip() == b"READY"
            proxy.drop("PUBREL", count=1, direction="b2c")
            p.publish("in/t", "first", qos=2)
            assert sub.stdout.readline().strip() == b"GOT first"
            assert proxy.wait_for(lambda s: s["b2c"]["dropped"].get("PUBREL", 0) == 1, timeout=10)
            sub.send_signal(signal.SIGKILL)  # PUBREC sent, PUBREL never seen
            sub.wait()
        finally:
            sub.kill()
        sub = rt.spawn(SUBSCRIBER, args=[proxy.port, store])
        try:
            assert sub.stdout.readline().strip() == b"SP True"
            assert sub.stdout.readline().strip() == b"READY"
            assert proxy.wait_for(lambda s: s["c2b"]["packets"].get("PUBCOMP", 0) >= 1, timeout=10)
            p.publish("in/t", "second", qos=2)
            assert sub.stdout.readline().strip() == b"GOT second"
            time.sleep(0.3)
        finally:
            sub.kill()
            out, _ = sub.communicate(timeout=10)
    assert b"GOT first" not in out  # not delivered again after the restart


def test_ringdump_prints_states_and_wear(tmp_path):
    ring = _good_ring(tmp_path / "dump.bin")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "ringdump.py"), str(ring), "--records"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "messages owed (20)" in r.stdout and "AWAIT_PUBACK" in r.stdout
    assert "inbound QoS 2 ids awaiting PUBREL: 9" in r.stdout
    assert "erases" in r.stdout and "CRC failures 0" in r.stdout
    data = bytearray(ring.read_bytes())
    data[40] ^= 0xFF  # corrupt the first record
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "ringdump.py"), str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "CRC failures 1" in r.stdout


def test_mqttc_store_publishes_offline_and_resumes_after_a_kill(rt, tmp_path, make_broker, peer_factory):
    """mqttc pub --store -c with no broker: messages go into the ring; the process is
    killed; later `mqttc pub --store PATH -c -i ID` (no message option) completes them."""
    from conftest import free_port
    port = free_port()
    store = str(tmp_path / "cli.ring")
    p = rt.mqttc_spawn("pub", "-p", str(port), "--store", store, "-c", "-i", "cli-ring", "-t", "cli/r",
                       "-l", "-q", "2", stdin=subprocess.PIPE)
    p.stdin.write(b"".join(b"offline %d\n" % i for i in range(5)))
    p.stdin.close()
    time.sleep(1.5)  # accepted into the ring, nobody to send them to
    p.send_signal(signal.SIGKILL)
    p.wait()
    b = make_broker(port=port)
    sub = peer_factory(b)
    sub.subscribe("cli/r", 2)
    r = rt.mqttc("pub", "-p", str(port), "--store", store, "-c", "-i", "cli-ring", timeout=60)
    ok(r)
    got = sub.wait_for(5)
    time.sleep(0.3)
    assert [m[1] for m in sub.messages] == [b"offline %d" % i for i in range(5)]


FLOOD_SUB = """
import sys
from mqtt import MQTTClient
c = MQTTClient("flooded", "127.0.0.1", int(sys.argv[1]), store=sys.argv[2], keepalive=10,
               reconnect=True, backoff_ms=50, backoff_cap_ms=500)
c.set_callback(lambda t, m: print("GOT", m.decode()))
c.connect(clean_session=False)
c.subscribe("flood/t", 2)
print("READY")
n = int(sys.argv[3])
from mqtt.compat import ticks_ms, ticks_diff
t = ticks_ms()
while ticks_diff(ticks_ms(), t) < 40000:
    c.wait_msg(200)
"""


def test_inbound_qos2_flood_larger_than_the_ring_is_delivered_exactly_once(rt, broker, peer_factory, tmp_path):
    """A broker floods 1500 QoS 1/2 messages before the first PUBREL; the ring holds at
    most 256 open QoS 2 ids, so the client sheds the rest unacknowledged (DISCONNECT after
    its acks, then a reconnect) and the broker resends them: every message reaches the app
    exactly once, nothing crashes."""
    n = 1500
    sub = rt.spawn(FLOOD_SUB, args=[broker.port, tmp_path / "flood.ring", n])
    try:
        assert sub.stdout.readline().strip() == b"READY"
        p = peer_factory(broker)
        for i in range(n):
            p.c.publish("flood/t", "f%d" % i, 1 + i % 2)  # QoS 1 too: acks must survive the sheds
        got = []
        deadline = time.monotonic() + 60
        while len(set(got)) < n and time.monotonic() < deadline:
            line = sub.stdout.readline()
            if not line:
                break
            if line.startswith(b"GOT"):
                got.append(line.split()[1].decode())
        time.sleep(0.5)
    finally:
        sub.kill()
        rest, err = sub.communicate(timeout=10)
    got += [ln.split()[1].decode() for ln in rest.splitlines() if ln.startswith(b"GOT")]
    assert sorted(set(got)) == sorted("f%d" % i for i in range(n)), err.decode()[-500:]
    assert len(got) == n  # no duplicate, QoS 1 included: no fault here, so a repeat would mean lost acks


def test_mqttc_store_resumes_without_c_as_new_publications(rt, tmp_path, make_broker, peer_factory):
    """pub --store PATH -t T without -c: a clean session, yet the ring's accepted
    messages are not discarded - they go out as new publications, then it exits 0."""
    sys.path.insert(0, str(ROOT / "lib"))
    from mqtt.ring import RingStore
    store = str(tmp_path / "resume.ring")
    st = RingStore(store)
    for i in range(3):
        st.add(st.next_pid(), 1 + i % 2, False, b"res/t", b"kept %d" % i)
    st.close()
    b = make_broker()
    sub = peer_factory(b)
    sub.subscribe("res/t", 2)
    ok(rt.mqttc("pub", "-p", str(b.port), "--store", store, "-t", "res/t"))
    sub.wait_for(3)
    time.sleep(0.3)
    assert sorted(m[1] for m in sub.messages) == [b"kept 0", b"kept 1", b"kept 2"]  # QoS 1 and 2 interleave
    assert RingStore(store).count == 0


GEOMETRY = """
import sys
from mqtt.ring import RingStore, RingError
from mqtt.ringfmt import SECTOR
path = sys.argv[1]
st = RingStore(path, 16 * SECTOR, capacity=64)
for k in range(30):
    st.add(st.next_pid(), 1 + k % 2, False, b"geo/t", b"m%02d" % k + b"x" * 1500)
st.close()
# reopened with a quarter of the size and half the capacity: nothing is dropped
warned = []
st = RingStore(path, 4 * SECTOR, capacity=16, log=warned.append)
got = [bytes(m[5][:3]) for m in st.outbox()]
assert got == [b"m%02d" % k for k in range(30)], got
assert len([w for w in warned if "kept whole" in w]) == 1, warned
assert st.journal.nsec == 16 and st.capacity >= 30, (st.journal.nsec, st.capacity)
print("NOTES", st.journal.reasons)
# the outbox: drop one by its order, the rest stay in order
orders = [m[0] for m in st.outbox()]
assert st.discard(orders[3]) and not st.discard(99999)
st.close()
st = RingStore(path, 4 * SECTOR, capacity=16)
got = [bytes(m[5][:3]) for m in st.outbox()]
assert got == [b"m%02d" % k for k in range(30) if k != 3], got
st.close()
# a sector written by another format version is refused, naming it, and left untouched
data = bytearray(open(path, "rb").read())
import struct
from binascii import crc32
h = struct.pack("<4sIII", b"RQ\\x03\\xa5", 1, 0, 1)
data[5 * SECTOR:5 * SECTOR + 20] = h + struct.pack("<I", crc32(h))
open(path, "wb").write(data)
try:
    RingStore(path, 16 * SECTOR)
    raise AssertionError("no RingError")
except RingError as e:
    assert "format version 3" in str(e), e
    print("REFUSED", e)
assert open(path, "rb").read() == data
print("OK")
"""


def test_ring_never_shrinks_refuses_other_versions_and_drops_by_order(rt, tmp_path):
    """Reopening a ring with a smaller ring_size or capacity keeps every pending message
    (the ring keeps its size, the index grows); outbox()/discard() list and drop by
    acceptance order; a sector of another format version raises RingError naming it."""
    rt.heap = "1M"
    out = ok(rt.run(GEOMETRY, args=[tmp_path / "geo.ring"]))
    assert "OK" in out and "REFUSED" in out, out


def _partition_image(tmp_path):
    """A ring as the device leaves it on its partition, dumped whole-flash by esptool:
    the ring on a RamFlash at the ring partition's offset of a 4 MB flash image with the
    partition table the devkitc board gets."""
    sys.path.insert(0, str(ROOT / "lib"))
    sys.path.insert(0, str(ROOT / "tools"))
    import json
    import partitions
    from ringdump import RamFlash
    from mqtt.ring import RingStore
    board = json.loads((ROOT / "boards" / "esp32-devkitc.json").read_text())
    _, parts, _, table = partitions.board_table(board)
    ring = [p for p in parts if p.name == "ring"][0]
    dev = RamFlash(bytearray(b"\xff" * ring.size))
    st = RingStore(dev, capacity=64)
    for k in range(12):
        i = st.add(st.next_pid(), 2, False, b"part/t", b"p%02d" % k)
        if k < 4:
            st.remove(i)
        elif k < 6:
            from mqtt.store import AWAIT_PUBCOMP
            st.set_state(i, AWAIT_PUBCOMP)
    st.hold(st.ordered()[-1])  # the last one set aside as poison
    st.close()
    flash = bytearray(b"\xff" * (4 << 20))
    flash[0x8000:0x8000 + len(table)] = table
    flash[ring.offset:ring.offset + ring.size] = dev.data
    whole = tmp_path / "flash.bin"
    whole.write_bytes(flash)
    img = tmp_path / "ring.img"
    img.write_bytes(bytes(dev.data))
    return whole, img, ring


def test_ringdump_reads_partition_images_and_flash_dumps_and_drops(tmp_path):
    whole, img, ring = _partition_image(tmp_path)
    tool = [sys.executable, str(ROOT / "tools" / "ringdump.py")]
    for target in (whole, img):
        r = subprocess.run(tool + [str(target)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert "messages owed (7)" in r.stdout and r.stdout.count("AWAIT_PUBCOMP") == 2, r.stdout
        assert "held (1)" in r.stdout and "p11" not in r.stdout, r.stdout
    r = subprocess.run(tool + [str(whole), "--label", "nope"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "without a partition labelled 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(tool + [str(whole), "--json"], capture_output=True, text=True, timeout=30)
    import json
    orders = [m["order"] for m in json.loads(r.stdout)["messages"]]
    r = subprocess.run(tool + [str(whole), "--drop", str(orders[0]), "--drop", str(orders[-1])],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "2 removed, 5 messages pending, 1 held" in r.stdout, r.stdout + r.stderr
    held = json.loads(subprocess.run(tool + [str(whole), "--json"], capture_output=True, text=True,
                                     timeout=30).stdout)["held"]
    assert [h["payload_len"] for h in held] == [3]
    r = subprocess.run(tool + [str(whole), "--release", str(held[0]["order"])], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "1 released, 6 messages pending, 0 held" in r.stdout, r.stdout + r.stderr
    data = whole.read_bytes()
    assert data[:0x8000] == b"\xff" * 0x8000  # only the partition was written back
    r = subprocess.run(tool + [str(whole), "--json"], capture_output=True, text=True, timeout=30)
    left = [m["order"] for m in json.loads(r.stdout)["messages"]]
    assert left[:-1] == orders[1:-1] and left[-1] > orders[-1]  # the released one at the end
    r = subprocess.run(tool + [str(img), "--purge"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "0 messages pending" in r.stdout
    r = subprocess.run(tool + [str(img)], capture_output=True, text=True, timeout=30)
    assert "messages owed (0)" in r.stdout


def test_ringdump_never_shows_a_traceback(tmp_path):
    tool = [sys.executable, str(ROOT / "tools" / "ringdump.py")]
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(10000))
    cases = [([], 2), ([str(tmp_path / "missing")], 3), ([str(empty)], 3), ([str(junk)], 3),
             ([str(tmp_path)], 3), (["--bogus"], 2), ([str(junk), "--drop", "x"], 2)]
    for args, code in cases:
        r = subprocess.run(tool + args, capture_output=True, text=True, timeout=30)
        assert r.returncode == code and "Traceback" not in r.stderr and r.stderr.startswith("ringdump: "), \
            (args, r.returncode, r.stderr)
    ring = _good_ring(tmp_path / "g.ring")
    p = subprocess.Popen(tool + [str(ring), "--records"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()  # the reader went away, as `| head` does
    err = p.stderr.read().decode()
    assert p.wait(30) == 0 and "Traceback" not in err, err


LOGRING = """
import sys
from mqtt.ring import RingStore
from mqtt.store import AWAIT_PUBCOMP
path = sys.argv[1]
st = RingStore(path, 3 * 4096, capacity=64, medium="log")
live = []
for k in range(300):  # enough to reclaim every sector file several times
    i = st.add(st.next_pid(), 1 + k % 2, False, b"log/t", b"l%03d" % k + b"y" * (k % 50))
    live.append(st.pid[i])
    if len(live) > 5:
        j = st.find(live.pop(0))
        if st.qos[j] == 2:
            st.set_state(j, AWAIT_PUBCOMP)
        st.remove(j)
st.close()
st = RingStore(path, 3 * 4096, medium="log")
print("LEFT", " ".join(bytes(m[5][:4]).decode() for m in st.outbox()))
print("ERASES", st.journal.stats()["erases"])
"""


def test_log_ring_directory_round_trip_and_ringdump(rt, tmp_path):
    """The append-only log medium (what a path becomes on a board's littlefs) on a host
    directory: reclaiming removes sector files, recovery finds the last 5 messages, and
    ringdump reads and edits the directory."""
    d = tmp_path / "logring"
    out = ok(rt.run(LOGRING, args=[d]))
    assert "LEFT l295 l296 l297 l298 l299" in out, out
    assert all(n.isdigit() for n in os.listdir(d)) and len(os.listdir(d)) <= 3
    tool = [sys.executable, str(ROOT / "tools" / "ringdump.py")]
    r = subprocess.run(tool + [str(d), "--json"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    import json
    orders = [m["order"] for m in json.loads(r.stdout)["messages"]]
    assert len(orders) == 5
    r = subprocess.run(tool + [str(d), "--drop", str(orders[0])], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = ok(rt.run("from mqtt.ring import RingStore\nimport sys\nst = RingStore(sys.argv[1], medium='log')\n"
                    "print('LEFT', len(st.outbox()))", args=[d]))
    assert "LEFT 4" in out


HOLD = """
import sys
sys.path.insert(0, sys.argv[1])
from norflash import NorFlash
from mqtt.ring import RingStore
from mqtt.store import MemoryStore
for kind in ("ram", "nor", "log"):
    fl = NorFlash(3)
    def reopen():
        if kind == "nor":
            return RingStore(fl, capacity=16)
        return RingStore(sys.argv[2], 3 * 4096, capacity=16, medium="log")
    st = MemoryStore(16) if kind == "ram" else reopen()
    orders = []
    for k in range(3):
        st.add(st.next_pid(), 1, False, b"h/t", b"msg%d" % k)
    poison = st.ordered()[1]
    order = st.seq[poison]
    st.hold(poison)
    assert [bytes(m[5]) for m in st.outbox()] == [b"msg0", b"msg2"] and list(st.held) == [order]
    if kind != "ram":
        # churn: every sector reclaimed a few times; the held message is carried along
        for k in range(200):
            st.remove(st.add(st.next_pid(), 2, False, b"churn", b"c" * 100))
        st.close()
        st = reopen()
        assert list(st.held) == [order], st.held
        assert [bytes(m[5]) for m in st.outbox()] == [b"msg0", b"msg2"]
    assert st.release(order) and not st.held and not st.release(order)
    out = [bytes(m[5]) for m in st.outbox()]
    assert out == [b"msg0", b"msg2", b"msg1"], out  # back at the end of the queue
    if kind != "ram":
        st.close()
        st = reopen()
        assert [bytes(m[5]) for m in st.outbox()] == out and not st.held
    i = st.ordered()[0]
    o2 = st.seq[i]
    st.hold(i)
    assert st.discard(o2) and not st.held
    if kind != "ram":
        st.close()
        st = reopen()
        assert not st.held and [bytes(m[5]) for m in st.outbox()] == [b"msg2", b"msg1"]
        if kind == "log":
            import os
            for f in os.listdir(sys.argv[2]):
                os.remove(sys.argv[2] + "/" + f)
    print("OK", kind)
"""


def test_held_messages_survive_reboot_and_reclaim_and_can_be_released_or_dropped(rt, tmp_path):
    rt.heap = "2M"
    out = ok(rt.run(HOLD, args=[ROOT / "host_tests", tmp_path / "held"]))
    assert "OK ram" in out and "OK nor" in out and "OK log" in out, out
