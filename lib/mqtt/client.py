# MQTTClient: the blocking front end.  It owns the socket and the clock and moves
# bytes between them and the sans-I/O Session.  Every wait is a poll() with a
# bound, so no call blocks longer than `timeout_ms` (wait_msg() without a timeout
# waits for a message by design, but still pings and notices a dead link).
#
# With reconnect=True a lost link is not an error for the app: the client closes it,
# and re-connects on a back-off schedule from inside the calls the app already makes
# (publish, check_msg, wait_msg, flush), resending per §4.4 and re-subscribing when
# the broker lost the session.  Nothing waits longer than the caller allows: a
# connection attempt (non-blocking TCP connect, then CONNECT/CONNACK) is a state that
# each call drives for the time it has, and goes on in the next call.  The stated
# exceptions: DNS (getaddrinfo cannot be bounded: use a numeric address) and a TLS
# handshake, which runs to its end once started (at most what is left of timeout_ms).
#
# A superset of umqtt.simple's MQTTClient: code written for umqtt runs unchanged.

import errno
from . import compat
from .compat import ticks_ms, ticks_diff, ticks_add, sleep_ms, send
from .codec import MQTTException, ProtocolError, check_topic
from .session import Session, ConnectionLost, CONNECTED, MESSAGE, PONG
from .store import StoreFull, open_store
from .supervisor import Supervisor

