#!/usr/bin/env python3
"""faultproxy: a fault-injection TCP proxy for MQTT 3.1.1 testing (CPython, stdlib only).

It sits between MQTT clients and a broker, forwards whole MQTT packets in both directions, and
on command injects the faults a flaky network (or a buggy peer) produces:

* ``cut()``            abruptly close every current connection, both sides (RST by default);
                       new connections are still accepted.
* ``blackhole(True)``  a half-open link: nothing is forwarded either way and nothing is closed,
                       so both ends see silence.  Two modes:
                         ``"discard"`` (default) data is read and thrown away, like packets lost
                                       in a partition; an end that closes is not told to the
                                       other.  When the hole is lifted, a connection that lost
                                       data (or lost one end) is cut, as its TCP stream is broken.
                         ``"stall"``   nothing is read or written; when lifted, everything
                                       flows on, nothing lost (a partition shorter than TCP's
                                       retransmission give-up).
                       Connections accepted while a hole is on are held: accepted, not read,
                       no broker connection, until the hole is lifted.
* ``delay_ms``         one-way latency added in both directions (10 ms => +20 ms round trip),
                       order preserved; a timestamped per-direction queue, so packets in flight
                       overlap instead of being serialised.
* ``drop(type, n, direction)``       swallow the next n packets of a type (e.g. PUBACK b2c).
* ``duplicate(type, n, direction)``  forward the next n packets of a type twice.
* ``stats()``          counters: packets/bytes per type and direction, drops, duplicates,
                       connections accepted/active/closed, cuts.

Directions: ``"c2b"`` client -> broker, ``"b2c"`` broker -> client, ``None`` either.

All socket work happens on one daemon I/O thread (``selectors``, timeouts <= 50 ms); the public
methods are thread-safe and every one of them is bounded in time.

Library use (``tools/`` on ``sys.path``)::

    from faultproxy import FaultProxy
    with FaultProxy("127.0.0.1", broker_port) as p:      # listens on a free loopback port
        client.connect("127.0.0.1", p.port)
        p.drop("PUBACK", 1, "b2c")
        p.cut()

CLI::

    python3 tools/faultproxy.py --listen 127.0.0.1:18830 --target 127.0.0.1:1883 \\
        [--delay-ms N] [--control PORT]

Commands, one per line, on stdin and on the control port (``nc 127.0.0.1 PORT``)::

    cut [nors]                      blackhole on [stall] | blackhole off
    delay MS                        drop TYPE [N] [c2b|b2c]       dup TYPE [N] [c2b|b2c]
    clear                           stats                         help
    quit                            (stdin: stop the proxy; control socket: close that session)

Each answer is one line: ``ok ...`` / ``error ...``; ``stats`` answers ``ok {json}``.
"""
import argparse
import collections
import errno
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time

__all__ = ["FaultProxy", "PACKET_TYPES", "packet_type", "type_name", "split_packets",
           "main"]

PACKET_TYPES = {
    "CONNECT": 1, "CONNACK": 2, "PUBLISH": 3, "PUBACK": 4, "PUBREC": 5, "PUBREL": 6,
    "PUBCOMP": 7, "SUBSCRIBE": 8, "SUBACK": 9, "UNSUBSCRIBE": 10, "UNSUBACK": 11,
    "PINGREQ": 12, "PINGRESP": 13, "DISCONNECT": 14, "AUTH": 15,
}
_NAMES = {v: k for k, v in PACKET_TYPES.items()}
_NAMES[0] = "RESERVED"
DIRECTIONS = ("c2b", "b2c")

TICK = 0.05                 # the longest the I/O thread ever sleeps
CALL_TIMEOUT = 5.0          # bound on waiting for the I/O thread to run a command
CONNECT_TIMEOUT = 5.0       # bound on connecting to the broker
READ_SIZE = 65536
HIGH_WATER = 1 << 20        # stop reading a side when this much waits to be written onwards
OUT_CHUNK = 1 << 16         # move released packets to the socket buffer in chunks of this


def packet_type(t):
    """An MQTT control packet type from a name ('puback', 'PUBACK') or a number (4)."""
    if isinstance(t, int):
        if 0 <= t <= 15:
            return t
    elif isinstance(t, str):
        s = t.strip().upper()
        if s in PACKET_TYPES:
            return PACKET_TYPES[s]
        if s.isdigit() and 0 <= int(s) <= 15:
            return int(s)
    raise ValueError("unknown MQTT packet type: %r" % (t,))


