"""Publish at QoS 1 through a flash ring store: every message publish() accepted survives a
crash, kill -9 or power cut, and goes out (in order) once the broker is reachable - also
when it is down when the script starts.

    python3 examples/publish_with_ring.py [HOST [PORT [RING [COUNT]]]]
    (from a checkout without installing: PYTHONPATH=lib python3 examples/...,
     MICROPYPATH=.frozen:lib micropython examples/...)
"""
import sys

from mqtt import MQTTClient

args = sys.argv[1:] + [None] * 4
host = args[0] or "127.0.0.1"
port = int(args[1] or 1883)
ring = args[2] or "example-ring.bin"
count = int(args[3] or 10)

# reconnect=True: a lost link is re-connected from inside publish()/flush(), with back-off;
# clean_session=False: the broker keeps our session, so resends keep their packet ids.
c = MQTTClient("example-ring", host, port, keepalive=30, store=ring, ring_size=32768,
               ring_capacity=64, reconnect=True)
try:
    c.connect(clean_session=False)
except OSError as e:
    print("no broker yet (%s): publishing into the ring meanwhile" % e)
if c.in_flight():
    print("%d messages from an earlier run are still in the ring: they go first" % c.in_flight())
for i in range(count):
    c.publish(b"examples/ring", b"reading %d" % i, qos=1)  # returns once the ring holds it
if c.flush(30000):  # wait for the PUBACKs (re-connecting as needed)
    print("published %d, all acknowledged" % count)
else:
    print("%d not acknowledged yet: they stay in %s for the next run" % (c.in_flight(), ring))
c.disconnect()