# What a lost or broken link raises; with reconnect=True these are absorbed.
LINK_ERRORS = (OSError, ConnectionLost, ProtocolError)


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0,
                 ssl=False, ssl_params={}, *, store=None, window=16, max_packet=16384,
                 timeout_ms=10000, ping_timeout_ms=0, ack_timeout_ms=10000, retries=1,
                 reconnect=False, backoff_ms=250, backoff_cap_ms=10000, trace=None, log=None,
                 ring_size=32768, ring_capacity=64, sync_every=1, ring_medium=None):
        """store: None (RAM); a path (the flash ring: see ring.RingStore for ring_size
          bytes, ring_capacity messages, sync_every records per sync, ring_medium "file"
          or "log"); a block device with the esp32.Partition protocol (the ring on a raw
          partition, which it owns whole); or a store object.
        window: QoS 1/2 messages in flight before publish() waits for acks.
        max_packet: largest packet accepted from the broker, header included.  A larger
          PUBLISH is skipped in bounded memory and acknowledged (session.oversize counts
          them, `log` names each); any other larger packet closes the link.
        timeout_ms: bound on every blocking step (connect, TLS, SUBACK, a full window).
        ack_timeout_ms / retries: an unacknowledged QoS 1 PUBLISH or PUBREL is resent
          (DUP) up to `retries` times, then the link is declared dead (see session.py).
        reconnect: re-connect automatically (back-off from backoff_ms doubling to
          backoff_cap_ms, with jitter; reset only after a healthy link, see
          Supervisor.lost).
        trace: callable(str) that gets a line for every packet sent and received.
        log: callable(str) for rare events worth a line (an oversize message skipped,
          QoS 2 downgraded by the broker, a subscription refused on restore);
          default: trace."""
        self.client_id = client_id
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.ssl_params = ssl_params
        self.timeout_ms = timeout_ms
        self.sock = self.cb = self.lw = self.last_error = None
        self._poll_in = self._poll_out = None
        self._details = False
        self.store = store = open_store(store, window, ring_size, ring_capacity, sync_every, log or trace,
                                        ring_medium)
        # a store smaller than the window would refuse publishes the window admits
        self.session = Session(store, min(window, store.capacity), max_packet, ping_timeout_ms,
                               ack_timeout_ms, retries)
        self.session.trace = self.trace = trace
        self.session.log = log or trace
        # False: hold received PUBLISH back (neither delivered nor acknowledged, so the
        # broker keeps them), e.g. while finishing flows before disconnecting.
        self.deliver = True
        # reconnecting (reconnect=True): the supervisor decides when and what to restore;
        # .down while the link is lost
        self.reconnect = reconnect
        self.supervisor = Supervisor(self.session, backoff_ms, backoff_cap_ms)
        self._clean = True
        self._ev = None       # the CONNECTED event that ends a connection attempt
        self._att = None      # deadline of the connection attempt in progress
        self._stall = None    # since when the socket has taken no bytes (see _flush_tx)
        self.reconnects = 0   # successful re-connections
        self.dropped = 0      # QoS 0 messages dropped while the link was down
        self._progress = ticks_ms()

    # ---- umqtt.simple API ----------------------------------------------------
    def set_callback(self, f, details=False):
        """f(topic, msg) as umqtt; with details=True f(topic, msg, retained, qos, dup)."""
        self.cb = f
        self._details = details

    def set_last_will(self, topic, msg, retain=False, qos=0):
        check_topic(topic, False)
        if qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        self.lw = (topic, msg, qos, retain)

    def connect(self, clean_session=True, timeout_ms=None):
        """Open the connection and wait for CONNACK, all within timeout_ms (default: the
        client's); returns session present (bool).  Raises ConnectRefused (an
        MQTTException) when the broker refuses, OSError when the broker cannot be
        reached, ConnectionLost when it does not answer in time.  With reconnect=True
        the client keeps trying in the background after such a failure (the error is
        still raised)."""
        self._clean = clean_session
        self.supervisor.down = False
        try:
            self._begin(self.timeout_ms if timeout_ms is None else timeout_ms)
            return bool(self._advance(-1)[2])
        except Exception as e:
            self._close()
            if self.reconnect and isinstance(e, (OSError, MQTTException)):
                self._go_down(e)
            raise

    def disconnect(self, timeout_ms=None, close_store=False):
        """Finish in-flight QoS 1/2 flows (bounded), send DISCONNECT and close.
        What is left unfinished stays in the store for the next persistent session.
        close_store=True: also close the store (a flash ring is synced and its file or
        partition let go), connected or not - the last call before deep sleep or exit."""
        if close_store:
            try:
                self.disconnect(timeout_ms)
            finally:
                self.store.close()
            return
        self.supervisor.down = False
        if self.sock is None:
            return
        try:
            if self.session.connected:
                self._flush(self.timeout_ms if timeout_ms is None else timeout_ms)
            self.session.disconnect(ticks_ms())
            self._flush_tx(ticks_ms(), 1000)
        except LINK_ERRORS:
            pass
        self._close()
        self.store.commit()

    def ping(self):
        if self._up(0):
            self.session.ping(ticks_ms())
            self._guard(self._flush_tx, ticks_ms(), self.timeout_ms)
        elif not self.supervisor.down:
            self._check()

    def publish(self, topic, msg, retain=False, qos=0):
        """Returns once the message is accepted: QoS 0 written to the socket, QoS 1/2
        recorded in the store.  Waits (processing acks) only while the window is full.
        Returns the packet id (0 for QoS 0).
        While the link is down (reconnect=True, or any time with a flash store) QoS 1/2
        messages are accepted into the store and go out after the next CONNACK; if the
        store is full this waits up to timeout_ms for the link, then raises StoreFull.
        QoS 0 messages are dropped while the link is down (at most once; counted)."""
        sess = self.session
        store = self.store
        while qos or self.sock is None or not sess.connected:  # QoS 0, connected: straight on
            if not self._up(0):
                check_topic(topic, False)  # before dropping, waiting or storing
                if qos == 0:
                    if not (self.reconnect or self.supervisor.down):
                        self._check()
                    self.dropped += 1
                    return 0
                if not (self.reconnect or getattr(store, "persistent", False)):
                    self._check()
                start = ticks_ms()
                while store.count >= store.capacity and not self._up(0):
                    left = self._left(start, self.timeout_ms)
                    if left <= 0:
                        raise StoreFull("store full (%d messages) and no connection" % store.count)
                    self._sleep_until_retry(left)
                if not self.is_connected():
                    return sess.publish(topic, msg, qos, retain, ticks_ms())
            # connected: wait while the window is full, or the store (which filled while
            # the link was down) has no slot left
            if qos and (sess.window_full() or store.count >= store.capacity):
                start = ticks_ms()
                while (sess.window_full() or store.count >= store.capacity) and self.is_connected():
                    left = self._left(start, self.timeout_ms)
                    if left <= 0:
                        self._link_lost(ConnectionLost("timed out waiting for the in-flight window"))
                        break
                    self._guard(self._pump, left)
                if not self.is_connected() and (self.reconnect or getattr(store, "persistent", False)):
                    continue  # the link went while we waited: take the way for a link that is down
            break
        now = ticks_ms()
        pid = 0 if not qos and sess.publish0(topic, msg, retain, now) else sess.publish(topic, msg, qos, retain, now)
        if self.sock is not None:
            try:  # inline, not _guard: no bound method or tuple per message
                # The first write here, a call less than _flush_tx: the socket usually
                # takes the whole packet.  What it leaves, _flush_tx writes (or waits for).
                n = sess.txn - sess.txoff
                if n:
                    try:
                        k = send(self.sock, sess.tx, sess.txoff, n)
                    except OSError as e:
                        self._io_failed(e)
                    if k == n:
                        sess.txoff = sess.txn = 0  # sess.written(n), inline
                        self._stall = None
                    else:
                        if k:
                            sess.written(k)
                            self._stall = None
                        self._flush_tx(now, self.timeout_ms)
            except LINK_ERRORS as e:
                self._close()
                self._link_lost(e)
        return pid

    def subscribe(self, topic, qos=0):
        """Subscribe and wait for SUBACK; returns the granted QoS (a list for a list of
        (topic, qos)).  Raises MQTTException when the broker answers 0x80 (failure).
        The subscription is remembered and restored after a reconnect that lost it."""
        topics = topic if isinstance(topic, list) else [(topic, qos)]
        for t, q in topics:  # refuse a bad filter before remembering it
            check_topic(t, True)
            if q not in (0, 1, 2):
                raise ValueError("qos must be 0, 1 or 2")
        sup = self.supervisor
        sup.remember(topics)
        sup.resub = True
        if not self._up(0):
            if sup.down:
                return None  # reconnect=True: subscribed after the next CONNACK
            self._check()
        codes = self._guard(self._subscribe, topics)
        if codes is False:
            return None  # link lost (reconnect=True): restored after the next CONNACK
        sup.resub = False
        return codes[0] if len(codes) == 1 else codes

    def unsubscribe(self, topic):
        topics = topic if isinstance(topic, list) else [topic]
        self._check()
        self._request(self.session.unsubscribe(topics, ticks_ms()), "UNSUBACK", self.timeout_ms)
        self.supervisor.forget(topics)

    def check_msg(self):
        """Process whatever has arrived, without waiting; delivers messages to the callback."""
        if self._up(0):
            self._guard(self._pump, 0)
        elif not self.supervisor.down:
            self._check()

    def wait_msg(self, timeout_ms=-1):
        """Wait for and process at least one packet from the broker (umqtt), or with
        timeout_ms >= 0 at most that long; returns True when a packet was handled."""
        start = ticks_ms()
        while True:
            left = -1 if timeout_ms < 0 else max(0, self._left(start, timeout_ms))
            if not self._up(left):
                if not self.supervisor.down:
                    self._check()
                if timeout_ms >= 0:
                    left = self._left(start, timeout_ms)
                    if left <= 0:
                        return False
                self._sleep_until_retry(left)
                continue
            if self._guard(self._pump, max(0, self._left(start, timeout_ms)) if timeout_ms >= 0 else -1):
                return True
            if timeout_ms >= 0 and self._left(start, timeout_ms) <= 0:
                return False

    def flush(self, timeout_ms=None):
        """Drive I/O until nothing is in flight in either direction (True) or timeout
        (False).  With reconnect=True this includes re-connecting."""
        if not (self.reconnect or self.supervisor.down):
            self._check()
        return self._flush(self.timeout_ms if timeout_ms is None else timeout_ms)

    # ---- extras ----------------------------------------------------------------
    def is_connected(self):
        return self.sock is not None and self.session.connected

    def in_flight(self):
        return self.store.count

    def progress_within(self, ms):
        """True if the protocol made progress in the last `ms`: a packet arrived, a
        connect attempt completed, or nothing was owed.  Feed a watchdog only then."""
        if self.is_connected() and not self.session.busy():
            self._progress = ticks_ms()
        return ticks_diff(ticks_ms(), self._progress) < ms

    def close(self):
        """Drop the socket without DISCONNECT (the broker will publish the will)."""
        self.supervisor.down = False
        self._close()

    def room(self):
        """QoS 1/2 messages the store takes now; publish() beyond that waits for acks
        (while the link is down: up to timeout_ms, then StoreFull)."""
        return self.store.capacity - self.store.count

    def stats(self):
        """A new dict: the store's figures (messages, capacity, inbound, held; a flash
        ring adds size, free_bytes, skipped, erases, ...) and reconnects, dropped."""
        d = self.store.stats()
        d["reconnects"] = self.reconnects
        d["dropped"] = self.dropped
        return d

    # ---- connection management --------------------------------------------------
    def _begin(self, t):
        """Start a connection attempt that must succeed within t ms: the TCP connect is
        started here and completed, like the CONNACK wait, by _advance."""
        self._close()
        self._ev = None
        self._att = ticks_add(ticks_ms(), t)
        self.sock = self._raw = s = compat.open_tcp(self.server, self.port)
        self._poll_in = compat.poller(s)
        self._poll_out = compat.poller(s, True)

    def _advance(self, w):
        """Drive the attempt for at most w ms (-1: until it ends).  Returns the CONNECTED
        event once the broker accepted, else False (still in progress); raises when the
        attempt failed or its time is up (the caller closes the socket)."""
        sess = self.session
        start = ticks_ms()
        while True:
            left = ticks_diff(self._att, ticks_ms())
            if left <= 0:
                if sess.open:
                    raise ConnectionLost("timed out waiting for CONNACK")
                raise OSError(errno.ETIMEDOUT, "connect timed out")
            if w >= 0:
                left = max(0, min(left, self._left(start, w)))
            if sess.open:
                self._pump(left)
                ev = self._ev
                if ev is not None and ev[0] == CONNECTED:
                    # resends are queued by the session [MQTT-4.4.0-1], the
                    # subscriptions to restore by the supervisor
                    self._ev = self._att = None
                    self._progress = now = ticks_ms()
                    self.supervisor.up(ev[2], now)
                    self._flush_tx(now, 0)
                    return ev
            elif compat.wait(self._poll_out, left):
                compat.check_connected(self._raw)
                s = self.sock
                if self.ssl:
                    params = self.ssl_params
                    if hasattr(self.ssl, "wrap_socket"):  # an SSLContext (newer umqtt API)
                        params = {"context": self.ssl}
                        params.update(self.ssl_params)
                    self.sock = s = compat.wrap_tls(s, self.server, params, max(1, ticks_diff(self._att, ticks_ms())))
                    self._poll_in = compat.poller(s)
                    self._poll_out = compat.poller(s, True)
                sess.connect(self.client_id, self._clean, self.keepalive, ticks_ms(), self.lw,
                             self.user, self.pswd if self.user is not None else None)
                continue
            if w >= 0 and self._left(start, w) <= 0:
                return False

    def _go_down(self, e):
        """The link is gone (reconnect=True): the supervisor schedules the next attempt."""
        self._close()
        self.last_error = e
        self.supervisor.lost(e, ticks_ms())

    def _link_lost(self, e):
        if not self.reconnect:
            self._close(e)
        self._go_down(e)

    def _guard(self, f, *args):
        """Run an I/O step; a lost link raises, or with reconnect=True goes down
        (and the step returns False)."""
        try:
            return f(*args)
        except LINK_ERRORS as e:
            if self.sock is not None:
                self._close()
            self._link_lost(e)
            return False

    def _up(self, w):
        """True when connected.  While down (reconnect=True), starts an attempt once it
        is due and drives it for at most w ms (-1: until it ends)."""
        if self.is_connected():
            return True
        if not self.supervisor.down:
            return False
        try:
            if self._att is None:
                if self.supervisor.due(ticks_ms()):
                    return False
                self._begin(self.timeout_ms)
            if not self._advance(w):
                return False
        except (OSError, MQTTException) as e:
            self._progress = ticks_ms()  # an attempt completed: the loop is alive
            self._go_down(e)
            return False
        self.reconnects += 1  # (the supervisor's up() ended .down)
        return True

    def _sleep_until_retry(self, left):
        """Wait (at most `left` ms, -1 = as needed) for the next reconnect attempt, then
        drive it for what is left."""
        if not self.supervisor.down:
            if left > 0:
                sleep_ms(left)
            return
        start = ticks_ms()
        if self._att is None:
            d = self.supervisor.due(start)
            if left >= 0:
                d = min(d, left)
            if d:
                sleep_ms(d)
        self._up(max(0, self._left(start, left)) if left >= 0 else -1)

    def _flush(self, t):
        start = ticks_ms()
        while self.session.busy() or (self.supervisor.down and self.store.count):
            left = self._left(start, t)
            if left <= 0:
                return False
            if self._up(left):
                self._guard(self._pump, max(0, self._left(start, t)))
            elif self.supervisor.down:
                self._sleep_until_retry(max(0, self._left(start, t)))
            else:
                return False
        return True

    # ---- I/O --------------------------------------------------------------------
    def _left(self, start, t):
        """ms left of t since start."""
        return t - ticks_diff(ticks_ms(), start)

    def _check(self):
        if self.sock is None:
            raise MQTTException("not connected")

    def _close(self, e=None, by_broker=False):
        """Drop the socket (no DISCONNECT, so the will fires); then raise e if given.
        by_broker: the broker ended the connection (for the poison rule, Session.link_ended)."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        sess = self.session
        now = ticks_ms()
        self.supervisor.ended(now)
        sess.link_ended(by_broker, now)
        sess.reset()
        self._att = self._stall = None
        if e:
            raise e

    def _flush_tx(self, start, t):
        """Write what the session queued, waiting for the socket at most until t ms
        after start; returns True when all is out (what is left goes in a later call).
        A socket that takes nothing for timeout_ms means the link is dead."""
        sess = self.session
        n = sess.txn - sess.txoff
        while n > 0:
            try:
                k = send(self.sock, sess.tx, sess.txoff, n)
            except OSError as e:
                self._io_failed(e)
            if k:
                sess.written(k)
                self._stall = None
                if k == n:  # all of it: the usual case
                    return True
                n -= k
                continue
            now = ticks_ms()
            if self._stall is None:
                self._stall = now
            stall = self.timeout_ms - ticks_diff(now, self._stall)
            if stall <= 0:
                self._close(ConnectionLost("send timed out"))
            w = min(stall, self._left(start, t))
            if w <= 0:
                return False
            compat.wait(self._poll_out, w)
        return True

    def _io_failed(self, e, what="send"):
        """Writing to (or reading from) the socket raised OSError e: the link is dead.
        Before the CONNACK it is the connection attempt that failed, raised as the OSError
        it is (MicroPython has no SO_ERROR: a refused connect shows only here)."""
        reset = compat.is_reset(e)
        if self.session.connected:
            e = ConnectionLost("%s failed: %s" % (what, e))
        self._close(e, reset)

    def _deliver(self, ev):
        if not self.deliver:
            return
        cb = self.cb
        if cb is not None:
            if self._details:
                cb(ev[1], ev[2], ev[4], ev[3], ev[5])
            else:
                cb(ev[1], ev[2])
        self.session.acknowledge(ev, ticks_ms())

    def _pump(self, timeout_ms):
        """One round of I/O within timeout_ms (-1: until the next timer): write pending
        output, wait for input, handle every complete packet, run timers.
        Returns True when anything was received."""
        sess = self.session
        start = ticks_ms()
        t = self.timeout_ms if timeout_ms < 0 else timeout_ms
        self._flush_tx(start, t)
        got = self._drain()
        if not got and timeout_ms:
            self.store.commit()  # group commit: sync before idling
            if sess.inflight:
                compat.ack_now(self._raw)  # acks are due: do not let a delayed ACK stall them
            nt = sess.next_timer(start)
            w = -1 if timeout_ms < 0 else max(0, self._left(start, timeout_ms))
            if nt >= 0 and (w < 0 or nt < w):
                w = nt
            if compat.wait(self._poll_in, w):
                got = self._drain()
        try:
            sess.tick(ticks_ms())
        except ConnectionLost as e:
            self._close(e)
        self._flush_tx(start, t)
        return got

    def _drain(self):
        """Read until the socket would block, handling packets as they complete.
        Returns True when anything was received.  Stops at CONNACK, so that connect()
        returns before anything the broker sent after it is handled."""
        sess = self.session
        got = False
        while True:
            while True:
                try:
                    ev = sess.next_event(ticks_ms())
                except ProtocolError as e:
                    self._close(e)
                if ev is None:
                    break
                k = ev[0]
                if k == MESSAGE:
                    self._deliver(ev)
                elif k == CONNECTED:
                    self._ev = ev  # see _advance
                    return True
                elif k != PONG:  # SUBACKED, UNSUBACKED: see _request
                    self.supervisor.event(ev)
            if sess.txn - sess.txoff >= 512:
                # a broker flooding us would otherwise grow tx by 4 bytes per ack
                self._flush_tx(ticks_ms(), self.timeout_ms)
            try:
                n = compat.recv_into(self.sock, sess.rx_space())
            except OSError as e:
                self._io_failed(e, "receive")
            if n == 0:
                self._close(ConnectionLost("connection closed by broker"), True)
            if n < 0:  # would block
                self._flush_tx(ticks_ms(), 0)  # the acks: what the socket takes now
                if sess.shed:
                    self._shed_reconnect(sess.shed)
                return got
            sess.received(n)
            self._progress = ticks_ms()
            got = True

    def _shed_reconnect(self, shed):
        """Inbound QoS 2 PUBLISH were left unacknowledged (store full): leave so that the
        broker resends them after the reconnect.  Gracefully - DISCONNECT after the acks,
        then read to the broker's EOF - because closing with unread data sends a TCP
        reset, and a broker may then drop the acks we just sent and redeliver forever."""
        sess = self.session
        sess.disconnect(ticks_ms())  # the will is not wanted: we are back in a moment
        self._flush_tx(ticks_ms(), self.timeout_ms)
        start = ticks_ms()
        junk = memoryview(bytearray(256))
        while self._left(start, 2000) > 0:  # what follows is resent after the reconnect
            try:
                n = compat.recv_into(self.sock, junk)
            except OSError:
                break
            if n == 0:
                break
            if n < 0 and not compat.wait(self._poll_in, self._left(start, 2000)):
                break
        self._close(ConnectionLost("inbound QoS 2 store full: %d PUBLISH left for the broker to resend" % shed))

    def _subscribe(self, topics):
        codes = self._request(self.session.subscribe(topics, ticks_ms()), "SUBACK", self.timeout_ms)
        if 0x80 in codes:
            raise MQTTException("subscription refused by the broker (SUBACK 0x80)")
        return codes

    def _request(self, pid, what, t):
        """Wait (at most t ms) for the SUBACK or UNSUBACK of pid, whose packet is
        queued; returns its return codes (b"" for an UNSUBACK)."""
        acks = self.supervisor.acks
        start = ticks_ms()
        while pid not in acks:
            left = self._left(start, t)
            if left <= 0:
                self._close(ConnectionLost("timed out waiting for " + what))
            self._pump(left)
            acks = self.supervisor.acks  # (a new dict once the link ended)
        return acks.pop(pid)
