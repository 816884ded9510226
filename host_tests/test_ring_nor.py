"""The flash ring on the NOR-flash simulator, as it runs on an ESP32: on a raw partition
(the esp32.Partition block protocol) and, on the unix port, as a log ring on littlefs
mounted over the simulator the way the ESP32 port mounts its vfs.  Power cuts at any
flash operation (mid-program and mid-erase included), bit flips, and end to end against
Mosquitto with the power cut while the client publishes."""
import random
import time

import pytest

from conftest import ok, ROOT

HOST_TESTS = ROOT / "host_tests"
HEAP = "4M"  # the harness holds whole flash images; the ring itself needs none of this


def test_power_cut_at_every_flash_operation(rt):
    """Every program/erase of a device's life cut (prefix, bits, none; erase partial,
    none, all), with a second cut during the recovery that follows: the recovered state
    is the one before or after the interrupted operation, and the ring never asks the
    flash to raise a bit."""
    rt.heap = HEAP
    step = 1 if rt.name == "cpython" else 2
    out = ok(rt.run(script=HOST_TESTS / "ring_nor.py", args=[HOST_TESTS, "cuts", step, 150], timeout=120))
    assert out.startswith("OK") and " cuts recovered" in out, out


def test_bit_flips_never_resurrect_nor_lose_another_message(rt):
    rt.heap = HEAP
    out = ok(rt.run(script=HOST_TESTS / "ring_nor.py", args=[HOST_TESTS, "flips", 300, 150], timeout=120))
    assert "OK 300 bit flips" in out, out


DEVICE = """
import sys
sys.path.insert(0, sys.argv[1])
from norflash import NorFlash, PowerCut, mount_littlefs
from mqtt import MQTTClient
port, img, medium, qos, run, start, count, cut = sys.argv[2:10]
qos = int(qos); start = int(start); count = int(count); cut = int(cut)
try:
    fl = NorFlash.load(img)
    fresh = False
except OSError:
    fl = NorFlash(16 if medium == "partition" else 48)
    fresh = True
if medium == "partition":
    store = fl
else:
    mount_littlefs(fl, mkfs=fresh)  # as the ESP32 boots: mkfs only on a blank flash
    store = "/flash/ring"
if cut:
    fl.cut_after(cut, ("prefix", "bits", "none")[cut % 3], ("partial", "none", "all")[cut % 3], seed=cut)
try:
    c = MQTTClient("nor-dev", "127.0.0.1", int(port), store=store, window=8, keepalive=30,
                   ring_size=8 * 4096, ring_medium="log")
    print("PENDING", c.in_flight())
    c.connect(clean_session=False)
    for k in range(start, start + count):
        c.publish("nor/t", "%s-%d" % (run, k), qos=qos)
        print("ACK", run, k)  # accepted: the PUB record is on the flash
    print("FLUSHED", c.flush(20000))
    c.disconnect()
except PowerCut:
    print("CUT")
fl.revive()  # the flash keeps what was programmed; write it out for the next boot
fl.save(img)
print("RAISED", fl.raised_bits)
"""


@pytest.mark.parametrize("qos", [1, 2])
@pytest.mark.parametrize("medium", ["partition", "littlefs"])
def test_power_cuts_while_publishing_to_mosquitto_lose_nothing(rt, broker, peer_factory, tmp_path, qos, medium):
    """MQTTClient(store=<NOR partition>) (or a log ring on littlefs over it) publishes
    numbered messages to a real Mosquitto; the power is cut at a random flash operation,
    again and again; each boot resumes from the flash.  Every message whose publish()
    returned arrives: at least once at QoS 1, exactly once at QoS 2."""
    if medium == "littlefs" and rt.name != "micropython":
        pytest.skip("littlefs is modelled with the unix port's vfs.VfsLfs2")
    rt.heap = HEAP
    rng = random.Random(qos * 10 + len(medium))
    p = peer_factory(broker, client_id="nor-sub-%s-%d" % (medium, qos), clean=False)
    p.subscribe("nor/t", 2)
    img = tmp_path / "flash.img"
    accepted = []
    k = cuts = 0
    for run in range(9):
        final = run == 8
        cut = 0 if final else rng.randint(3, 120 if medium == "partition" else 400)
        out = ok(rt.run(DEVICE, args=[HOST_TESTS, broker.port, img, medium, qos, "r%d" % run, k,
                                      30 if final else 100000, cut], timeout=90))
        lines = out.splitlines()
        acks = ["%s-%s" % tuple(ln.split()[1:3]) for ln in lines if ln.startswith("ACK")]
        accepted += acks
        k += len(acks) + 1
        assert "RAISED 0" in lines, out
        if final:
            assert "FLUSHED True" in lines, out
        else:
            assert "CUT" in lines, out
            cuts += 1
    # wait for every accepted message, not for a count: QoS 1 duplicates inflate the count
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not set(accepted) <= set(m[1].decode() for m in p.messages):
        time.sleep(0.1)
    got = [m[1].decode() for m in p.messages]
    counts = {}
    for m in got:
        counts[m] = counts.get(m, 0) + 1
    lost = [a for a in accepted if a not in counts]
    dups = {m: n for m, n in counts.items() if n > 1}
    print("%s QoS %d: %d cuts, %d accepted, %d delivered, lost %d, duplicated %d" % (
        medium, qos, cuts, len(accepted), len(got), len(lost), len(dups)))
    assert cuts == 8 and len(accepted) > 40
    assert lost == []
    if qos == 2:
        assert dups == {}
