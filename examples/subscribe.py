"""Subscribe and print what arrives, as umqtt.simple code does it (set_callback, wait_msg).

    python3 examples/subscribe.py [HOST [PORT [FILTER [COUNT]]]]
    (from a checkout without installing: PYTHONPATH=lib python3 examples/...,
     MICROPYPATH=.frozen:lib micropython examples/...)
"""
import sys

from mqtt import MQTTClient

args = sys.argv[1:] + [None] * 4
host = args[0] or "127.0.0.1"
port = int(args[1] or 1883)
topic_filter = args[2] or "examples/#"
count = int(args[3] or 5)
got = []


def on_message(topic, msg):
    print(topic.decode(), msg.decode())
    got.append(msg)


c = MQTTClient("example-sub", host, port, keepalive=30)
c.set_callback(on_message)
c.connect()
print("granted QoS", c.subscribe(topic_filter, qos=1))  # SUBACK is in: nothing is missed now
while len(got) < count:
    c.wait_msg()  # one packet, or PINGREQ when the keepalive is due
c.disconnect()
