"""Poison messages: a stored message the broker closes the link over every time it gets
it is held (kept, counted, reported) instead of blocking the queue behind it forever;
an ordinary flapping link never holds a good message (Session.link_ended's rule)."""
import random
import sys
import threading
import time

from conftest import ok, ROOT

sys.path.insert(0, str(ROOT / "tools"))
from faultproxy import FaultProxy  # noqa: E402

POISON = """
import sys
from mqtt import MQTTClient
port, store = int(sys.argv[1]), sys.argv[2]
lines = []
c = MQTTClient("poisoned", "127.0.0.1", port, store=None if store == "ram" else store, reconnect=True,
               backoff_ms=20, backoff_cap_ms=150, keepalive=30, log=lines.append)
c.connect(clean_session=False)
c.publish("p/t", "m0", qos=1)
c.publish("p/t", "x" * 3000, qos=1)       # more than the broker's max_packet_size
for k in range(2, 10):
    c.publish("p/t", "m%d" % k, qos=1 + k % 2)
print("FLUSHED", c.flush(20000))
print("HELD", c.session.held, sorted(c.store.held))
print("LOG", [ln for ln in lines if "held" in ln])
order = sorted(c.store.held)[0]
c.disconnect()
if store != "ram":
    from mqtt.ring import RingStore
    st = RingStore(store)
    print("AFTER REBOOT", sorted(st.held) == [order], st.count)
"""


def test_a_message_the_broker_always_refuses_is_held_and_the_rest_flow(rt, make_broker, peer_factory, tmp_path):
    """Mosquitto drops a client that sends a packet over max_packet_size, so the 3000-byte
    message makes it close the link each time it is resent: after 5 strikes it is held
    and the messages behind it are delivered; the held message survives a reboot."""
    broker = make_broker(conf="max_packet_size 2000")
    p = peer_factory(broker, client_id="poison-sub", clean=False)
    p.subscribe("p/t", 1)
    for store in ("ram", str(tmp_path / "poison.ring")):
        out = ok(rt.run(POISON, args=[broker.port, store], timeout=60))
        assert "FLUSHED True" in out and "HELD 1 [2]" in out, out
        assert "message 2 held (topic p/t)" in out, out
        if store != "ram":
            assert "AFTER REBOOT True 0" in out, out
    got = p.wait_for(18, timeout=20)
    payloads = sorted(set(m[1] for m in got))
    assert payloads == sorted([b"m0"] + [b"m%d" % k for k in range(2, 10)]), payloads


FLAPPING = """
import sys
from mqtt import MQTTClient
port, store, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = MQTTClient("flapper", "127.0.0.1", port, store=store, reconnect=True, backoff_ms=10,
               backoff_cap_ms=60, keepalive=30, window=4)
c.connect(clean_session=False)
for k in range(n):
    c.publish("flap/t", "f%04d" % k, qos=1 + k % 2)
print("FLUSHED", c.flush(60000))
print("HELD", c.session.held, c.reconnects if hasattr(c, "reconnects") else "")
c.disconnect()
"""


def test_a_flapping_link_never_holds_a_good_message(rt, broker, peer_factory, tmp_path):
    """The link is cut (RST or FIN) at random moments every 10-100 ms while 1000 messages go out:
    many connections end right after a PUBLISH, none five times in a row inside the one
    round trip after the first PUBLISH: nothing is held, everything arrives."""
    p = peer_factory(broker, client_id="flap-sub", clean=False)
    p.subscribe("flap/t", 2)
    rng = random.Random(7)
    with FaultProxy(broker.host, broker.port) as fp:
        stop = threading.Event()

        def cutter():
            while not stop.is_set():
                time.sleep(rng.uniform(0.01, 0.1))
                fp.cut(rst=rng.random() < 0.5)

        t = threading.Thread(target=cutter, daemon=True)
        t.start()
        try:
            out = ok(rt.run(FLAPPING, args=[fp.port, tmp_path / "flap.ring", 1000], timeout=120))
        finally:
            stop.set()
            t.join()
        cuts = fp.stats()["cuts"]
    assert "FLUSHED True" in out and "HELD 0" in out, out
    got = p.wait_for(1000, timeout=30)
    assert sorted(set(m[1] for m in got)) == [b"f%04d" % k for k in range(1000)]
    assert cuts >= 10, cuts
