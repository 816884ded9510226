# MQTTClient: the blocking front end.  It owns the socket and the clock and moves
# bytes between them and the sans-I/O Session.  Every wait is a poll() with a
# bound, so no call blocks longer than `timeout_ms` (wait_msg() waits for a
# message by design, but still sends PINGREQ and notices a dead link).
#
# A superset of umqtt.simple's MQTTClient: code written for umqtt runs unchanged.

from . import compat
from .compat import ticks_ms, ticks_diff
from .codec import MQTTException, ProtocolError
from .session import Session, ConnectionLost, CONNECTED, MESSAGE, SUBACKED, UNSUBACKED
from .store import MemoryStore


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0,
                 ssl=False, ssl_params={}, *, store=None, window=16, max_packet=16384,
                 timeout_ms=10000, ping_timeout_ms=0, trace=None, ring_size=32768,
                 ring_capacity=64, sync_every=1):
        """store: None (RAM), a path (flash ring file, see ring.py: ring_size bytes,
          ring_capacity messages, sync_every records per flush) or a store object.
        window: QoS 1/2 messages in flight before publish() waits for acks.
        max_packet: largest packet accepted from the broker; larger ones close the link.
        timeout_ms: bound on every blocking step (connect, TLS, acks awaited by a call).
        trace: callable(str) that gets a line for every packet sent and received."""
        if port == 0:
            port = 8883 if ssl else 1883
        self.client_id = client_id
        self.server = server
        self.port = port
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.ssl_params = ssl_params
        self.timeout_ms = timeout_ms
        self.sock = None
        self.cb = None
        self._details = False
        self.lw = None
        if store is None:
            store = MemoryStore(window)
        elif isinstance(store, str):
            from .ring import RingStore  # only loaded when a flash store is asked for

            store = RingStore(store, ring_size, ring_capacity, sync_every,
                              log=trace)
        self.store = store
        self.session = Session(store, window, max_packet, ping_timeout_ms)
        self.session.trace = trace
        self._poll_in = None
        self._poll_out = None
        self._suback = None
        # False: hold received PUBLISH back (neither delivered nor acknowledged, so the
        # broker keeps them), e.g. while finishing flows before disconnecting.
        self.deliver = True

    # ---- umqtt.simple API ----------------------------------------------------
    def set_callback(self, f, details=False):
        """f(topic, msg) as umqtt; with details=True f(topic, msg, retained, qos, dup)."""
        self.cb = f
        self._details = details

    def set_last_will(self, topic, msg, retain=False, qos=0):
        if not topic or qos not in (0, 1, 2):
            raise ValueError("bad will topic or qos")
        self.lw = (topic, msg, qos, retain)

    def connect(self, clean_session=True, timeout_ms=None):
        """Open the connection and wait for CONNACK; returns session present (bool).
        Raises ConnectRefused (an MQTTException) when the broker refuses."""
        self._close()
        t = self.timeout_ms if timeout_ms is None else timeout_ms
        start = ticks_ms()
        s = compat.open_tcp(self.server, self.port, t)
        try:
            if self.ssl:
                if hasattr(self.ssl, "wrap_socket"):  # an SSLContext (newer umqtt API)
                    params = {"context": self.ssl}
                    params.update(self.ssl_params)
                else:
                    params = self.ssl_params
                s = compat.wrap_tls(s, self.server, params, t)
        except BaseException:
            s.close()
            raise
        self.sock = s
        self._poll_in = compat.poller(s, compat.POLLIN)
        self._poll_out = compat.poller(s, compat.POLLOUT)
        sess = self.session
        try:
            sess.connect(self.client_id, clean_session, self.keepalive, ticks_ms(), self.lw,
                         self.user, self.pswd if self.user is not None else None)
            self._flush_tx(start, t)
            while True:
                ev = self._next(start, t)
                if ev[0] == CONNECTED:
                    break
            self._flush_tx(start, t)  # resends queued by the session [MQTT-4.4.0-1]
            return bool(ev[1])
        except BaseException:
            self._close()
            raise

    def disconnect(self, timeout_ms=None):
        """Finish in-flight QoS 1/2 flows (bounded), send DISCONNECT and close.
        What is left unfinished stays in the store for the next persistent session."""
        if self.sock is None:
            return
        try:
            if self.session.connected:
                self.flush(self.timeout_ms if timeout_ms is None else timeout_ms)
            self.session.disconnect(ticks_ms())
            self._flush_tx(ticks_ms(), 1000)
        except (OSError, MQTTException):
            pass
        self._close()

    def ping(self):
        self._check()
        self.session.ping(ticks_ms())
        self._flush_tx(ticks_ms(), self.timeout_ms)

    def publish(self, topic, msg, retain=False, qos=0):
        """Returns once the message is accepted: QoS 0 written to the socket, QoS 1/2
        recorded in the store.  Waits (processing acks) only while the window is full.
        Returns the packet id (0 for QoS 0).  With a flash store, QoS 1/2 are accepted
        while disconnected too; they go out after the next connect()."""
        sess = self.session
        if self.sock is None and qos and getattr(self.store, "persistent", False):
            return sess.publish(topic, msg, qos, retain, ticks_ms())
        self._check()
        if qos and sess.window_full():
            start = ticks_ms()
            while sess.window_full():
                self._io(start, self.timeout_ms, "the in-flight window to open")
        pid = sess.publish(topic, msg, qos, retain, ticks_ms())
        self._flush_tx(ticks_ms(), self.timeout_ms)
        return pid

    def subscribe(self, topic, qos=0):
        """Subscribe and wait for SUBACK; returns the granted QoS.  Raises
        MQTTException when the broker answers 0x80 (failure)."""
        topics = topic if isinstance(topic, list) else [(topic, qos)]
        codes = self._request(self.session.subscribe(topics, ticks_ms()), "SUBACK")
        for c in codes:
            if c == 0x80:
                raise MQTTException("subscription refused by the broker (SUBACK 0x80)")
        return codes[0] if len(codes) == 1 else codes

    def unsubscribe(self, topic):
        topics = topic if isinstance(topic, list) else [topic]
        self._request(self.session.unsubscribe(topics, ticks_ms()), "UNSUBACK")

    def check_msg(self):
        """Process whatever has arrived, without waiting; delivers messages to the callback."""
        self._check()
        self._pump(0)

    def wait_msg(self, timeout_ms=-1):
        """Wait for and process at least one packet from the broker (umqtt), or with
        timeout_ms >= 0 at most that long; returns True when a packet was handled."""
        self._check()
        if timeout_ms < 0:
            while not self._pump(-1):
                pass
            return True
        start = ticks_ms()
        while True:
            left = timeout_ms - ticks_diff(ticks_ms(), start)
            if self._pump(max(left, 0)):
                return True
            if left <= 0:
                return False

    def flush(self, timeout_ms=None):
        """Drive I/O until nothing is in flight in either direction (True) or timeout (False)."""
        self._check()
        t = self.timeout_ms if timeout_ms is None else timeout_ms
        start = ticks_ms()
        while self.session.busy():
            left = t - ticks_diff(ticks_ms(), start)
            if left <= 0:
                return False
            self._pump(left)
        return True

    # ---- extras ----------------------------------------------------------------
    def is_connected(self):
        return self.sock is not None and self.session.connected

    def in_flight(self):
        return self.store.count

    def close(self):
        """Drop the socket without DISCONNECT (the broker will publish the will)."""
        self._close()

    # ---- I/O --------------------------------------------------------------------
    def _check(self):
        if self.sock is None:
            raise MQTTException("not connected")

    def _close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self.session.reset()

    def _fail(self, e):
        """Close the link without DISCONNECT (so the will fires) and raise e."""
        self._close()
        raise e

    def _flush_tx(self, start, t):
        sess = self.session
        buf, off, n = sess.output()
        while n:
            try:
                k = compat.send(self.sock, buf, off, n)
            except OSError as e:
                self._fail(ConnectionLost("send failed: %s" % e))
            if k:
                sess.written(k)
                off += k
                n -= k
            else:
                left = t - ticks_diff(ticks_ms(), start)
                if left <= 0 or not compat.wait(self._poll_out, left):
                    self._fail(ConnectionLost("send timed out"))
                buf, off, n = sess.output()

    def _read(self):
        """Read what is available into the session; False if nothing was."""
        sess = self.session
        try:
            n = compat.recv_into(self.sock, sess.rx_space())
        except OSError as e:
            self._fail(ConnectionLost("receive failed: %s" % e))
        if n == 0:
            self._fail(ConnectionLost("connection closed by broker"))
        if n < 0:
            return False
        sess.received(n)
        return True

    def _next(self, start, t):
        """Next session event, waiting for data up to the deadline start+t."""
        sess = self.session
        while True:
            try:
                ev = sess.next_event(ticks_ms())
            except ProtocolError as e:
                self._fail(e)
            if ev is not None:
                if ev[0] == MESSAGE:
                    self._deliver(ev)
                return ev
            if not self._read():
                left = t - ticks_diff(ticks_ms(), start)
                if left <= 0 or not compat.wait(self._poll_in, left):
                    self._fail(ConnectionLost("timed out waiting for the broker"))

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
        """One round of I/O: write pending output, wait up to timeout_ms (-1: until the
        next keepalive timer) for input, handle every complete packet, run timers.
        Returns True when anything was received."""
        sess = self.session
        now = ticks_ms()
        self._flush_tx(now, self.timeout_ms)
        got = self._drain()
        if not got and timeout_ms:
            self.store.commit()  # group commit: sync before idling
            nt = sess.next_timer(now)
            w = timeout_ms if nt < 0 else nt if timeout_ms < 0 else min(nt, timeout_ms)
            if compat.wait(self._poll_in, w):
                got = self._drain()
        try:
            sess.tick(ticks_ms())
        except ConnectionLost as e:
            self._fail(e)
        self._flush_tx(ticks_ms(), self.timeout_ms)
        return got

    def _drain(self):
        """Read until the socket would block, handling packets as they complete.
        Returns True when anything was received."""
        sess = self.session
        got = False
        while True:
            while True:
                try:
                    ev = sess.next_event(ticks_ms())
                except ProtocolError as e:
                    self._fail(e)
                if ev is None:
                    break
                if ev[0] == MESSAGE:
                    self._deliver(ev)
                elif ev[0] in (SUBACKED, UNSUBACKED):
                    self._suback = ev
            if not self._read():
                self._flush_tx(ticks_ms(), self.timeout_ms)
                return got
            got = True

    def _io(self, start, t, what):
        left = t - ticks_diff(ticks_ms(), start)
        if left <= 0:
            self._fail(ConnectionLost("timed out waiting for " + what))
        self._pump(left)

    def _request(self, pid, what):
        """Send the queued SUBSCRIBE/UNSUBSCRIBE and wait for its ack."""
        self._check()
        self._suback = None
        start = ticks_ms()
        self._flush_tx(start, self.timeout_ms)
        while self._suback is None or self._suback[1] != pid:
            self._io(start, self.timeout_ms, what)
        ev = self._suback
        self._suback = None
        return ev[2] if ev[0] == SUBACKED else None

