"""The connection supervisor (lib/mqtt/supervisor.py) on its own, sans-I/O, on both
runtimes: fed `now` and events, it answers with decisions (issue 13 item 1).  The front
ends' behaviour on top of it is covered by test_wedge, test_fake_broker, test_mosquitto
and test_aio; this pins the rules themselves, with a clock that starts just before the
30-bit tick wrap."""
from conftest import ok
from fakebroker import hexs, subscribe

SCRIPT = r'''
from mqtt.compat import ticks_add, ticks_diff
from mqtt.session import Session, SUBACKED, UNSUBACKED
from mqtt.store import MemoryStore
from mqtt.supervisor import Supervisor

T0 = (1 << 30) - 3000  # a few seconds before a 30-bit tick counter wraps
logged = []
sess = Session(MemoryStore(8), 8, 4096, 0, 10000, 1)
sess.log = logged.append
sup = Supervisor(sess, 250, 2000)

def connack(now, sp):
    """Connect the session and feed it a CONNACK (sans-I/O: bytes in, events out)."""
    sess.reset()
    sess.connect("sv", False, 0, now)
    sess.written(sess.txn - sess.txoff)
    mv = sess.rx_space()
    mv[:4] = bytes([0x20, 2, sp, 0])
    sess.received(4)
    ev = sess.next_event(now)
    assert ev[0] == 1 and ev[2] == sp, ev  # CONNECTED
    sup.up(sp, now)
    out = bytes(sess.tx[sess.txoff:sess.txn])
    sess.written(len(out))
    return " ".join("%02x" % b for b in out)

def ceilings(now, n):
    out = []
    for _ in range(n):
        d = sup.lost(OSError(104), now)
        assert sup.down and sup.next_try == ticks_add(now, d)
        assert sup.due(now) == d and sup.due(ticks_add(now, d)) == 0
        assert sup.due(ticks_add(now, d + 5)) == 0
        out.append(d)
    return out

# 1. back-off: uniform in [c/2, c], c doubling to the cap
print("DELAYS", ceilings(T0, 6))

# 2. a link that dies within cap_ms of its CONNACK does not reset it; one that lived
#    cap_ms does
connack(T0, 0)
sup.ended(ticks_add(T0, 1999))
print("SHORT", ceilings(T0, 1))
connack(T0, 0)
sup.ended(ticks_add(T0, 2000))
sess.reset()
print("HEALTHY", ceilings(ticks_add(T0, 2000), 3))

# 3. subscriptions restored after a re-connection whose broker lost the session, not
#    after one that kept it, unless a SUBSCRIBE was cut off
sup.remember([("a/#", 1), ("b", 0)])
sup.remember([("a/#", 2)])  # re-subscribing replaces, and moves it last
print("SUBS", sup.subs)
sup.lost(OSError(104), T0)
out = connack(T0, 0)
print("RESTORE_SP0", out)
assert not sup.down
sup.ended(T0)
sess.reset()
sup.lost(OSError(104), T0)
print("RESTORE_SP1", connack(T0, 1))
sup.ended(T0)
sess.reset()
sup.resub = True
sup.lost(OSError(104), T0)
out2 = connack(T0, 1)
print("RESTORE_CUT", out2)
pid = int(out2.split()[2], 16) << 8 | int(out2.split()[3], 16)
sup.event((SUBACKED, pid, b"\x02\x80"))  # the restoring SUBACK: no waiter, a log line
print("RESUB_AFTER", sup.resub, sorted(sup.acks), logged)

# 4. acks by packet id, for the requests waiting; the link's end forgets them
sup.event((SUBACKED, 7, b"\x01"))
sup.event((UNSUBACKED, 8, None))
print("ACKS", sorted(sup.acks.items()))
sup.ended(T0)
print("ACKS_AFTER_END", sup.acks)
sup.forget(["a/#"])
print("SUBS_LEFT", sup.subs)

# 5. the first connection (connect(), not a re-connection) restores nothing
sup.ended(T0)
sess.reset()
sup.down = False
print("FIRST", connack(T0, 0))
'''


def test_supervisor_rules(rt):
    out = ok(rt.run(SCRIPT))
    lines = dict((line + " ").split(" ", 1) for line in out.splitlines())
    lines = {k: v.strip() for k, v in lines.items()}
    delays = eval(lines["DELAYS"])
    for d, c in zip(delays, [250, 500, 1000, 2000, 2000, 2000]):
        assert c // 2 <= d <= c, delays
    assert 1000 <= eval(lines["SHORT"])[0] <= 2000  # no reset: still at the cap
    healthy = eval(lines["HEALTHY"])
    assert 125 <= healthy[0] <= 250 and 250 <= healthy[1] <= 500, healthy
    assert eval(lines["SUBS"]) == [("b", 0), ("a/#", 2)]
    want = subscribe(1, [("b", 0), ("a/#", 2)])
    got = bytes.fromhex(lines["RESTORE_SP0"].replace(" ", ""))
    assert got[:2] + got[4:] == want[:2] + want[4:], hexs(got)  # any packet id
    assert lines.get("RESTORE_SP1", "") == ""  # the broker kept them
    assert bytes.fromhex(lines["RESTORE_CUT"].replace(" ", ""))[4:] == want[4:]
    assert lines["RESUB_AFTER"] == "False [] ['restoring subscriptions: SUBACK 0x80 (refused)']"
    assert eval(lines["ACKS"]) == [(7, b"\x01"), (8, b"")]
    assert lines["ACKS_AFTER_END"] == "{}"
    assert eval(lines["SUBS_LEFT"]) == [("b", 0)]
