# The flash ring on the NOR-flash simulator (host_tests/norflash.py), run under CPython
# and the unix port: the ring as it runs on a raw ESP32 partition.
#   cuts:  a reference run of a device's life records the state before and after each
#          store operation.  Then, for every K-th flash operation k, the same life runs
#          on a fresh flash with the power cut at operation k - mid-program (a prefix
#          of the bytes, or some of the bits, taken) or mid-erase - and a second cut is
#          armed during the recovery that follows.  The recovered state must be the
#          state before or after the interrupted operation: nothing lost, nothing
#          completed back, never an exception, never an attempt to raise a bit.
#   flips: single flipped bits anywhere in the final image: never a crash, never a
#          completed message or released inbound id back; a pending message may only
#          be lost when the flipped bit lies inside its own PUB record.
#     argv: HOST_TESTS MODE STEP MESSAGES    (MODE: cuts | flips)
import sys

sys.path.insert(0, sys.argv[1])
from norflash import NorFlash, PowerCut  # noqa: E402
from mqtt.ring import RingStore  # noqa: E402
from mqtt.ringfmt import rec_size, REC_HDR  # noqa: E402
from mqtt.store import AWAIT_PUBCOMP  # noqa: E402

SECTORS = 3
MODES = (("prefix", "partial"), ("bits", "none"), ("none", "all"), ("prefix", "none"), ("bits", "partial"))


def state(st):
    msgs = []
    for i in st.ordered():
        if st.msg[i] is None:
            st.load(i)
        msgs.append((st.pid[i], st.state[i], bytes(st.topic[i]), bytes(st.msg[i])))
    return (tuple(msgs), tuple(sorted(st.inbound)))


def workload(st, op, n_msgs):
    """A device's life: QoS 1 and 2 publishes acknowledged a window later, inbound QoS 2
    ids, and enough churn to reclaim every sector several times."""
    live = []
    for n in range(n_msgs):
        q = 1 + n % 2
        payload = b"reading %d " % n + b"x" * (n * 7 % 90)
        op(lambda: live.append(st.pid[st.add(st.next_pid(), q, False, b"dev/t", payload)]))
        while len(live) > 12:
            pid = live.pop(0)
            if st.qos[st.find(pid)] == 2 and st.state[st.find(pid)] != AWAIT_PUBCOMP:
                op(lambda: st.set_state(st.find(pid), AWAIT_PUBCOMP))
                live.append(pid)
            else:
                op(lambda: st.remove(st.find(pid)))
        if n % 7 == 0:
            op(lambda: st.in_add(100 + n))
        if n % 7 == 3:
            op(lambda: st.in_remove(st.inbound[0]))


def reference(n_msgs):
    fl = NorFlash(SECTORS)
    st = RingStore(fl, capacity=64)
    ops = []

    def op(f):
        before = state(st)
        f()
        ops.append((before, state(st)))

    start = fl.ops
    workload(st, op, n_msgs)
    assert fl.raised_bits == 0, "the ring tried to raise %d bits" % fl.raised_bits
    return ops, fl.ops - start, fl, st


def cuts(step, n_msgs):
    ops, total, _, _ = reference(n_msgs)
    checked = 0
    for k in range(1, total + 1, step):
        mode, emode = MODES[k % len(MODES)]
        fl = NorFlash(SECTORS)
        st = RingStore(fl, capacity=64)
        fl.cut_after(k, mode, emode, seed=k)
        at = [0]

        def op(f):
            f()
            at[0] += 1

        try:
            workload(st, op, n_msgs)
            raise AssertionError("no cut at operation %d of %d" % (k, total))
        except PowerCut:
            pass
        j = at[0]
        allowed = (ops[j][0], ops[j][1])
        fl.revive()
        fl.cut_after(1 + k % 4, MODES[(k + 1) % len(MODES)][0], MODES[(k + 2) % len(MODES)][1], seed=k + 1)
        try:
            RingStore(fl, capacity=64).close()  # recovery may write: it can be cut too
        except PowerCut:
            pass
        fl.revive()
        fl.cancel_cut()
        r = RingStore(fl, capacity=64)
        got = state(r)
        if got not in allowed:
            print("FAIL cut at flash operation", k, "(%s/%s) during store operation" % (mode, emode), j)
            print(" got     ", got)
            print(" before  ", allowed[0])
            print(" after   ", allowed[1])
            sys.exit(1)
        # the recovered ring keeps working: one more message through its whole life
        i = r.add(r.next_pid(), 2, False, b"dev/after", b"cut %d" % k)
        r.set_state(i, AWAIT_PUBCOMP)
        r.remove(i)
        again = state(RingStore(fl, capacity=64))
        assert again == got, (k, again, got)
        assert fl.raised_bits == 0, "the ring tried to raise %d bits (cut %d)" % (fl.raised_bits, k)
        checked += 1
    print("OK", total, "flash operations", checked, "cuts recovered")


def flips(trials, n_msgs):
    ops, _, fl, st = reference(n_msgs)
    truth = ops[-1][1]
    true_msgs = set(truth[0])
    owner = {}  # byte offset -> pid of the live PUB record there
    hb = bytearray(REC_HDR)
    for i in st.ordered():
        off = st.journal.loc[i]
        fl.readblocks(0, hb, off)
        for b in range(off, off + rec_size(hb[2] | hb[3] << 8)):
            owner[b] = st.pid[i]
    image = fl.image()
    rng = 12345
    for t in range(trials):
        rng = (rng * 1103515245 + 12345) & 0x7FFFFFFF
        bit = rng % (len(image) * 8)
        f = NorFlash.from_image(image)
        f.flip_bit(bit // 8, bit % 8)
        r = RingStore(f, capacity=64)
        got = state(r)
        r.close()
        for m in got[0]:
            if m not in true_msgs:
                # a QoS 2 message whose REL record was hit may come back un-released
                if not (m[1] != AWAIT_PUBCOMP and (m[0], AWAIT_PUBCOMP, m[2], m[3]) in true_msgs):
                    print("FAIL flip of bit", bit, "resurrected or changed", m)
                    sys.exit(1)
        have = set(m[0] for m in got[0])
        for m in truth[0]:
            if m[0] not in have and owner.get(bit // 8) != m[0]:
                print("FAIL flip of bit", bit, "lost message", m[0], "(the bit is not in its record)")
                sys.exit(1)
        for pid in got[1]:
            if pid not in truth[1]:
                print("FAIL flip of bit", bit, "brought back inbound id", pid)
                sys.exit(1)
    print("OK", trials, "bit flips")


if __name__ == "__main__":
    (cuts if sys.argv[2] == "cuts" else flips)(int(sys.argv[3]), int(sys.argv[4]))