def type_name(t):
    return _NAMES.get(t, str(t))


def _direction(d):
    if d in (None, "", "both", "any", "*"):
        return None
    if d in DIRECTIONS:
        return d
    raise ValueError("direction must be 'c2b', 'b2c' or None, not %r" % (d,))


def split_packets(buf):
    """Split whole MQTT packets off the front of ``buf`` (a bytearray, consumed in place).

    Returns ``(packets, bad)``: the list of complete packets (bytes), and True if the framing
    is invalid (remaining length longer than 4 bytes), in which case ``buf`` is left as is from
    the bad packet on."""
    out = []
    while len(buf) >= 2:
        n = 0
        mult = 1
        i = 1
        while True:
            if i >= len(buf):
                return out, False           # the length itself is still incomplete
            b = buf[i]
            n += (b & 0x7F) * mult
            i += 1
            if not b & 0x80:
                break
            if i > 4:
                return out, True            # 5th length byte: not MQTT framing
            mult *= 128
        total = i + n
        if len(buf) < total:
            break
        out.append(bytes(buf[:total]))
        del buf[:total]
    return out, False


class _Rule:
    __slots__ = ("action", "ptype", "direction", "left", "match")

    def __init__(self, action, ptype, direction, count, match):
        self.action = action
        self.ptype = ptype
        self.direction = direction
        self.left = count           # None: every matching packet until cleared
        self.match = match


class _Flow:
    """One direction of one proxied connection: parser buffer -> timed queue -> out buffer."""

    def __init__(self, name, src, dst):
        self.name = name
        self.src = src              # _Side
        self.dst = dst              # _Side
        self.inbuf = bytearray()
        self.raw = False            # framing went bad: forward bytes as they come
        self.queue = collections.deque()    # (release time, bytes)
        self.queued = 0
        self.out = bytearray()
        self.eof = False            # the source said EOF (or failed)

    def pending(self):
        return self.queued + len(self.out)

    def clear(self):
        n = len(self.inbuf) + self.pending()
        self.inbuf.clear()
        self.queue.clear()
        self.queued = 0
        self.out.clear()
        return n


class _Side:
    __slots__ = ("sock", "conn", "role", "closed", "events")

    def __init__(self, sock, conn, role):
        self.sock = sock
        self.conn = conn
        self.role = role            # "client" / "broker"
        self.closed = False
        self.events = 0


class _Conn:
    def __init__(self, cid, csock, peer):
        self.id = cid
        self.peer = peer
        self.client = _Side(csock, self, "client")
        self.broker = None
        self.state = "held"         # held -> connecting -> open -> closed
        self.connect_deadline = 0.0
        self.c2b = None
        self.b2c = None
        self.tainted = False        # lost data (or an end) in a discard black hole


