# Connection policy: when to try the next connection, and which
# subscriptions to restore after a CONNACK.  Sans-I/O like the session: fed `now` and
# what happened, it answers with decisions; the front end owns the sockets, the clock
# and the waiting.  mqtt.aio uses it; client.py keeps the same rules inline (moving it
# onto this module costs ~1.4 KB of heap, which the 64-bit port's 128K test heap lacks:
# see the commit that reverted it).
from .compat import ticks_diff, ticks_add
from .backoff import Backoff


class Policy:
    def __init__(self, backoff_ms=250, cap_ms=10000):
        self.backoff = Backoff(backoff_ms, cap_ms)
        self.subs = []       # [(filter, qos)] to restore when the broker lost the session
        self.next_try = 0    # when the next connection attempt is due (ticks_ms)
        self._up_at = 0      # when the last CONNACK arrived
        self._healthy = False  # the link last lost had lived long enough (see retry)

    def up(self, now):
        """A CONNACK accepted the connection."""
        self._up_at = now

    def ended(self, now):
        """A connection that had its CONNACK is gone."""
        self._healthy = ticks_diff(now, self._up_at) >= self.backoff.cap_ms

    def retry(self, now):
        """The link is down and the front end re-connects: schedule the next attempt
        (self.next_try) and return its delay in ms.

        Back-off rule: each failed attempt, and each link that dies within cap_ms of its
        CONNACK, doubles the delay (up to cap_ms, with jitter); only a link that stayed
        up at least cap_ms starts it over at backoff_ms.  So an error that recurs on every
        connection (a broker that drops us right after CONNACK, a message it refuses
        every time) settles at about one connection per cap_ms instead of a storm, while
        a broker restart after a long healthy link is retried within backoff_ms."""
        if self._healthy:
            self.backoff.reset()
            self._healthy = False
        d = self.backoff.next_ms()
        self.next_try = ticks_add(now, d)
        return d

    def remember(self, topics):
        """[(filter, qos)] subscribed: restore them when a broker loses the session."""
        for t, q in topics:
            self.subs = [s for s in self.subs if s[0] != t] + [(t, q)]

    def forget(self, filters):
        self.subs = [s for s in self.subs if s[0] not in filters]

    def restore(self, session_present, cut_off):
        """After a re-connection's CONNACK: the subscriptions to send again, or None.  All
        of them when the broker lost the session, or when a SUBSCRIBE was cut off."""
        return self.subs if self.subs and (not session_present or cut_off) else None
