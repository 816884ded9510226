# mqtt.aio.MQTTClient: the asyncio front end, for CPython's asyncio and MicroPython's,
# over the same sans-I/O Session, stores and connection supervisor (supervisor.py) as
# the blocking client.
#
# Theory of operation
# -------------------
# One background task per client, the link task (_run), owns the link: it connects
# (with reconnect=True it re-connects on the supervisor's back-off schedule; the session
# resends per §4.4 and the supervisor says what to subscribe again), then pumps: reads,
# feeds the session, queues received messages for the consumer, runs the session's
# timers and writes what the session queued.  The app's tasks call publish/subscribe/...
# concurrently.  Each call works on the session synchronously (no await between
# deciding and doing, so tasks never interleave inside the session) and hands what it
# queued straight to the socket; only when the socket is full does a task wait, one at
# a time (a lock), each wait bounded by timeout_ms.  Calls that wait for the broker (a
# full window, a SUBACK, flush, the next message) sleep on an Event that is set, and
# replaced, whenever something may have changed (_pulse).
#
# Received messages are acknowledged (PUBACK; PUBREC once the id is stored) when the
# `async for` over messages() asks for the next one, i.e. after the body that handled
# one finished.  A body that raises leaves its message unacknowledged: the broker
# resends it on the next connection, and a new `async for` in the same process gets it
# again at once (dup set).  A resend that arrives while the first copy still waits for
# its acknowledgement is dropped, so QoS 2 stays exactly-once.  While `inbox` messages
# wait for the consumer the pump stops reading (TCP flow control), unless a task waits
# for something only the pump can bring (an ack, a SUBACK; maybe the consumer itself,
# mid-body), which would otherwise deadlock.
#
# Nothing blocks the event loop except two short steps every port has: DNS
# (getaddrinfo; use a numeric broker address where that matters) and, with a flash
# store, the record written and synced in publish() or in acknowledging a QoS 2 message.
import asyncio
import errno

from . import compat
from .compat import MICROPYTHON, ticks_ms, ticks_diff
from .codec import MQTTException, ProtocolError, check_topic
from .session import Session, ConnectionLost, MESSAGE, SUBACKED, UNSUBACKED
from .store import StoreFull, open_store
from .supervisor import Supervisor

LINK_ERRORS = (OSError, ConnectionLost, ProtocolError)
_Timeout = asyncio.TimeoutError  # (CPython: the built-in TimeoutError, an OSError)
_QUIET = LINK_ERRORS + (_Timeout,)  # a flat tuple: MicroPython refuses nested ones in except

# The stream differences.  MicroPython: one Stream class for both ends, whose socket
# (.s) takes writes directly (no slice allocated) and whose drain() waits for the
# socket; CPython: a transport that takes every write and buffers what the socket does
# not, drain() waiting only above its high-water mark.
if MICROPYTHON:
    _sleep_ms = asyncio.sleep_ms

    def _within(aw, ms):
        return asyncio.wait_for_ms(aw, ms)

    def _take(w, sess):
        """Hand the session's output to the socket without waiting; True when some is left.
        The stream's socket is non-blocking (no timeout): its write returns None when it
        would block.  (Not compat.send: its try/except makes its frame too big for the C
        stack, and a heap frame per call costs, among a task's garbage, more than the write.)"""
        n = sess.txn - sess.txoff
        if n:
            k = w.s.write(sess.tx, sess.txoff, n)
            if k == n:  # the usual case: sess.written(n), inline
                sess.txoff = sess.txn = 0
                return False
            sess.written(k or 0)
        return sess.txn > sess.txoff

    async def _wait_out(w, sess):
        """Wait until the socket took what _take left (the stream keeps a copy of it)."""
        w.write(memoryview(sess.tx)[sess.txoff : sess.txn])
        sess.written(sess.txn - sess.txoff)
        await w.drain()

    def _shut(w, graceful):
        w.s.close()

    async def _open_stream(host, port, ctx, hostname):
        """(reader, writer, the TCP socket)"""
        r, w = await asyncio.open_connection(host, port)
        s = w.s
        try:
            s.setsockopt(6, 1, 1)  # TCP_NODELAY (see compat.open_tcp)
        except OSError:
            pass
        if ctx:  # wrapped here, not by open_connection, so that TCP_NODELAY reaches TCP
            w.s = ctx.wrap_socket(s, server_hostname=hostname, do_handshake_on_connect=False)
            w.s.setblocking(False)
        return r, w, s