class FaultProxy:
    """A fault-injecting MQTT-aware TCP proxy. See the module docstring."""

    def __init__(self, target_host, target_port, listen_port=0, listen_host="127.0.0.1",
                 delay_ms=0, blackhole_mode="discard"):
        self.target = (target_host, int(target_port))
        self.listen_addr = (listen_host, int(listen_port))
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._delay = max(0.0, float(delay_ms)) / 1000.0
        self._hole = False
        self._default_mode = self._hole_mode = self._check_mode(blackhole_mode)
        self._rules = []
        self._calls = collections.deque()
        self._sel = None
        self._lsock = None
        self._port = int(listen_port)
        self._wake_r = self._wake_w = None
        self._thread = None
        self._stopping = False
        self._conns = {}
        self._next_id = 1
        self._reset_counters()

    # ---- life cycle -------------------------------------------------------------------

    def start(self):
        if self._thread:
            return self
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(self.listen_addr)
        self._lsock.listen(128)
        self._lsock.setblocking(False)
        self._port = self._lsock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._lsock, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="faultproxy-%d" % self.port,
                                        daemon=True)
        self._thread.start()
        return self

    @property
    def port(self):
        """The port the proxy listens on (after ``start()``)."""
        return self._port

    @property
    def host(self):
        return self.listen_addr[0]

    def stop(self, timeout=CALL_TIMEOUT):
        """Close every connection and the listener, and join the I/O thread."""
        t = self._thread
        if not t:
            return
        with self._lock:
            self._stopping = True
        self._wake()
        t.join(timeout)
        self._thread = None
        if t.is_alive():        # should not happen; the thread is a daemon anyway
            raise RuntimeError("faultproxy I/O thread did not stop within %.1f s" % timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- faults -----------------------------------------------------------------------

    def cut(self, rst=True):
        """Abruptly close every current connection on both sides (RST unless rst=False),
        held ones included. Returns how many connections were cut. New connections are still
        accepted."""
        return self._call(self._do_cut, rst)

    def blackhole(self, on=True, mode=None):
        """Start (on=True) or lift (on=False) a black hole; mode "discard" or "stall" (see the
        module docstring; None: the constructor's blackhole_mode). Lifting returns how many
        connections were cut because they lost data (or an end) in a discard hole."""
        if on:
            mode = self._check_mode(self._default_mode if mode is None else mode)
            return self._call(self._do_hole, mode)
        return self._call(self._do_lift)

    @property
    def blackholed(self):
        return self._hole

    @property
    def delay_ms(self):
        return self._delay * 1000.0

    @delay_ms.setter
    def delay_ms(self, ms):
        self.delay(ms)

    def delay(self, ms):
        """Set the one-way delay in milliseconds, applied to each direction (0 = none). Packets
        already queued keep their release time; order is always preserved."""
        ms = float(ms)
        if ms < 0:
            raise ValueError("delay must be >= 0")
        with self._lock:
            self._delay = ms / 1000.0
        self._wake()

    def drop(self, packet_type_, count=1, direction=None, match=None):
        """Swallow the next ``count`` packets of a type in a direction ("c2b", "b2c" or None =
        either; count=None: all of them until ``clear()``). ``match(packet_bytes) -> bool``
        narrows the rule further."""
        return self._add_rule("drop", packet_type_, count, direction, match)

    def duplicate(self, packet_type_, count=1, direction=None, match=None):
        """Forward the next ``count`` packets of a type twice, back to back."""
        return self._add_rule("dup", packet_type_, count, direction, match)

    dup = duplicate

    def clear(self):
        """Remove every pending drop/duplicate rule."""
        with self._lock:
            self._rules.clear()

    def rules(self):
        with self._lock:
            return [{"action": r.action, "type": type_name(r.ptype), "direction": r.direction,
                     "left": r.left} for r in self._rules]

    # ---- counters ---------------------------------------------------------------------

    def stats(self):
        """A snapshot of the counters as plain dicts (JSON-serialisable)."""
        with self._lock:
            s = dict(self.counters)
            s["active"] = len(self._conns)
            s["held"] = sum(1 for c in self._conns.values() if c.state == "held")
            s["delay_ms"] = self._delay * 1000.0
            s["blackhole"] = self._hole
            s["blackhole_mode"] = self._hole_mode
            s["rules"] = len(self._rules)
            for d in DIRECTIONS:
                src = self.flow_counters[d]
                s[d] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in src.items()}
            return s

    def reset_stats(self):
        with self._lock:
            self._reset_counters()

    def packets(self, ptype, direction):
        """How many packets of a type were seen in a direction (before drop/duplicate)."""
        with self._lock:
            return self.flow_counters[direction]["packets"].get(type_name(packet_type(ptype)), 0)

    def wait_for(self, predicate, timeout=5.0):
        """Wait (bounded) until ``predicate(stats())`` is true; returns the last truth value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                r = predicate(self.stats())
                left = deadline - time.monotonic()
                if r or left <= 0:
                    return r
                self._cond.wait(min(left, TICK))

    # ---- text commands (CLI and control socket) ------------------------------------------

    def command(self, line):
        """Run one text command; returns the one-line answer ("ok ..." / "error ...")."""
        words = line.split()
        if not words:
            return "ok"
        cmd, args = words[0].lower(), words[1:]
        try:
            if cmd == "cut":
                rst = not (args and args[0].lower() in ("nors", "fin", "norst"))
                return "ok cut %d" % self.cut(rst=rst)
            if cmd == "blackhole":
                if not args or args[0].lower() not in ("on", "off", "1", "0", "true", "false"):
                    return "error usage: blackhole on [discard|stall] | blackhole off"
                on = args[0].lower() in ("on", "1", "true")
                mode = args[1].lower() if on and len(args) > 1 else None
                r = self.blackhole(on, mode)
                return "ok blackhole %s" % ("on " + self._hole_mode if on else "off, cut %d" % r)
            if cmd == "delay":
                if len(args) != 1:
                    return "error usage: delay MS"
                self.delay(float(args[0]))
                return "ok delay %g" % self.delay_ms
            if cmd in ("drop", "dup", "duplicate"):
                if not args:
                    return "error usage: %s TYPE [N|all] [c2b|b2c]" % cmd
                count, direction = 1, None
                for a in args[1:]:
                    if a.lower() in DIRECTIONS or a.lower() in ("both", "any"):
                        direction = _direction(a.lower())
                    elif a.lower() in ("all", "*", "inf"):
                        count = None
                    else:
                        count = int(a)
                f = self.drop if cmd == "drop" else self.duplicate
                f(args[0], count, direction)
                return "ok %s %s %s %s" % ("drop" if cmd == "drop" else "dup",
                                           type_name(packet_type(args[0])),
                                           "all" if count is None else count, direction or "any")
            if cmd == "clear":
                self.clear()
                return "ok clear"
            if cmd == "stats":
                return "ok " + json.dumps(self.stats(), sort_keys=True)
            if cmd == "reset":
                self.reset_stats()
                return "ok reset"
            if cmd == "help":
                return ("ok commands: cut [nors] | blackhole on [discard|stall] | blackhole off |"
                        " delay MS | drop TYPE [N|all] [c2b|b2c] | dup TYPE [N|all] [c2b|b2c] |"
                        " clear | stats | reset | quit")
            return "error unknown command %r (try help)" % cmd
        except (ValueError, RuntimeError, OSError) as e:
            return "error %s" % e

    # ---- internals: API side -------------------------------------------------------------

    @staticmethod
    def _check_mode(mode):
        if mode not in ("discard", "stall"):
            raise ValueError("blackhole mode must be 'discard' or 'stall', not %r" % (mode,))
        return mode

    def _reset_counters(self):
        self.counters = {"accepted": 0, "closed": 0, "cuts": 0, "cut_connections": 0,
                         "blackholes": 0, "blackhole_cut_connections": 0,
                         "upstream_failures": 0}
        self.flow_counters = {d: {"packets": {}, "bytes": {}, "dropped": {}, "duplicated": {},
                                  "total_packets": 0, "total_bytes": 0, "forwarded_bytes": 0,
                                  "blackholed_bytes": 0, "raw_bytes": 0}
                              for d in DIRECTIONS}

    def _add_rule(self, action, ptype, count, direction, match):
        t = packet_type(ptype)
        d = _direction(direction)
        if count is not None:
            count = int(count)
            if count < 1:
                raise ValueError("count must be >= 1 (or None for all)")
        with self._lock:
            self._rules.append(_Rule(action, t, d, count, match))
        return True

    def _wake(self):
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"x")
            except OSError:
                pass            # buffer full: a wake-up is pending anyway

    def _call(self, fn, *args):
        """Run fn on the I/O thread (inline if there is none or we are on it); bounded wait."""
        t = self._thread
        if t is None or not t.is_alive() or threading.current_thread() is t:
            with self._lock:
                return fn(*args)
        box = {}
        done = threading.Event()
        with self._lock:
            self._calls.append((fn, args, box, done))
        self._wake()
        if not done.wait(CALL_TIMEOUT):
            raise RuntimeError("faultproxy I/O thread did not answer within %.1f s"
                               % CALL_TIMEOUT)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    # ---- internals: the I/O thread -----------------------------------------------------------

    def _run(self):
        try:
            while True:
                timeout = self._timeout()
                try:
                    ready = self._sel.select(timeout)
                except InterruptedError:
                    ready = []
                with self._lock:
                    if self._stopping:
                        break
                    now = time.monotonic()
                    for key, mask in ready:
                        self._event(key, mask, now)
                    self._run_calls()
                    self._service(time.monotonic())
                    self._cond.notify_all()
        finally:
            with self._lock:
                self._shutdown()
                self._cond.notify_all()

    def _run_calls(self):
        while self._calls:
            fn, args, box, done = self._calls.popleft()
            try:
                box["result"] = fn(*args)
            except Exception as e:          # handed back to the caller
                box["error"] = e
            done.set()

    def _timeout(self):
        with self._lock:
            t = TICK
            if self._hole and self._hole_mode == "stall":
                return t
            now = time.monotonic()
            for c in self._conns.values():
                if c.state != "open":
                    continue
                for f in (c.c2b, c.b2c):
                    if f.queue and len(f.out) < OUT_CHUNK:
                        t = min(t, max(0.0, f.queue[0][0] - now))
            return t

    def _event(self, key, mask, now):
        tag = key.data
        if tag == "wake":
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass
        elif tag == "listen":
            self._accept(now)
        else:
            side = tag
            if side.closed:
                return
            conn = side.conn
            if mask & selectors.EVENT_WRITE:
                if conn.state == "connecting" and side is conn.broker:
                    self._connected(conn, now)
                else:
                    self._flush(conn, self._flow_to(conn, side))
            if mask & selectors.EVENT_READ and not side.closed and conn.state != "closed":
                self._read(conn, side, now)

    def _accept(self, now):
        for _ in range(64):
            try:
                s, peer = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self._next_id, s, peer)
            self._next_id += 1
            self._conns[conn.id] = conn
            self.counters["accepted"] += 1
            if not self._hole:
                self._connect_upstream(conn, now)

    def _connect_upstream(self, conn, now):
        try:
            b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            self.counters["upstream_failures"] += 1
            self._close(conn, rst=True)
            return
        b.setblocking(False)
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.broker = _Side(b, conn, "broker")
        conn.c2b = _Flow("c2b", conn.client, conn.broker)
        conn.b2c = _Flow("b2c", conn.broker, conn.client)
        conn.state = "connecting"
        conn.connect_deadline = now + CONNECT_TIMEOUT
        err = b.connect_ex(self.target)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            self.counters["upstream_failures"] += 1
            self._close(conn, rst=True)

    def _connected(self, conn, now):
        err = conn.broker.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.counters["upstream_failures"] += 1
            self._close(conn, rst=True)
            return
        conn.state = "open"

    @staticmethod
    def _flow_to(conn, side):
        return conn.c2b if side is conn.broker else conn.b2c

    @staticmethod
    def _flow_from(conn, side):
        return conn.c2b if side is conn.client else conn.b2c

    def _read(self, conn, side, now):
        flow = self._flow_from(conn, side)
        try:
            data = side.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        fc = self.flow_counters[flow.name]
        if not data:
            self._source_gone(conn, side, flow)
            return
        if self._hole and self._hole_mode == "discard":
            fc["blackholed_bytes"] += len(data)
            conn.tainted = True
            return
        if flow.raw:
            self._enqueue(flow, data, now)
            fc["raw_bytes"] += len(data)
            return
        flow.inbuf += data
        pkts, bad = split_packets(flow.inbuf)
        for p in pkts:
            self._packet(flow, p, now, fc)
        if bad:
            flow.raw = True
            fc["raw_bytes"] += len(flow.inbuf)
            self._enqueue(flow, bytes(flow.inbuf), now)
            flow.inbuf.clear()

    def _packet(self, flow, p, now, fc):
        t = p[0] >> 4
        name = type_name(t)
        fc["packets"][name] = fc["packets"].get(name, 0) + 1
        fc["bytes"][name] = fc["bytes"].get(name, 0) + len(p)
        fc["total_packets"] += 1
        fc["total_bytes"] += len(p)
        copies = 1
        for action in ("drop", "dup"):
            rule = self._take_rule(action, t, flow.name, p)
            if rule:
                if action == "drop":
                    fc["dropped"][name] = fc["dropped"].get(name, 0) + 1
                    return
                fc["duplicated"][name] = fc["duplicated"].get(name, 0) + 1
                copies = 2
        for _ in range(copies):
            self._enqueue(flow, p, now)

    def _take_rule(self, action, t, direction, p):
        for i, r in enumerate(self._rules):
            if r.action != action or r.ptype != t:
                continue
            if r.direction is not None and r.direction != direction:
                continue
            if r.match is not None:
                try:
                    if not r.match(p):
                        continue
                except Exception:
                    continue
            if r.left is not None:
                r.left -= 1
                if r.left <= 0:
                    del self._rules[i]
            return r
        return None

    def _enqueue(self, flow, data, now):
        flow.queue.append((now + self._delay, data))
        flow.queued += len(data)

    def _source_gone(self, conn, side, flow):
        """EOF or error from one end."""
        flow.eof = True
        if self._hole and self._hole_mode == "discard":
            # half-open: the other end is not told; lifting the hole cuts it
            conn.tainted = True
            self._close_side(side, rst=False)
            return
        self._close_side(side, rst=False)
        # what was going to the end that left cannot be delivered
        other = conn.b2c if flow is conn.c2b else conn.c2b
        other.clear()
        if conn.state != "open" or not flow.pending():
            self._close(conn)
        # else: _service closes the connection once the flow has drained

    def _flush(self, conn, flow):
        """Write released bytes of a flow to its destination."""
        if flow is None or flow.dst.closed or not flow.out:
            return
        try:
            n = flow.dst.sock.send(flow.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn, rst=True)
            return
        del flow.out[:n]
        self.flow_counters[flow.name]["forwarded_bytes"] += n

    def _service(self, now):
        hole = self._hole
        discard = hole and self._hole_mode == "discard"
        for conn in list(self._conns.values()):
            if conn.state == "held":
                if not hole:
                    self._connect_upstream(conn, now)
                if conn.state == "held":
                    self._set_events(conn.client, 0)
                    continue
            if conn.state == "closed":
                continue
            if conn.state == "connecting":
                if now >= conn.connect_deadline:
                    self.counters["upstream_failures"] += 1
                    self._close(conn, rst=True)
                    continue
            if discard:
                for f in (conn.c2b, conn.b2c):
                    n = f.clear()
                    if n:
                        conn.tainted = True
                        self.flow_counters[f.name]["blackholed_bytes"] += n
            if conn.state == "open" and not hole:
                for f in (conn.c2b, conn.b2c):
                    while f.queue and f.queue[0][0] <= now and len(f.out) < OUT_CHUNK:
                        _, data = f.queue.popleft()
                        f.queued -= len(data)
                        f.out += data
                    self._flush(conn, f)
                    if conn.state == "closed":
                        break
                if conn.state == "closed":
                    continue
                for f in (conn.c2b, conn.b2c):
                    if f.eof and not f.pending():
                        self._close(conn)
                        break
                if conn.state == "closed":
                    continue
            self._update_events(conn, hole, discard)

    def _update_events(self, conn, hole, discard):
        R, W = selectors.EVENT_READ, selectors.EVENT_WRITE
        stall = hole and not discard
        for side in (conn.client, conn.broker):
            if side is None or side.closed:
                continue
            ev = 0
            if conn.state == "connecting":
                if side is conn.broker:
                    ev = W
                elif conn.c2b.pending() < HIGH_WATER:
                    ev = R
            elif not stall:
                out_flow = self._flow_to(conn, side)
                in_flow = self._flow_from(conn, side)
                if out_flow.out:
                    ev |= W
                # read unless the data would pile up (backpressure) or the far end is gone
                if discard or (in_flow.pending() < HIGH_WATER and not in_flow.dst.closed):
                    ev |= R
            self._set_events(side, ev)

    def _set_events(self, side, ev):
        if side.closed or ev == side.events:
            return
        try:
            if side.events == 0:
                self._sel.register(side.sock, ev, side)
            elif ev == 0:
                self._sel.unregister(side.sock)
            else:
                self._sel.modify(side.sock, ev, side)
            side.events = ev
        except (KeyError, ValueError, OSError):
            side.events = 0

    def _close_side(self, side, rst):
        if side is None or side.closed:
            return
        if side.events:
            try:
                self._sel.unregister(side.sock)
            except (KeyError, ValueError, OSError):
                pass
            side.events = 0
        side.closed = True
        try:
            if rst:
                side.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            side.sock.close()
        except OSError:
            pass

    def _close(self, conn, rst=False):
        if conn.state == "closed":
            return
        conn.state = "closed"
        self._close_side(conn.client, rst)
        self._close_side(conn.broker, rst)
        self._conns.pop(conn.id, None)
        self.counters["closed"] += 1

    def _do_cut(self, rst=True):
        n = 0
        for conn in list(self._conns.values()):
            self._close(conn, rst=rst)
            n += 1
        self.counters["cuts"] += 1
        self.counters["cut_connections"] += n
        self._cond.notify_all()
        return n

    def _do_hole(self, mode):
        if not self._hole:
            self.counters["blackholes"] += 1
        self._hole = True
        self._hole_mode = mode
        if self._sel is not None:
            self._service(time.monotonic())     # discard what is queued, (un)register now
        return True

    def _do_lift(self):
        was_discard = self._hole and self._hole_mode == "discard"
        self._hole = False
        n = 0
        if was_discard:
            for conn in list(self._conns.values()):
                half = (conn.client.closed or (conn.broker is not None and conn.broker.closed))
                if conn.tainted or half:
                    self._close(conn, rst=True)
                    n += 1
        self.counters["blackhole_cut_connections"] += n
        self._service(time.monotonic())
        self._cond.notify_all()
        return n

    def _shutdown(self):
        for conn in list(self._conns.values()):
            self._close(conn, rst=True)
        for s in (self._lsock, self._wake_r, self._wake_w):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._wake_w = self._wake_r = None
        if self._sel is not None:
            self._sel.close()
        # release callers still waiting on the I/O thread
        while self._calls:
            _, _, box, done = self._calls.popleft()
            box["error"] = RuntimeError("faultproxy stopped")
            done.set()


# ---- CLI --------------------------------------------------------------------------------


def _hostport(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % s)
    return host.strip("[]"), int(port)


def _serve_control(proxy, port, stop, host="127.0.0.1"):
    """A tiny line-based control server: one command per line, one answer line per command."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(8)
    ls.settimeout(TICK)

    def session(s):
        s.settimeout(TICK)
        buf = b""
        with s:
            while not stop.is_set():
                try:
                    data = s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode(errors="replace").strip()
                    if text.lower() in ("quit", "exit"):
                        return
                    answer = proxy.command(text) + "\n"
                    try:
                        s.settimeout(CALL_TIMEOUT)
                        s.sendall(answer.encode())
                        s.settimeout(TICK)
                    except OSError:
                        return

    def loop():
        with ls:
            while not stop.is_set():
                try:
                    s, _ = ls.accept()
                except socket.timeout:
                    continue
                except OSError:
                    return
                threading.Thread(target=session, args=(s,), daemon=True).start()

    t = threading.Thread(target=loop, name="faultproxy-control", daemon=True)
    t.start()
    return ls.getsockname()[1], t


