# Reconnect back-off: exponential with jitter and a cap, so a fleet of sensors does
# not reconnect in lock-step after a broker restart.  When to reset() is the caller's
# rule: MQTTClient resets only after a link that stayed up for cap_ms (see
# client._go_down), so an error that recurs on every connection cannot become a storm.
from .compat import urandom


class Backoff:
    def __init__(self, first_ms=250, cap_ms=10000):
        self.first_ms = first_ms
        self.cap_ms = cap_ms
        self.reset()

    def reset(self):
        self._ceiling = self.first_ms

    def next_ms(self):
        """The next delay: uniform in [ceiling/2, ceiling], then the ceiling doubles."""
        c = self._ceiling
        self._ceiling = min(c * 2, self.cap_ms)
        r = urandom(2)
        return c // 2 + (c // 2) * ((r[0] << 8) | r[1]) // 65535