else:

    def _sleep_ms(ms):
        return asyncio.sleep(ms / 1000)

    async def _within(aw, ms):
        async with asyncio.timeout(ms / 1000):  # no task per call, unlike wait_for
            return await aw

    def _take(w, sess):
        n = sess.txn - sess.txoff
        if n:
            w.write(sess.tx[sess.txoff : sess.txn])  # a copy: the transport keeps it
            sess.written(n)
        return w.transport.get_write_buffer_size() > 65536

    async def _wait_out(w, sess):
        await w.drain()

    async def _recv(r, mv):
        b = await r.read(len(mv))
        mv[: len(b)] = b
        return len(b)

    def _shut(w, graceful):
        if graceful:
            w.close()  # after what is buffered
        else:
            w.transport.abort()

    async def _open_stream(host, port, ctx, hostname):
        r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=hostname)
        return r, w, w.get_extra_info("socket")  # TCP_NODELAY: asyncio sets it


async def _zero():
    return 0


class Message:
    """A received PUBLISH: topic and payload (bytes), qos, retain, dup."""

    def __init__(self, ev):
        self.topic = ev[1]
        self.payload = ev[2]
        self.qos = ev[3]
        self.retain = ev[4]
        self.dup = ev[5]
        self.ev = ev  # the session's event, to acknowledge; None once the broker forgot it


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0,
                 ssl=False, ssl_params={}, *, store=None, window=16, max_packet=16384,
                 timeout_ms=10000, ping_timeout_ms=0, ack_timeout_ms=10000, retries=1,
                 reconnect=False, backoff_ms=250, backoff_cap_ms=10000, trace=None, log=None,
                 ring_size=32768, ring_capacity=64, sync_every=1, ring_medium=None, inbox=16):
        """The arguments and options of mqtt.MQTTClient (client.py), plus
        inbox: received messages queued for the consumer before the client stops reading.
          While a task waits for an ack or a SUBACK it reads on: then QoS 0 messages beyond
          inbox are dropped (counted in `overflow`), and QoS 1/2 ones (the broker's
          in-flight limit bounds them; Mosquitto's default is 20) are queued up to
          8 * inbox, a memory guard beyond which the client leaves them to the broker's
          resend after a re-connection."""
        self.client_id = client_id
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.ssl_params = ssl_params
        self.timeout_ms = timeout_ms
        self.reconnect = reconnect
        self.inbox = inbox
        self.lw = self.last_error = None
        self.store = store = open_store(store, window, ring_size, ring_capacity, sync_every, log or trace,
                                        ring_medium)
        # a store smaller than the window would refuse publishes the window admits
        self.session = s = Session(store, min(window, store.capacity), max_packet, ping_timeout_ms,
                                   ack_timeout_ms, retries)
        s.trace = self.trace = trace
        s.log = log or trace
        self.supervisor = Supervisor(s, backoff_ms, backoff_cap_ms)  # .down: re-connecting
        # _tick looks at the timers at least this often: an ack deadline armed while it
        # sleeps (by a publish) is noticed at most half an ack timeout late.
        self._cap = ack_timeout_ms // 2 if ack_timeout_ms else -1
        self._r = self._w = self._sock = self._task = self._ticker = self._cur = self._err = self._room = None
        self._box = []   # received MESSAGE events not yet handed out, oldest first
        self._ev = asyncio.Event()
        self._waiting = 0  # tasks in _wait
        self._lock = asyncio.Lock()  # held by the one task waiting for the socket
        self._busy = False  # _lock is held (its locked(), without a call)
        self._clean = True
        self._done = False  # disconnect() or close(): no re-connecting, messages() ends
        self._first = False  # the next __anext__ is a new loop's first
        self._shed = 0
        self.reconnects = 0  # successful re-connections
        self.dropped = 0     # QoS 0 messages not sent: the link was down
        self.overflow = 0    # received messages not queued: the inbox was full

    # ---- Contract 3 ------------------------------------------------------------
    def set_last_will(self, topic, msg, retain=False, qos=0):
        check_topic(topic, False)
        if qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        self.lw = (topic, msg, qos, retain)

    async def connect(self, clean_session=True):
        """Open the link and wait for CONNACK, within timeout_ms; returns session present.
        Raises ConnectRefused, OSError (unreachable) or ConnectionLost (no CONNACK in
        time); with reconnect=True the client then keeps trying in the background (the
        error is still raised)."""
        self._halt()
        self._clean = clean_session
        self.supervisor.down = self._done = False
        self._err = None
        try:
            sp = await self._open()
        except BaseException as e:
            self._close()
            if isinstance(e, (OSError, MQTTException)):
                self._lost(e)  # re-connecting from now on with reconnect=True
            raise
        self._task = asyncio.create_task(self._run())
        return bool(sp)

    def publish(self, topic, msg, retain=False, qos=0):
        """Returns (the packet id, 0 for QoS 0) once the message is accepted: QoS 0
        handed to the socket, QoS 1/2 recorded in the store (durably with a flash store).
        Waits while the in-flight window is full.  While the link is down (reconnect=True,
        or any time with a flash store) QoS 1/2 messages are stored and go out after the
        next CONNACK; a full store waits up to timeout_ms for the link, then raises
        StoreFull.  QoS 0 messages are dropped while the link is down (counted)."""
        # Not a coroutine function: a QoS 0 message on an idle link is handed to the socket
        # here, and the awaitable returned is the smallest coroutine there is (_zero), not
        # one holding this frame; everything else (and any error) is left to the coroutine
        # returned, so that nothing changes for `await c.publish(...)`.
        sess = self.session
        w = self._w
        if qos or w is None or not sess.connected or self._busy:
            return self._publish(topic, msg, retain, qos)
        try:
            if not sess.publish0(topic, msg, retain, ticks_ms()):
                return self._publish(topic, msg, retain, qos)
        except Exception as e:  # a bad topic or payload
            return self._rest(None, e)
        try:
            if _take(w, sess):
                return self._rest(w, None)
        except LINK_ERRORS as e:
            return self._rest(w, e)
        return _zero()

    async def _publish(self, topic, msg, retain, qos):
        """publish() but QoS 0 on an idle link (publish0 queued it)."""
        sess = self.session
        w = self._w
        if w is None or not sess.connected or qos and sess.window_full():
            pid = await self._publish_waiting(topic, msg, retain, qos)
            if pid is not None:
                return pid
            w = self._w
        now = ticks_ms()
        pid = 0 if not qos and sess.publish0(topic, msg, retain, now) else sess.publish(topic, msg, qos, retain, now)
        if w is not None:  # _send() inline: what the socket takes now, without waiting
            try:
                more = self._busy or _take(w, sess)
            except LINK_ERRORS as e:
                self._fail(w, e)
                more = False
            if more:
                await self._out()
        return pid

    async def _rest(self, w, e):
        """What publish() left to its coroutine: waiting for the socket (e None), a link
        error on w, or (w None) an error to raise."""
        if e is None:
            await self._out()
        elif w is None:
            raise e
        else:
            self._fail(w, e)
        return 0

    async def subscribe(self, topic, qos=0):
        """Subscribe and wait for SUBACK; returns the granted QoS (the return codes for a
        list of (topic, qos)).  SUBACK 0x80 raises MQTTException.  With reconnect=True it
        waits through outages; the subscription is restored when a broker loses it."""
        topics = topic if isinstance(topic, list) else [(topic, qos)]
        for t, q in topics:
            check_topic(t, True)
            if q not in (0, 1, 2):
                raise ValueError("qos must be 0, 1 or 2")
        codes = await self._request(self.session.subscribe, topics)
        if 0x80 in codes:
            raise MQTTException("subscription refused by the broker (SUBACK 0x80)")
        self.supervisor.remember(topics)
        return codes[0] if len(codes) == 1 else codes

    async def unsubscribe(self, topic):
        topics = topic if isinstance(topic, list) else [topic]
        await self._request(self.session.unsubscribe, topics)
        self.supervisor.forget(topics)

    def messages(self):
        """`async for m in c.messages():` each received message in order: m.topic,
        m.payload (bytes), m.qos, m.retain, m.dup.  Acknowledged when the loop asks for the
        next one (c.ack(m) does it at once, e.g. before a `break`).  Ends after disconnect()
        or close(); raises the link's error when it is lost and reconnect=False; with
        reconnect=True it waits through outages.  One loop at a time."""
        self._first = True
        return self

    def ack(self, m):
        """Acknowledge m, the message the current loop body got, now."""
        if m is self._cur:
            self._cur = None
            self._ack(m)
            self._send()  # what the socket takes now; the pump writes the rest

    async def flush(self, timeout_ms=None):
        """Wait until nothing is in flight in either direction (True) or timeout_ms
        (default: the client's) has passed (False); through re-connections."""
        if not (self.reconnect or self.supervisor.down):
            self._check()
        t = self.timeout_ms if timeout_ms is None else timeout_ms
        start = ticks_ms()
        sess = self.session
        while sess.busy() or self.supervisor.down and self.store.count:
            left = t - ticks_diff(ticks_ms(), start)
            if left <= 0 or not (self.supervisor.down or self.is_connected()):
                return False
            await self._wait(left)
        return True

    async def disconnect(self, timeout_ms=None, close_store=False):
        """Finish in-flight flows (bounded by timeout_ms), send DISCONNECT and close.
        What is left unfinished stays in the store for the next persistent session.
        close_store=True: also close the store (a flash ring is synced and its file or
        partition let go), connected or not - the last call before deep sleep or exit."""
        if close_store:
            try:
                await self.disconnect(timeout_ms)
            finally:
                self.store.close()
            return
        self._done = True
        self.supervisor.down = False
        if self.is_connected():
            try:
                await self.flush(timeout_ms)
                self.session.disconnect(ticks_ms())
                if self._push():
                    await _within(self._flush(), 1000)
            except _QUIET:
                pass
        self._halt()
        self._close(graceful=True)
        self.store.commit()
        self._pulse()

    def close(self):
        """Drop the link without DISCONNECT (the broker publishes the will)."""
        self._done = True
        self.supervisor.down = False
        self._halt()
        self._close()
        self._pulse()

    def is_connected(self):
        return self._w is not None and self.session.connected

    def in_flight(self):
        return self.store.count

    def room(self):
        """QoS 1/2 messages the store takes now; publish() beyond that waits for acks
        (while the link is down: up to timeout_ms, then StoreFull)."""
        return self.store.capacity - self.store.count

    def stats(self):
        """A new dict: the store's figures (messages, capacity, inbound, held; a flash
        ring adds size, free_bytes, skipped, erases, ...) and reconnects, dropped,
        overflow."""
        d = self.store.stats()
        d["reconnects"] = self.reconnects
        d["dropped"] = self.dropped
        d["overflow"] = self.overflow
        return d

    def __aiter__(self):
        return self

    async def __anext__(self):
        m = self._cur
        if self._first:
            self._first = False
            if m is not None:  # left unacknowledged by a loop that ended early: again
                m.dup = True
                return m
        elif m is not None:  # the body that got m has finished
            self._cur = None
            self._ack(m)
        if self._send():
            await self._out()
        box = self._box
        while not box or self._done:
            if self._done:
                raise StopAsyncIteration
            if self._err is not None and not self.supervisor.down:
                raise self._err
            await self._wait(-1)
        m = self._cur = Message(box.pop(0))
        if self._room:
            self._room.set()  # a paused pump reads on
        return m

    # ---- the link task -------------------------------------------------------------
    async def _run(self):
        try:
            while True:
                if not self.is_connected():
                    if not self.supervisor.down:
                        break
                    d = self.supervisor.due(ticks_ms())
                    if d:
                        await _sleep_ms(d)
                    try:
                        await self._open()
                    except (OSError, MQTTException) as e:
                        self._lost(e)
                        continue
                    self.reconnects += 1  # (the supervisor's up() ended .down)
                    self._pulse()
                try:
                    await self._pump()
                except LINK_ERRORS as e:
                    self._lost(e)
        except Exception as e:  # not the link's fault (a store error, say): the calls raise it
            self._close()
            self.supervisor.down = False
            self._err = e
            self._pulse()
        if self._task is asyncio.current_task():
            self._task = None

    async def _open(self):
        """Connect and wait for CONNACK, all within timeout_ms; returns session present."""
        sess = self.session
        self._close()
        start = ticks_ms()
        t = self.timeout_ms
        ctx = host = None
        if self.ssl:
            p = self.ssl_params
            ctx = self.ssl if hasattr(self.ssl, "wrap_socket") else compat.tls_context(p)
            host = p.get("server_hostname", self.server)
        try:
            self._r, self._w, self._sock = await _within(_open_stream(self.server, self.port, ctx, host), t)
        except _Timeout:
            raise OSError(errno.ETIMEDOUT, "connect timed out")
        sess.connect(self.client_id, self._clean, self.keepalive, ticks_ms(), self.lw, self.user,
                     self.pswd if self.user is not None else None)
        try:
            if self._push():
                await self._flush()
            while True:
                ev = sess.next_event(ticks_ms())  # CONNECTED, or it raised
                if ev:
                    break
                left = t - ticks_diff(ticks_ms(), start)
                if left <= 0:
                    raise ConnectionLost("timed out waiting for CONNACK")
                n = await self._read(sess.rx_space(), left)
                if n == 0:
                    raise ConnectionLost("connection closed by broker")
                if n > 0:
                    sess.received(n)
        except ValueError as e:  # how MicroPython's TLS reports a failed verification
            raise OSError("TLS handshake failed: %s" % e)
        now = ticks_ms()
        sp = ev[2]
        if not sp:  # the broker forgot the messages not yet acknowledged: no ack is owed
            box = self._box
            for i in range(len(box)):
                box[i] = box[i][:6] + (0,)
            if self._cur:
                self._cur.ev = None
        self.supervisor.up(sp, now)  # may queue the SUBSCRIBE restoring the subscriptions
        if self._push():
            await self._flush()
        self._err = None
        self._ticker = asyncio.create_task(self._tick(self._w))  # (CPython keeps tasks weakly)
        return sp

    async def _pump(self):
        """Move bytes and events between the link and the session until the link fails
        (raises) or the broker closes it (returns)."""
        sess = self.session
        box = self._box
        while True:
            now = ticks_ms()
            full = False
            while True:
                if len(box) >= self.inbox and not self._waiting:
                    full = True  # see the header: flow control
                    break
                ev = sess.next_event(now)
                if ev is None:
                    break
                k = ev[0]
                if k == MESSAGE:
                    q = ev[3]
                    if q and self._held(ev[6]):
                        continue  # a resend of one not yet acknowledged: it goes once
                    if len(box) >= (8 * self.inbox if q else self.inbox):
                        self.overflow += 1
                        if q:
                            self._shed += 1  # neither delivered nor acknowledged: see _leave
                        continue
                    box.append(ev)
                elif k == SUBACKED or k == UNSUBACKED:
                    self.supervisor.event(ev)
            if sess.shed or self._shed:
                await self._leave(sess.shed + self._shed)
            if self._push():
                await self._flush()
            self._pulse()
            if full:  # until the consumer takes one or a task waits
                e = self._room = asyncio.Event()
                await e.wait()
                self._room = None
                continue
            if box:
                await _sleep_ms(0)  # the consumer's turn before more is read
            n = await self._read(sess.rx_space(), -1)
            if n == 0:
                self._lost(ConnectionLost("connection closed by broker"), True)
                return
            if n > 0:
                sess.received(n)

    async def _tick(self, w):
        """The session's timers (keepalive, ack deadlines) while w is the link: a task of
        their own, so that the pump's reads need no time-out (MicroPython's wait_for costs
        two tasks per call)."""
        sess = self.session
        while w is self._w:
            try:
                sess.tick(ticks_ms())
                if self._push():
                    await self._flush()
            except LINK_ERRORS as e:
                if w is self._w:
                    self._lost(e)
                return
            t = sess.next_timer(ticks_ms())
            c = self._cap
            if c >= 0 and (t < 0 or t > c):
                t = c
            await _sleep_ms(t if t >= 0 else 1000)

    async def _leave(self, n):
        """Received QoS 1/2 PUBLISH were left unacknowledged (no room): leave, so that the
        broker resends them after the reconnect.  Gracefully - DISCONNECT after the acks,
        then read to the broker's EOF - as closing with unread data sends a TCP reset, and
        a broker may then drop the acks just sent (client._shed_reconnect does the same)."""
        self.session.disconnect(ticks_ms())
        if self._push():
            await self._flush()
        start = ticks_ms()
        junk = memoryview(bytearray(256))
        while True:
            left = 2000 - ticks_diff(ticks_ms(), start)
            if left <= 0 or await self._read(junk, left) <= 0:
                break
        raise ConnectionLost("%d received PUBLISH left for the broker to resend (no room)" % n)

    def _held(self, pid):
        """Is a received message with this packet id waiting for its acknowledgement?"""
        m = self._cur
        if m and m.ev and m.ev[6] == pid:
            return True
        for e in self._box:
            if e[6] == pid:
                return True
        return False

    # ---- link state ----------------------------------------------------------------
    def _halt(self):
        """Stop the link task (unless it is the caller)."""
        t = self._task
        self._task = None
        if t is not None and t is not asyncio.current_task():
            t.cancel()

    def _close(self, by_broker=False, graceful=False):
        """Drop the link (no DISCONNECT, so the will fires).  by_broker: the broker ended
        it (for the poison rule, Session.link_ended)."""
        w = self._w
        if w is not None:
            self._r = self._w = None
            try:
                _shut(w, graceful)
            except OSError:
                pass
        sess = self.session
        now = ticks_ms()
        self.supervisor.ended(now)
        sess.link_ended(by_broker, now)
        sess.reset()
        self._shed = 0

    def _lost(self, e, by_broker=False):
        """The link failed with e (or a connection attempt did): close it; re-connect
        (reconnect=True) or keep e for the calls to raise.  Returns e as they see it."""
        if isinstance(e, OSError):
            by_broker = compat.is_reset(e)
            if self.is_connected():
                e = ConnectionLost("link failed: %s" % e)
        self._close(by_broker)
        self.last_error = e
        t = self._task
        if t is not None and t is not asyncio.current_task():
            t.cancel()  # the link task waits on the link just closed: start over
            self._task = t = None
        if self.reconnect and not self._done:
            self.supervisor.lost(e, ticks_ms())
            if t is None:
                self._task = asyncio.create_task(self._run())
        else:
            self._err = e
            self.supervisor.down = False
        self._pulse()
        return e

    def _fail(self, w, e):
        """A call's I/O on link w failed with e: drop w (unless already replaced); raise
        unless re-connecting."""
        if w is self._w:
            e = self._lost(e)
        if not self.reconnect:
            raise e

    def _check(self):
        if not self.is_connected():
            raise self._err or MQTTException("not connected")

    # ---- waiting ---------------------------------------------------------------------
    def _pulse(self):
        """Wake every task in _wait.  A fresh Event each time, so that a waiter whose
        wait has not started yet cannot miss it."""
        if self._waiting:
            self._ev.set()
            self._ev = asyncio.Event()

    async def _wait(self, ms):
        """Until the next _pulse, or at most ms (-1: no bound)."""
        ev = self._ev
        self._waiting += 1
        if self._room:
            self._room.set()  # a paused pump reads on: this task may need what it brings
        try:
            await (ev.wait() if ms < 0 else _within(ev.wait(), ms))
        except _Timeout:
            pass
        finally:
            self._waiting -= 1

    async def _publish_waiting(self, topic, msg, retain, qos):
        """publish() while the link is down or the window full: the packet id once the
        message is stored (0: a QoS 0 message dropped), or None when it may go out now."""
        sess = self.session
        store = self.store
        start = ticks_ms()
        while True:
            left = self.timeout_ms - ticks_diff(ticks_ms(), start)
            if self.is_connected():
                if not (qos and sess.window_full()):
                    return None
                if self._cap >= 0:
                    # the ack deadlines bound this wait (an ack or a dead link ends it), and
                    # a wait without a time-out costs MicroPython no extra tasks
                    await self._wait(-1)
                    continue
                if left > 0:
                    await self._wait(left)
                    continue
                self._fail(self._w, ConnectionLost("timed out waiting for the in-flight window"))
            check_topic(topic, False)  # before dropping, waiting or storing
            if not qos:
                if not (self.reconnect or self.supervisor.down):
                    self._check()
                self.dropped += 1
                return 0
            if not (self.reconnect or getattr(store, "persistent", False)):
                self._check()
            if store.count < store.capacity:
                return sess.publish(topic, msg, qos, retain, ticks_ms())
            if left <= 0:
                raise StoreFull("store full (%d messages) and no connection" % store.count)
            await self._wait(left)

    async def _request(self, make, topics):
        """Send SUBSCRIBE or UNSUBSCRIBE (make) and wait (timeout_ms) for its ack; with
        reconnect=True through outages, sending it again on the next link if the ack
        did not come on this one."""
        while True:
            while not self.is_connected():
                if not self.supervisor.down:
                    self._check()
                await self._wait(-1)
            w = self._w
            pid = make(topics, ticks_ms())
            start = ticks_ms()
            if self._send():
                await self._out()
            while w is self._w:
                r = self.supervisor.acks.pop(pid, None)
                if r is not None:
                    return r
                left = self.timeout_ms - ticks_diff(ticks_ms(), start)
                if left <= 0:
                    self._fail(w, ConnectionLost("timed out waiting for the ack of packet %d" % pid))
                    break
                await self._wait(left)
            if not self.reconnect:
                self._check()

    def _ack(self, m):
        """Acknowledge a received message [MQTT-4.5.0-2]; its bytes go with the next write."""
        ev = m.ev
        if ev is None or not ev[6]:  # QoS 0, or the broker forgot it
            return
        sess = self.session
        try:
            if sess.connected:
                sess.acknowledge(ev, ticks_ms())
            elif ev[3] == 2 and ev[6] not in self.store.inbound:
                # the broker resends it after the reconnect; the stored id makes the
                # session answer that with PUBREC only [MQTT-4.3.3-2]
                self.store.in_add(ev[6])
        except StoreFull:
            if sess.log:
                sess.log("no room to record inbound QoS 2 id %d: left for the broker to resend" % ev[6])

    # ---- I/O -----------------------------------------------------------------------
    def _push(self):
        """Hand what the session queued to the socket without waiting.  True when the
        caller must await _flush(): the socket is full, or a task waits on it already."""
        w = self._w
        if w is None:
            return False
        if self._busy:
            return True
        return _take(w, self.session)

    def _send(self):
        """_push for the app's calls: a link error drops the link (see _fail)."""
        w = self._w
        try:
            return self._push()
        except LINK_ERRORS as e:
            self._fail(w, e)
        return False

    async def _out(self):
        """_flush for the app's calls."""
        w = self._w
        try:
            await self._flush()
        except LINK_ERRORS as e:
            self._fail(w, e)

    async def _flush(self):
        """Wait until the socket took everything queued (one task at a time; a socket that
        takes nothing for timeout_ms means the link is dead)."""
        async with self._lock:
            self._busy = True
            try:
                w = self._w
                sess = self.session
                while w is not None and w is self._w and _take(w, sess):
                    try:
                        await _within(_wait_out(w, sess), self.timeout_ms)
                    except _Timeout:
                        raise ConnectionLost("send timed out")
                    except BaseException:
                        # Cancelled (e.g. an app's wait_for around publish): MicroPython's
                        # drain keeps its whole buffer, part of which may have gone out, so
                        # this link's byte stream cannot go on; the session resends on the next
                        if MICROPYTHON and w is self._w:
                            self._lost(ConnectionLost("a write to the broker was cancelled"))
                        raise
            finally:
                self._busy = False

    async def _read(self, mv, t):
        """Read into mv: the byte count, 0 at EOF, -1 when nothing came within t ms
        (t = -1: no bound)."""
        r = self._r
        if MICROPYTHON:
            n = compat.recv_into(r.s, mv)  # what has arrived, without waiting
            if n >= 0:
                await _sleep_ms(0)  # let the other tasks run between the reads of a flood
                return n
            aw = r.readinto(mv)
        else:
            aw = _recv(r, mv)
        self.store.commit()  # group commit: sync before idling
        if self.session.inflight:
            compat.ack_now(self._sock)  # acks are due: no delayed ACK to stall them (client._pump)
        try:
            n = await (aw if t < 0 else _within(aw, t))
        except _Timeout:
            return -1
        return -1 if n is None else n  # None: a TLS record not complete yet
