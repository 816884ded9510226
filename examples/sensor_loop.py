"""A sensor node without the firmware: every PERIOD seconds read a sensor and publish JSON at
QoS 1 through a ring store; a retained status says online, and offline when the node leaves
(the broker publishes the last will if it vanishes); broker outages are ridden out. The same
file runs on CPython, the unix port and an ESP32 (with Wi-Fi up and a real sensor).

    python3 examples/sensor_loop.py [HOST [PORT [COUNT [PERIOD [RING]]]]]
    (from a checkout without installing: PYTHONPATH=lib python3 examples/...,
     MICROPYPATH=.frozen:lib micropython examples/...)
"""
import json
import sys
import time

from mqtt import MQTTClient

args = sys.argv[1:] + [None] * 5
host = args[0] or "127.0.0.1"
port = int(args[1] or 1883)
count = int(args[2] or 5)
period = float(args[3] or 1)
ring = args[4] or "sensor-ring.bin"
prefix = "sensors/example"


def read_sensor(n):
    """Stands in for a real sensor (machine.ADC, dht.DHT22, ds18x20 ... on a board)."""
    return 21.0 + (n % 7) / 10


c = MQTTClient("example-sensor", host, port, keepalive=10, store=ring, reconnect=True)
c.set_last_will(prefix + "/status", "offline", retain=True, qos=1)
try:
    c.connect(clean_session=False)
except OSError as e:
    print("broker unreachable (%s): readings wait in the ring" % e)
c.publish(prefix + "/status", "online", retain=True, qos=1)
for n in range(count):
    c.publish(prefix + "/temperature", json.dumps({"seq": n, "v": read_sensor(n)}), qos=1)
    start = time.time()
    while time.time() - start < period:  # acks, PINGREQ and re-connecting while idle
        c.wait_msg(max(1, int((period - (time.time() - start)) * 1000)))
c.publish(prefix + "/status", "offline", retain=True, qos=1)
c.flush(10000)
c.disconnect()
print("sent %d readings" % count)