def _serve_stdin(proxy, stop, out):
    """Read commands from stdin without ever blocking longer than TICK."""
    import select
    fd = sys.stdin.fileno()
    buf = b""
    while not stop.is_set():
        try:
            r, _, _ = select.select([fd], [], [], TICK)
        except (OSError, ValueError):
            return
        if not r:
            continue
        data = os.read(fd, 4096)
        if not data:
            return                  # stdin closed: keep running on the control port
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace").strip()
            if text.lower() in ("quit", "exit"):
                stop.set()
                return
            out(proxy.command(text))


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Fault-injection TCP proxy for MQTT 3.1.1 testing. Commands (stdin and "
                    "--control port, one per line): cut, blackhole on|off, delay MS, "
                    "drop TYPE [N] [c2b|b2c], dup TYPE [N] [c2b|b2c], clear, stats, help.")
    ap.add_argument("--listen", type=_hostport, required=True, help="HOST:PORT to listen on "
                    "(port 0 = any free port; the chosen one is printed)")
    ap.add_argument("--target", type=_hostport, required=True, help="broker HOST:PORT")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    ap.add_argument("--control", type=int, default=None,
                    help="serve line commands on 127.0.0.1:PORT (0 = any free port)")
    ap.add_argument("--blackhole-mode", choices=("discard", "stall"), default="discard")
    ap.add_argument("--no-stdin", action="store_true", help="do not read commands from stdin")
    a = ap.parse_args(argv)

    proxy = FaultProxy(a.target[0], a.target[1], listen_port=a.listen[1],
                       listen_host=a.listen[0], delay_ms=a.delay_ms,
                       blackhole_mode=a.blackhole_mode)
    stop = threading.Event()
    lock = threading.Lock()

    def out(line):
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    proxy.start()
    msg = "faultproxy listening %s:%d -> %s:%d" % (a.listen[0], proxy.port, a.target[0],
                                                   a.target[1])
    if a.control is not None:
        cport, _ = _serve_control(proxy, a.control, stop)
        msg += " control 127.0.0.1:%d" % cport
    out(msg)
    if not a.no_stdin and sys.stdin is not None and not sys.stdin.closed:
        threading.Thread(target=_serve_stdin, args=(proxy, stop, out), daemon=True).start()
    try:
        while not stop.wait(TICK):
            pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
