"""chaos: publish numbered QoS 1 and QoS 2 messages through real faults and count.

A publisher and a subscriber (both our client, on CPython or the MicroPython unix
port, each with a flash ring store and clean_session=0) talk to a persistent Mosquitto
through fault proxies, while the harness randomly:
  - cuts a client's connection,
  - black-holes it for longer than the keepalive (half-open link),
  - restarts the broker (traffic stalled, database saved, kill -9, restart),
  - kill -9s the publisher and restarts it with the same ring,
  - kill -9s the subscriber (while its link is stalled) and restarts it.
At the end every message the publisher had accepted (publish() returned) is counted at
the subscriber: QoS 1 lost must be 0; QoS 2 lost and duplicated must be 0.

    .venv/bin/python tools/chaos.py [--runtime cpython|micropython] [--seconds 60]
                                    [--rate 150] [--seed N] [--front blocking|aio] [--json]
"""
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from brokerctl import Mosquitto  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402

KEEPALIVE = 2

PUBLISHER = """
import sys
from mqtt import MQTTClient, StoreFull
from mqtt.compat import ticks_ms, ticks_diff
port, store, start, count, rate, run = sys.argv[1:7]
port = int(port); start = int(start); count = int(count); rate = int(rate)
c = MQTTClient("chaos-pub", "127.0.0.1", port, keepalive=%d, store=store, reconnect=True,
               timeout_ms=3000, ack_timeout_ms=2000, backoff_ms=100, backoff_cap_ms=2000,
               ring_capacity=96, window=16)
try:
    c.connect(clean_session=False)
except Exception as e:
    print("CONNECT-RETRY", e)
t0 = ticks_ms()
k = start
while k < start + count:
    wait = (k - start) * 1000 // rate - ticks_diff(ticks_ms(), t0)
    if wait > 0:
        c.wait_msg(wait)
    qos = 2 if k %% 2 else 1
    try:
        c.publish("chaos/t", "%%s %%d %%d" %% (run, k, qos), qos=qos)
    except StoreFull:
        c.wait_msg(50)
        continue
    print("ACK", run, k, qos)
    k += 1
while not c.flush(1000):
    pass
print("DONE reconnects", c.reconnects, "resends", c.session.resends)
c.disconnect()
""" % KEEPALIVE

SUBSCRIBER = """
import sys
from mqtt import MQTTClient
port, store = int(sys.argv[1]), sys.argv[2]
c = MQTTClient("chaos-sub", "127.0.0.1", port, keepalive=%d, store=store, reconnect=True,
               timeout_ms=3000, backoff_ms=100, backoff_cap_ms=2000, ring_capacity=16)
def got(topic, msg):
    print("GOT", msg.decode())
c.set_callback(got)
while True:
    try:
        c.connect(clean_session=False)
        if c.subscribe("chaos/t", 2) is not None:
            break
    except Exception as e:
        c.wait_msg(200)
print("READY")
while True:
    c.wait_msg(500)
""" % KEEPALIVE


# The same two clients written with the asyncio front end (mqtt.aio), for --front aio.
PUBLISHER_AIO = """
import sys
import asyncio
from mqtt.aio import MQTTClient
from mqtt import StoreFull
from mqtt.compat import ticks_ms, ticks_diff
port, store, start, count, rate, run = sys.argv[1:7]
port = int(port); start = int(start); count = int(count); rate = int(rate)
async def main():
    c = MQTTClient("chaos-pub", "127.0.0.1", port, keepalive=%d, store=store, reconnect=True,
                   timeout_ms=3000, ack_timeout_ms=2000, backoff_ms=100, backoff_cap_ms=2000,
                   ring_capacity=96, window=16)
    try:
        await c.connect(clean_session=False)
    except Exception as e:
        print("CONNECT-RETRY", e)
    t0 = ticks_ms()
    k = start
    while k < start + count:
        wait = (k - start) * 1000 // rate - ticks_diff(ticks_ms(), t0)
        if wait > 0:
            await asyncio.sleep(wait / 1000)
        qos = 2 if k %% 2 else 1
        try:
            await c.publish("chaos/t", "%%s %%d %%d" %% (run, k, qos), qos=qos)
        except StoreFull:
            await asyncio.sleep(0.05)
            continue
        print("ACK", run, k, qos)
        k += 1
    while not await c.flush(1000):
        pass
    print("DONE reconnects", c.reconnects, "resends", c.session.resends)
    await c.disconnect()
asyncio.run(main())
""" % KEEPALIVE

