# Benchmark worker for the MicroPython unix port (also runs on CPython for the
# "ours" throughput cases).  Driven by tools/bench.py: one case per process, the
# result printed as one JSON line on stdout.  Not meant to be run by hand, but:
#
#   MICROPYPATH=.frozen:lib[:build/umqtt] build/bin/micropython -X heapsize=128K \
#       tools/bench_mp.py CASE PORT N CLIENT_ID [options]
#
# CASE: ours0 ours1 ours2      our client, QoS 0/1/2, window 16 (option store=PATH)
#       aio0 aio1 aio2         the asyncio client, the same (options store=PATH, tasks=K)
#       umqtt0 umqtt1          umqtt.simple as shipped (option nodelay=1, cap_s=S)
#       side                   the side-by-side QoS 0 driver (see q0_side): option
#                              client=ours|aio|umqtt|paho, topic=T, nodelay=1 (umqtt)
#       mem                    heap footprint and per-message allocation of ours
#       heap                   heap after import, and with 16 QoS 1 in flight (option
#                              store=PATH: the flash ring; N is ignored)
#       aioheap                the same for the asyncio client (mqtt.aio)
#
# Timed region: from just before the first publish until the last message is
# acknowledged (QoS 1/2: flush() for ours, umqtt's QoS 1 publish already waits
# for PUBACK); QoS 0: the last publish returned, then a PINGREQ/PINGRESP round
# trip so the data has really passed through the broker's input.
import sys
import gc
import json

try:
    from time import ticks_us, ticks_diff
except ImportError:  # CPython
    import time

    def ticks_us():
        return time.perf_counter_ns() // 1000

    def ticks_diff(a, b):
        return a - b


TOPIC = b"bench/t"
PAYLOAD = b"x" * 64


def opts(args):
    d = {}
    for a in args:
        k, _, v = a.partition("=")
        d[k] = v
    return d


def out(**kw):
    print(json.dumps(kw))


def ours(qos, port, n, cid, o):
    from mqtt import MQTTClient

    store = o.get("store") or None
    c = MQTTClient(cid, "127.0.0.1", port, window=16, store=store, timeout_ms=30000,
                   sync_every=int(o.get("sync", 1)))
    c.connect()
    topic = TOPIC
    payload = PAYLOAD
    pub = c.publish
    t0 = ticks_us()
    for _ in range(n):
        pub(topic, payload, False, qos)
    t1 = ticks_us()
    if qos:
        if not c.flush(60000):
            raise RuntimeError("flush timed out")
    else:
        c.ping()
        if not c.wait_msg(30000):
            raise RuntimeError("no PINGRESP")
    t2 = ticks_us()
    c.disconnect()
    # tail_us: the final flush() / ping round trip alone
    out(n=n, us=ticks_diff(t2, t0), tail_us=ticks_diff(t2, t1))


