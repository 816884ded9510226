# Power-cut simulation for the flash ring, run under CPython and the unix port.
# A file wrapper records every write the store makes while a workload runs.  Then,
# for every write boundary k, the file is rebuilt as it would be if the power had
# failed during write k (write k torn: truncated, or its last bytes garbled) and the
# ring is recovered from it.  The recovered state must be the state before or after
# the operation that write k belonged to: nothing fully written is lost, nothing
# completed comes back, and recovery never raises.
#     argv: PATH [STEP]   (STEP > 1 checks every STEP-th boundary)
import sys

from mqtt.ring import RingStore
from mqtt.store import AWAIT_PUBCOMP

SIZE = 3 * 4096


class RecordingFile:
    def __init__(self, f, log):
        self.f = f
        self.log = log
        self.pos = 0

    def seek(self, pos, whence=0):
        self.pos = pos
        return self.f.seek(pos, whence)

    def write(self, buf, n=None):
        data = bytes(buf[:n] if n is not None else buf)
        self.log.append((self.pos, data))
        self.pos += len(data)
        return self.f.write(data)

    def readinto(self, buf):
        n = self.f.readinto(buf)
        self.pos += n or 0
        return n

    def flush(self):
        return self.f.flush()

    def fileno(self):
        return self.f.fileno()

    def close(self):
        return self.f.close()


def state(st):
    msgs = []
    for i in st.ordered():
        if st.msg[i] is None:
            st.load(i)
        msgs.append((st.pid[i], st.state[i], bytes(st.topic[i]), bytes(st.msg[i])))
    return (tuple(msgs), tuple(sorted(st.inbound)))


def workload(st, log, ops):
    """Operations of a device's life, including enough churn to reclaim sectors."""
    def op(f):
        first = len(log)
        before = state(st)
        f()
        ops.append((first, len(log), before, state(st)))

    live = []
    for n in range(420):
        q = 1 + n % 2
        payload = b"reading %d " % n + b"x" * (n * 7 % 90)
        op(lambda: live.append(st.pid[st.add(st.next_pid(), q, False, b"dev/t", payload)]))
        while len(live) > 12:  # acks arrive: keep about a window in flight
            pid = live.pop(0)
            i = st.find(pid)
            if st.qos[i] == 2 and st.state[i] != AWAIT_PUBCOMP:
                op(lambda: st.set_state(st.find(pid), AWAIT_PUBCOMP))
                live.append(pid)
            else:
                op(lambda: st.remove(st.find(pid)))
        if n % 7 == 0:
            op(lambda: st.in_add(100 + n))
        if n % 7 == 3:
            op(lambda: st.in_remove(st.inbound[0]))


def main():
    path = sys.argv[1]
    step = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    try:
        import os
        os.remove(path)
    except OSError:
        pass
    st = RingStore(path, SIZE, capacity=64)
    st.close()
    with open(path, "rb") as f:
        initial = f.read()
    st = RingStore(path, SIZE, capacity=64)
    log = []
    st.journal.m._f = RecordingFile(st.journal.m._f, log)
    ops = []
    workload(st, log, ops)
    st.close()
    owner = {}
    for j in range(len(ops)):
        for k in range(ops[j][0], ops[j][1]):
            owner[k] = j
    image = bytearray(initial)
    checked = 0
    for k in range(len(log)):
        pos, data = log[k]
        if k % step == 0 and k in owner:
            j = owner[k]
            allowed = (ops[j][2], ops[j][3])
            for variant in range(3):
                torn = bytearray(image)
                if variant == 0:
                    cut = data[: len(data) // 2]  # power failed halfway through the write
                elif variant == 1:
                    cut = data[:-1] + bytes([data[-1] ^ 0x55])  # last byte garbled
                else:
                    cut = b""  # the write never happened
                torn[pos : pos + len(cut)] = cut
                with open(path, "wb") as f:
                    f.write(torn)
                r = RingStore(path, SIZE, capacity=64)
                got = state(r)
                r.close()
                if got not in allowed:
                    print("FAIL write", k, "of op", j, "variant", variant)
                    print(" got     ", got)
                    print(" before  ", allowed[0])
                    print(" after   ", allowed[1])
                    sys.exit(1)
                checked += 1
        image[pos : pos + len(data)] = data
    erases = sum(RingStore(path, SIZE, capacity=64).journal.erases)
    print("OK", len(log), "writes", len(ops), "operations", checked, "torn images recovered",
          erases, "erases")
    flips(bytes(image), ops[-1][3], path)


def flips(image, truth, path):
    """Single flipped bits anywhere in a ring: never a crash, never a completed message
    or released inbound id back, never a wrong payload (a pending one may be lost)."""
    import random

    random.seed(1)
    true_msgs = set(truth[0])
    bits = len(image) * 8
    n = 0
    for trial in range(400):
        bit = random.getrandbits(24) % bits if trial % 2 else (trial * 997) % bits
        img = bytearray(image)
        img[bit // 8] ^= 1 << (bit % 8)
        with open(path, "wb") as f:
            f.write(img)
        r = RingStore(path, SIZE, capacity=64)
        got = state(r)
        r.close()
        for m in got[0]:
            if m not in true_msgs:
                # a QoS 2 message whose REL record was hit may come back un-released
                if not (m[1] != AWAIT_PUBCOMP and (m[0], AWAIT_PUBCOMP, m[2], m[3]) in true_msgs):
                    print("FAIL flip of bit", bit, "resurrected or changed", m)
                    sys.exit(1)
        for pid in got[1]:
            if pid not in truth[1]:
                print("FAIL flip of bit", bit, "brought back inbound id", pid)
                sys.exit(1)
        n += 1
    print("OK", n, "bit flips")


main()
