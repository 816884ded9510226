# The connection supervisor: the connection policy both front ends (client.py, the
# blocking one, and aio.py) follow.  Sans-I/O like the session it drives: fed `now` and
# what happened (a CONNACK, a lost link, an ack, a subscription made), it decides when
# the next attempt is due (back-off with jitter), what to subscribe again after a
# CONNACK (queued on the session), and which request an ack answers.  Resends [MQTT-4.4]
# and the dead-link timers (keepalive, ack deadlines) are the session's; the front ends
# own the sockets, the clock and the waiting.
from .compat import ticks_diff, ticks_add, urandom
from .session import SUBACKED


class Supervisor:
    def __init__(self, session, backoff_ms=250, cap_ms=10000):
        self.session = session
        self.first_ms = backoff_ms
        self.cap_ms = cap_ms
        self._ceiling = backoff_ms
        self.down = False     # the link is lost and the front end re-connects
        self.next_try = 0     # when the next connection attempt is due (ticks_ms)
        self.subs = []        # [(filter, qos)] to restore when the broker lost the session
        self.resub = False    # a SUBSCRIBE was cut off: restore even if the session survived
        self.acks = {}        # packet id -> SUBACK return codes (b"" for an UNSUBACK)
        self._respid = 0      # packet id of the SUBSCRIBE restoring the subscriptions
        self._up_at = 0       # when the last CONNACK arrived
        self._healthy = False  # the link last lost had lived long enough (see lost)

    def due(self, now):
        """ms until the next connection attempt is due (0: now)."""
        return max(0, ticks_diff(self.next_try, now))

    def up(self, session_present, now):
        """A CONNACK accepted the link.  After a re-connection, queue the SUBSCRIBE that
        restores the subscriptions (its SUBACK is not waited for) when the broker lost
        them [MQTT-3.2.2-1], or when a SUBSCRIBE was cut off by the outage."""
        self._up_at = now
        if self.down and self.subs and (not session_present or self.resub):
            self._respid = self.session.subscribe(self.subs, now)
        else:
            self.resub = False
        self.down = False

    def ended(self, now):
        """The link is gone; called before the session forgets it."""
        if self.session.connected:
            self._healthy = ticks_diff(now, self._up_at) >= self.cap_ms
        self.acks = {}

    def lost(self, e, now):
        """The link (or an attempt) failed with e and the front end re-connects: schedule
        the next attempt; returns its delay in ms.

        Back-off rule: each failed attempt, and each link that dies within cap_ms of its
        CONNACK, doubles the delay (up to cap_ms; uniform in [delay/2, delay], so a fleet
        does not re-connect in lock-step); only a link that stayed up at least cap_ms
        starts it over at backoff_ms.  So an error that recurs on every connection (a
        broker that drops us right after CONNACK, a message it refuses every time) settles
        at about one connection per cap_ms instead of a storm, while a broker restart after
        a long healthy link is retried within backoff_ms."""
        if self._healthy:
            self._ceiling = self.first_ms
            self._healthy = False
        c = self._ceiling
        self._ceiling = min(c * 2, self.cap_ms)
        r = urandom(2)
        d = c // 2 + (c // 2) * ((r[0] << 8) | r[1]) // 65535
        self.down = True
        self.next_try = ticks_add(now, d)
        t = self.session.trace
        if t:
            t("link down (%s); next attempt in %d ms" % (e, d))
        return d

    def event(self, ev):
        """A SUBACKED or UNSUBACKED event: the codes go to the request waiting for them."""
        pid = ev[1]
        if pid == self._respid and ev[0] == SUBACKED:
            self._respid = 0
            self.resub = False
            log = self.session.log
            if 0x80 in ev[2] and log:
                log("restoring subscriptions: SUBACK 0x80 (refused)")
        else:
            self.acks[pid] = ev[2] or b""

    def remember(self, topics):
        """[(filter, qos)] subscribed: restored when a broker loses the session."""
        for t, q in topics:
            self.subs = [s for s in self.subs if s[0] != t] + [(t, q)]

    def forget(self, filters):
        self.subs = [s for s in self.subs if s[0] not in filters]