def aio(qos, port, n, cid, o):
    """The asyncio client (mqtt.aio), the same timed region as ours(); option tasks=K
    publishes from K tasks at once (n/K each).  QoS 0's closing round trip is a
    SUBSCRIBE/SUBACK (the asyncio client has no ping())."""
    import asyncio
    from mqtt.aio import MQTTClient

    store = o.get("store") or None
    k = int(o.get("tasks", 1))
    res = {}

    async def run(c, m):
        pub = c.publish
        topic = TOPIC
        payload = PAYLOAD
        for _ in range(m):
            await pub(topic, payload, False, qos)

    async def main():
        c = MQTTClient(cid, "127.0.0.1", port, window=16, store=store, timeout_ms=30000,
                       sync_every=int(o.get("sync", 1)))
        await c.connect()
        t0 = ticks_us()
        if k == 1:
            await run(c, n)
        else:
            await asyncio.gather(*[run(c, n // k) for _ in range(k)])
        t1 = ticks_us()
        if qos:
            if not await c.flush(60000):
                raise RuntimeError("flush timed out")
        else:
            await c.subscribe(b"bench/rt/" + cid.encode(), 0)
        t2 = ticks_us()
        await c.disconnect()
        res.update(n=n // k * k, us=ticks_diff(t2, t0), tail_us=ticks_diff(t2, t1))

    asyncio.run(main())
    out(**res)


def umqtt(qos, port, n, cid, o):
    from umqtt.simple import MQTTClient

    c = MQTTClient(cid, "127.0.0.1", port)
    c.connect()
    if o.get("nodelay") == "1":
        c.sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (Linux values)
    cap_us = int(float(o.get("cap_s", "0")) * 1000000)
    topic = TOPIC
    payload = PAYLOAD
    pub = c.publish
    done = 0
    t0 = ticks_us()
    if cap_us:
        while done < n and ticks_diff(ticks_us(), t0) < cap_us:
            pub(topic, payload, False, qos)
            done += 1
    else:
        for _ in range(n):
            pub(topic, payload, False, qos)
        done = n
    if qos == 0:
        c.ping()
        c.wait_msg()  # blocks until the PINGRESP (returns None for it)
    us = ticks_diff(ticks_us(), t0)
    c.disconnect()
    out(n=done, us=us)


def q0_side(port, n, cid, o):
    """QoS 0 side by side: the same loop drives every client, n x 64-byte publish() of one
    bytes topic, no warm-up.  Prints t0_ns (time.time_ns() just before the first publish,
    so that tools/bench.py's subscriber can time the broker's copy on the same clock) and
    written_us: from just before the first publish() until every byte was written to the
    socket (each client's publish() returns only then, except CPython's asyncio transport
    and paho, which buffer: those are waited for until their buffer is empty).
    After that (untimed) a round trip through the broker, then DISCONNECT."""
    import time

    kind = o.get("client", "ours")
    topic = o.get("topic", "bench/q0").encode()
    payload = PAYLOAD
    res = {}
    if kind == "aio":
        import asyncio
        from mqtt.aio import MQTTClient

        async def main():
            c = MQTTClient(cid, "127.0.0.1", port, timeout_ms=30000)
            await c.connect()
            pub = c.publish
            t0_ns = time.time_ns()
            t0 = ticks_us()
            for _ in range(n):
                await pub(topic, payload, False, 0)
            w = c._w
            if hasattr(w, "transport"):  # CPython: until the transport's buffer is empty
                while w.transport.get_write_buffer_size():
                    await asyncio.sleep(0)
            t1 = ticks_us()
            await c.subscribe(b"bench/rt/" + cid.encode(), 0)
            t2 = ticks_us()
            res.update(t0_ns=t0_ns, written_us=ticks_diff(t1, t0), rt_us=ticks_diff(t2, t0))
            await c.disconnect()

        asyncio.run(main())
    elif kind == "paho":  # CPython only: publish(topic, payload, qos, retain), a network thread
        import threading
        import paho.mqtt.client as paho

        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid)
        ready = threading.Event()
        c.on_connect = lambda *a: ready.set()
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        if not ready.wait(30):
            raise RuntimeError("no CONNACK")
        p = c.publish
        pub = (lambda t, m, r, q: p(t, m, q, r))  # the driver's argument order
        topic = topic.decode()  # paho takes a str topic
        t0_ns = time.time_ns()
        t0 = ticks_us()
        for _ in range(n):
            info = pub(topic, payload, False, 0)
        info.wait_for_publish(60)  # QoS 0: set once written to the socket, in order
        t1 = ticks_us()
        res.update(t0_ns=t0_ns, written_us=ticks_diff(t1, t0))
        c.disconnect()
        c.loop_stop()
    else:
        if kind == "umqtt":
            from umqtt.simple import MQTTClient

            c = MQTTClient(cid, "127.0.0.1", port)
        else:
            from mqtt import MQTTClient

            c = MQTTClient(cid, "127.0.0.1", port, timeout_ms=30000)
        c.connect()
        if o.get("nodelay") == "1":
            c.sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (ours sets it anyway)
        pub = c.publish
        t0_ns = time.time_ns()
        t0 = ticks_us()
        for _ in range(n):
            pub(topic, payload, False, 0)
        t1 = ticks_us()
        c.ping()
        c.wait_msg()  # the PINGRESP
        t2 = ticks_us()
        res.update(t0_ns=t0_ns, written_us=ticks_diff(t1, t0), rt_us=ticks_diff(t2, t0))
        c.disconnect()
    out(n=n, **res)


def mem(port, n, cid, o):
    """Heap figures of our client on this runtime (run with -X heapsize=128K)."""
    r = {}
    gc.collect()
    base = gc.mem_alloc()
    from mqtt import MQTTClient

    gc.collect()
    r["code_import"] = gc.mem_alloc() - base  # imported modules (bytecode, qstrs, classes)
    gc.disable()  # from here on nothing is freed: mem_alloc only grows (peak bound)
    a = gc.mem_alloc()
    c = MQTTClient(cid, "127.0.0.1", port, window=16, timeout_ms=30000)
    c.connect()
    topic = TOPIC
    payload = PAYLOAD
    for _ in range(16):
        c.publish(topic, payload, False, 1)  # window 16: none blocks; acks left unread
    r["inflight"] = c.in_flight()
    r["peak_bound"] = gc.mem_alloc() - base  # code + all allocated since, nothing freed
    r["alloc_connect_16"] = gc.mem_alloc() - a
    gc.enable()
    gc.collect()
    r["footprint"] = gc.mem_alloc() - base  # code + client, connected, 16 in flight
    # The client's own share: what dropping it frees.  (footprint - code is not used:
    # part of an import's allocation can land after it, so that split is unstable.)
    c.close()
    c = None
    gc.collect()
    r["state"] = r["footprint"] - (gc.mem_alloc() - base)
    r["code"] = r["footprint"] - r["state"]
    c = MQTTClient(cid, "127.0.0.1", port, window=16, timeout_ms=30000)
    c.connect()

    # Steady-state per-message allocation.  Measured in chunks with the GC off inside
    # each chunk (a collection in between), so a leak cannot exhaust the 128K heap.
    pub = c.publish

    def warm():
        for _ in range(64):
            pub(topic, payload, False, 0)
        for q in (1, 2):
            for _ in range(48):
                pub(topic, payload, False, q)
            c.flush(30000)
        c.ping()
        c.wait_msg(30000)

    warm()

    def qos0(total):
        alloc = 0
        done = 0
        while done < total:
            k = min(100, total - done)
            gc.collect()
            gc.disable()
            a = gc.mem_alloc()
            for _ in range(k):
                pub(topic, payload, False, 0)
            alloc += gc.mem_alloc() - a
            gc.enable()
            done += k
            # let the broker drain (not measured)
            c.ping()
            c.wait_msg(30000)
        return alloc

    def qosn(q, total):
        """Windows of 16: the publish calls and the flush (ack handling) separately."""
        a_pub = 0
        a_ack = 0
        done = 0
        while done < total:
            k = min(16, total - done)
            gc.collect()
            gc.disable()
            a = gc.mem_alloc()
            for _ in range(k):
                pub(topic, payload, False, q)
            b = gc.mem_alloc()
            ok = c.flush(30000)
            e = gc.mem_alloc()
            gc.enable()
            if not ok:
                raise RuntimeError("flush timed out")
            a_pub += b - a
            a_ack += e - b
            done += k
        return a_pub, a_ack

    r["n"] = n
    r["q0"] = qos0(n)
    r["q1_pub"], r["q1_ack"] = qosn(1, n)
    r["q2_pub"], r["q2_ack"] = qosn(2, n)

    # Receiving (QoS 0 and 1 loopback through the broker, publish + delivery).
    got = [0]

    def cb(t, m):
        got[0] += 1

    c.set_callback(cb)
    c.subscribe(b"bench/rx/" + cid.encode(), 1)
    rt = b"bench/rx/" + cid.encode()
    for q in (0, 1):
        for _ in range(16):
            pub(rt, payload, False, q)
        c.flush(30000)
        while got[0] < 16:
            c.wait_msg(5000)
        got[0] = 0
        alloc = 0
        done = 0
        while done < n:
            k = min(16, n - done)
            gc.collect()
            gc.disable()
            a = gc.mem_alloc()
            for _ in range(k):
                pub(rt, payload, False, q)
            while got[0] < k or c.in_flight():
                if not c.wait_msg(5000):
                    break
            alloc += gc.mem_alloc() - a
            gc.enable()
            if got[0] < k:
                raise RuntimeError("loopback messages missing")
            got[0] = 0
            done += k
        r["rx%d" % q] = alloc
    c.disconnect()
    out(**r)


def heap(port, cid, o):
    """The heap figures `make size` reports (tools/size.py, tools/bench.py): what importing the
    library takes, with the flash ring too when store=PATH, and what a connected client with 16
    QoS 1 messages in flight adds (acks left unread, as on a device in the middle of a burst)."""
    store = o.get("store") or None
    r = {"bits": 32 if sys.maxsize == 0x7FFFFFFF else 64}
    gc.collect()
    r["heap_total"] = gc.mem_alloc() + gc.mem_free()
    base = gc.mem_alloc()
    from mqtt import MQTTClient

    if store:
        import mqtt.ring  # noqa: F401  (what MQTTClient(store=path) imports)
    gc.collect()
    r["import"] = gc.mem_alloc() - base
    if store:
        # the ring's recovery at start-up reads the medium in small pieces (garbage the GC
        # takes back): it is not the steady state, so the bound starts after it
        c = MQTTClient(cid, "127.0.0.1", port, window=16, store=store, timeout_ms=30000)
        gc.collect()
    gc.disable()  # nothing freed from here: mem_alloc only grows (an upper bound of the peak)
    if not store:
        c = MQTTClient(cid, "127.0.0.1", port, window=16, store=store, timeout_ms=30000)
    c.connect()
    for _ in range(16):
        c.publish(TOPIC, PAYLOAD, False, 1)
    r["inflight"] = c.in_flight()
    r["peak_bound"] = gc.mem_alloc() - base
    gc.enable()
    gc.collect()
    r["footprint"] = gc.mem_alloc() - base  # live: code + connected client + 16 in flight
    c.disconnect()
    # where the library came from: a .mpy file's path, or its name in a frozen image
    r["mqtt_file"] = sys.modules["mqtt"].__file__
    if store:
        r["ring_file"] = sys.modules["mqtt.ring"].__file__
    out(**r)


def aioheap(port, cid, o):
    """heap() for the asyncio client: import (asyncio's own share in "asyncio"), then a
    connected client with 16 QoS 1 messages in flight (published without a suspension, so
    the acks are still unread)."""
    r = {"bits": 32 if sys.maxsize == 0x7FFFFFFF else 64}
    gc.collect()
    base = gc.mem_alloc()
    import asyncio

    gc.collect()
    r["asyncio"] = gc.mem_alloc() - base
    from mqtt.aio import MQTTClient

    gc.collect()
    r["import"] = gc.mem_alloc() - base

    async def main():
        gc.disable()
        c = MQTTClient(cid, "127.0.0.1", port, window=16, timeout_ms=30000)
        await c.connect()
        for _ in range(16):
            await c.publish(TOPIC, PAYLOAD, False, 1)
        r["inflight"] = c.in_flight()
        r["peak_bound"] = gc.mem_alloc() - base
        gc.enable()
        gc.collect()
        r["footprint"] = gc.mem_alloc() - base
        await c.disconnect()

    asyncio.run(main())
    out(**r)


def main():
    case, port, n, cid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    o = opts(sys.argv[5:])
    if case.startswith("ours"):
        ours(int(case[4:]), port, n, cid, o)
    elif case == "aioheap":
        aioheap(port, cid, o)
    elif case.startswith("aio"):
        aio(int(case[3:]), port, n, cid, o)
    elif case.startswith("umqtt"):
        umqtt(int(case[5:]), port, n, cid, o)
    elif case == "side":
        q0_side(port, n, cid, o)
    elif case == "mem":
        mem(port, n, cid, o)
    elif case == "heap":
        heap(port, cid, o)
    else:
        raise SystemExit("unknown case " + case)


main()