SUBSCRIBER_AIO = """
import sys
import asyncio
from mqtt.aio import MQTTClient
port, store = int(sys.argv[1]), sys.argv[2]
async def main():
    c = MQTTClient("chaos-sub", "127.0.0.1", port, keepalive=%d, store=store, reconnect=True,
                   timeout_ms=3000, backoff_ms=100, backoff_cap_ms=2000, ring_capacity=16)
    while True:
        try:
            # the session keeps the subscription: subscribing again would make the SUBACK
            # wait behind the messages the broker queued (all buffered meanwhile)
            if not await c.connect(clean_session=False):
                await c.subscribe("chaos/t", 2)
            break
        except Exception as e:
            await asyncio.sleep(0.2)
    print("READY")
    async for m in c.messages():
        print("GOT", m.payload.decode())
asyncio.run(main())
""" % KEEPALIVE


class Proc:
    """A client process whose stdout lines are collected by a thread."""

    def __init__(self, argv, env, lines):
        self.p = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = lines
        self.err = []
        self.max_rss_kb = 0
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            if line.endswith(b"\n"):  # a line cut short by kill -9 proves nothing
                self.lines.append(line.decode(errors="replace").strip())

    def _read_err(self):
        for line in self.p.stderr:
            self.err.append(line.decode(errors="replace").rstrip())

    def sample_rss(self):
        try:
            with open("/proc/%d/status" % self.p.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.max_rss_kb = max(self.max_rss_kb, int(line.split()[1]))
        except OSError:
            pass

    def kill(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()
        self.t.join(5)

    def alive(self):
        return self.p.poll() is None


class Chaos:
    def __init__(self, runtime="cpython", seconds=20, rate=150, seed=1, workdir=None, log=None,
                 front="blocking", micropython=None, heap="128K"):
        self.runtime = runtime
        self.front = front  # "blocking" (mqtt.MQTTClient) or "aio" (mqtt.aio.MQTTClient)
        # the unix port binary (default: $MICROPYTHON or build/bin/micropython) and its heap
        self.micropython = micropython
        self.heap = heap
        self.seconds = seconds
        self.rate = rate
        self.rng = random.Random(seed)
        self.dir = workdir or tempfile.mkdtemp(prefix="chaos-")
        self.log = log or (lambda s: None)
        self.faults = {"cut": 0, "blackhole": 0, "broker_restart": 0, "kill_publisher": 0,
                       "kill_subscriber": 0}
        self.pub_lines = []
        self.sub_lines = []
        self.procs = []
        self.crashes = []  # client processes that died on their own: always a finding

    # ---- processes ----------------------------------------------------------------
    def _script(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def _spawn(self, script, args, lines):
        env = dict(os.environ)
        if self.runtime == "micropython":
            mp = self.micropython or os.environ.get("MICROPYTHON") or os.path.join(ROOT, "build", "bin", "micropython")
            env["MICROPYPATH"] = ":".join([".frozen", os.path.join(ROOT, "build", "mpy"),
                                           os.path.join(ROOT, "lib")])
            argv = [mp, "-X", "heapsize=" + self.heap, script]
        else:
            env["PYTHONPATH"] = os.path.join(ROOT, "lib")
            argv = [sys.executable, "-u", script]
        p = Proc(argv + [str(a) for a in args], env, lines)
        self.procs.append(p)
        return p

    def _start_publisher(self, start, count):
        run = "r%d" % (self.faults["kill_publisher"])
        return self._spawn(self.pub_script, [self.pub_proxy.port, self.pub_ring, start, count,
                                             self.rate, run], self.pub_lines)

    def _next_index(self):
        ks = [int(ln.split()[2]) for ln in self.pub_lines if ln.startswith("ACK")]
        return max(ks) + 1 if ks else 0

    def _start_subscriber(self):
        p = self._spawn(self.sub_script, [self.sub_proxy.port, self.sub_ring], self.sub_lines)
        return p

    def _wait_ready(self, n_before, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for ln in self.sub_lines if ln == "READY") > n_before:
                return True
            time.sleep(0.02)
        return False

    # ---- faults -------------------------------------------------------------------
    def _stall(self, on):
        for px in (self.pub_proxy, self.sub_proxy):
            px.blackhole(on, mode="stall") if on else px.blackhole(False)

    def fault(self):
        kinds = ["cut", "blackhole", "broker_restart", "kill_publisher", "kill_subscriber"]
        done = sum(self.faults.values())
        if done < len(kinds):  # every kind at least once, in a random order
            if done == 0:
                self.rng.shuffle(kinds)
                self._first = kinds
            kind = self._first[done]
        else:
            kind = self.rng.choice(kinds + ["cut"])
        self.faults[kind] += 1
        self.log("fault: %s" % kind)
        if kind == "cut":
            self.rng.choice([self.pub_proxy, self.sub_proxy]).cut()
        elif kind == "blackhole":
            px = self.rng.choice([self.pub_proxy, self.sub_proxy])
            px.blackhole(True)
            time.sleep(KEEPALIVE * 2.5)  # longer than the keepalive: the client must notice
            px.blackhole(False)
        elif kind == "broker_restart":
            self._stall(True)
            time.sleep(0.2)
            self.broker.save()  # nothing is acknowledged between the save and the kill
            self.broker.kill()
            time.sleep(self.rng.uniform(0.1, 1.0))
            self.broker.start()
            self._stall(False)
            for px in (self.pub_proxy, self.sub_proxy):
                px.cut()
        elif kind == "kill_publisher":
            self.pub.kill()
            time.sleep(self.rng.uniform(0.0, 0.5))
            self.pub = self._start_publisher(self._next_index(), self._remaining())
        elif kind == "kill_subscriber":
            self.sub_proxy.blackhole(True, mode="stall")
            time.sleep(0.3)  # let it finish what it had received
            self.sub.kill()
            self.sub_proxy.blackhole(False)
            self.sub_proxy.cut()
            n = sum(1 for ln in self.sub_lines if ln == "READY")
            self.sub = self._start_subscriber()
            self._wait_ready(n)

    def _check_crashed(self):
        """A client that died by itself is recorded and restarted, so the run goes on."""
        if not self.pub.alive() and not any(ln.startswith("DONE") for ln in self.pub_lines):
            self.crashes.append("publisher: " + " | ".join(self.pub.err[-3:]))
            self.pub = self._start_publisher(self._next_index(), self._remaining())
        if not self.sub.alive():
            self.crashes.append("subscriber: " + " | ".join(self.sub.err[-3:]))
            n = sum(1 for ln in self.sub_lines if ln == "READY")
            self.sub = self._start_subscriber()
            self._wait_ready(n)

    def _remaining(self):
        return max(0, self.total - self._next_index())

    # ---- the run ------------------------------------------------------------------
    def run(self):
        aio = self.front == "aio"
        self.pub_script = self._script("publisher.py", PUBLISHER_AIO if aio else PUBLISHER)
        self.sub_script = self._script("subscriber.py", SUBSCRIBER_AIO if aio else SUBSCRIBER)
        self.pub_ring = os.path.join(self.dir, "pub.ring")
        self.sub_ring = os.path.join(self.dir, "sub.ring")
        self.broker = Mosquitto(os.path.join(self.dir, "broker"), persistence=True,
                                conf="max_inflight_messages 100\nmax_queued_messages 1000000").start()
        self.pub_proxy = FaultProxy(self.broker.host, self.broker.port).start()
        self.sub_proxy = FaultProxy(self.broker.host, self.broker.port).start()
        t_start = time.monotonic()
        try:
            self.sub = self._start_subscriber()
            if not self._wait_ready(0):
                raise RuntimeError("subscriber did not start: %s" % "\n".join(self.sub.err[-5:]))
            self.total = int(self.rate * self.seconds)
            self.pub = self._start_publisher(0, self.total)
            end = time.monotonic() + self.seconds
            while time.monotonic() < end:
                time.sleep(self.rng.uniform(0.3, 1.2))
                for p in (self.pub, self.sub):
                    p.sample_rss()
                self._check_crashed()
                self.fault()
            self.log("faults over; waiting for the publisher to finish")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                for p in (self.pub, self.sub):
                    p.sample_rss()
                if not self.pub.alive() and any(ln.startswith("DONE") for ln in self.pub_lines):
                    break
                self._check_crashed()
                time.sleep(0.2)
            accepted = self._accepted()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not self._all_seen(accepted):
                self._check_crashed()
                time.sleep(0.2)
            time.sleep(1.0)  # late duplicates would show up now
        finally:
            for p in self.procs:
                if p.alive():
                    p.kill()
            self.pub_proxy.stop()
            self.sub_proxy.stop()
            self.broker.stop()
        return self.report(time.monotonic() - t_start)

    def _accepted(self):
        acc = {}
        for ln in self.pub_lines:
            if ln.startswith("ACK"):
                _, run, k, q = ln.split()
                acc["%s %s %s" % (run, k, q)] = int(q)
        return acc

    def _delivered(self):
        counts = {}
        for ln in self.sub_lines:
            if ln.startswith("GOT "):
                m = ln[4:]
                counts[m] = counts.get(m, 0) + 1
        return counts

    def _all_seen(self, accepted):
        got = self._delivered()
        return all(m in got for m in accepted)

    def report(self, elapsed):
        accepted = self._accepted()
        got = self._delivered()
        q1 = [m for m, q in accepted.items() if q == 1]
        q2 = [m for m, q in accepted.items() if q == 2]
        r = {
            "runtime": self.runtime, "front": self.front, "seconds": round(elapsed, 1), "faults": dict(self.faults),
            "faults_total": sum(self.faults.values()),
            "accepted_qos1": len(q1), "accepted_qos2": len(q2),
            "lost_qos1": len([m for m in q1 if m not in got]),
            "lost_qos2": len([m for m in q2 if m not in got]),
            "duplicated_qos1": sum(n - 1 for m, n in got.items() if m.endswith(" 1") and n > 1),
            "duplicated_qos2": sum(n - 1 for m, n in got.items() if m.endswith(" 2") and n > 1),
            "delivered": sum(got.values()),
            "crashes": self.crashes,
            "publisher_max_rss_kb": max([p.max_rss_kb for p in self.procs if p.lines is self.pub_lines] or [0]),
            "subscriber_max_rss_kb": max([p.max_rss_kb for p in self.procs if p.lines is self.sub_lines] or [0]),
            "publisher_done": [ln for ln in self.pub_lines if ln.startswith("DONE")][-1:],
            "publisher_stderr": [ln for p in self.procs if p.lines is self.pub_lines for ln in p.err][-5:],
            "subscriber_stderr": [ln for p in self.procs if p.lines is self.sub_lines for ln in p.err][-5:],
        }
        return r


def summary(r):
    return ("%(runtime)s (%(front)s): %(seconds)ss, %(faults_total)d faults %(faults)s; accepted QoS 1 %(accepted_qos1)d, "
            "QoS 2 %(accepted_qos2)d; lost QoS 1 %(lost_qos1)d, QoS 2 %(lost_qos2)d; duplicated QoS 2 "
            "%(duplicated_qos2)d (QoS 1 %(duplicated_qos1)d, allowed); max RSS publisher %(publisher_max_rss_kb)d KB, "
            "subscriber %(subscriber_max_rss_kb)d KB; client crashes %(ncrash)d" % dict(r, ncrash=len(r["crashes"])))


def main(argv):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtime", choices=["cpython", "micropython"], default="cpython")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=int, default=150, help="messages per second offered")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--front", choices=["blocking", "aio"], default="blocking",
                    help="the client under test: mqtt.MQTTClient or mqtt.aio.MQTTClient")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = Chaos(a.runtime, a.seconds, a.rate, a.seed, log=lambda s: print(s, file=sys.stderr),
              front=a.front).run()
    print(json.dumps(r, indent=1) if a.json else summary(r))
    ok = r["lost_qos1"] == 0 and r["lost_qos2"] == 0 and r["duplicated_qos2"] == 0 and not r["crashes"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
