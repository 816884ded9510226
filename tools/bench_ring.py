"""bench_ring: the flash ring's costs, on CPython and the MicroPython unix port.

    .venv/bin/python tools/bench_ring.py [--messages 2000]

Measures, per runtime (store file on the local disk, 64-byte payloads):
  - bytes written to the file per durable QoS 1 message (PUB + DONE + mark) vs the
    record size, and erases per 1000 messages;
  - store operations per second: publish-side add (synced) + ack-side remove, i.e.
    the ring's own cost per QoS 1 message without the network;
  - recovery time of a full ring (every message slot in use) at start-up.
Throughput through Mosquitto with the ring vs the RAM store is in tools/bench.py.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WORKER = r"""
import sys, os, gc
from mqtt.ring import RingStore, record_bytes
from mqtt.compat import ticks_ms, ticks_diff
path, n, size, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    os.remove(path)
except OSError:
    pass
topic = b"sensors/node-1/temp"
payload = b"x" * 64
st = RingStore(path, size, capacity=cap)
w0 = st.journal.bytes_written
t = ticks_ms()
for k in range(n):
    i = st.add(st.next_pid(), 1, False, topic, payload)
    st.remove(i)
st.commit()
dt = ticks_diff(ticks_ms(), t)
per_msg = (st.journal.bytes_written - w0) / n
erases = sum(st.journal.erases)
# fill the index, then time a cold recovery
k = 0
while st.count < cap:
    st.add(st.next_pid(), 1 + k % 2, False, topic, payload)
    k += 1
st.close()
t = ticks_ms()
st = RingStore(path, size, capacity=cap)
rec_ms = ticks_diff(ticks_ms(), t)
assert st.count == cap
print('{"ops_per_s": %d, "bytes_per_msg": %.1f, "record_bytes": %d, "done_bytes": 20, '
      '"erases_per_1000": %.1f, "recovery_ms": %d, "recovered": %d, "ring_bytes": %d, "syncs": %d}' % (
      n * 1000 // max(dt, 1), per_msg, record_bytes(len(topic), len(payload)),
      erases * 1000.0 / n, rec_ms, st.count, size, st.journal.syncs))
"""


def run(runtime, n, size, cap, tmp):
    script = os.path.join(tmp, "ringbench.py")
    with open(script, "w") as f:
        f.write(WORKER)
    env = dict(os.environ)
    if runtime == "micropython":
        subprocess.run([sys.executable, os.path.join(HERE, "build_mpy.py")], check=True)
        mp = os.environ.get("MICROPYTHON") or os.path.join(ROOT, "build", "bin", "micropython")
        env["MICROPYPATH"] = ".frozen:%s" % os.path.join(ROOT, "build", "mpy")
        argv = [mp, "-X", "heapsize=128K", script]
    else:
        env["PYTHONPATH"] = os.path.join(ROOT, "lib")
        argv = [sys.executable, script]
    out = subprocess.run(argv + [os.path.join(tmp, runtime + ".ring"), str(n), str(size), str(cap)],
                         env=env, capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise SystemExit("%s failed: %s" % (runtime, out.stderr.strip().splitlines()[-1:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    n = int(argv[argv.index("--messages") + 1]) if "--messages" in argv else 2000
    size, cap = 65536, 64
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(rt, run(rt, n, size, cap, tmp)) for rt in ("cpython", "micropython")]
    print("Flash ring, %d-byte file, %d × QoS 1 messages (19-byte topic, 64-byte payload):" % (size, n))
    print()
    print("| runtime | bytes written per message | PUB record + DONE record | erases per 1000 msgs "
          "| store ops/s (add+sync, remove) | recovery of a full ring (%d messages) |" % cap)
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for rt, r in rows:
        print("| %s | %.1f | %d + %d | %.1f | %d | %d ms |" % (
            rt, r["bytes_per_msg"], r["record_bytes"], r["done_bytes"], r["erases_per_1000"],
            r["ops_per_s"], r["recovery_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
