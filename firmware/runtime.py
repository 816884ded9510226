# What every part of the firmware shares while it runs: the version, log lines with the
# uptime, compact JSON, and the state kept across resets and deep sleep.  It imports only
# board.py, so app.py (start-up) and device.py (the device) both import it without a circle.
import sys
import json

import board
try:
    from time import ticks_ms, ticks_diff, sleep_ms  # MicroPython
except ImportError:  # CPython; not imported earlier on MicroPython, where the library
    from mqtt.compat import ticks_ms, ticks_diff, sleep_ms  # must load after validation

VERSION = "1.0.0"
CRASH_LIMIT = 3      # this many crashes in a row -> next boot stays in safe mode (startup.py)

# [uptime so far, ticks at the last call]: summing ticks_diff keeps uptime_ms() growing
# across the tick wrap (2^30 ms on an ESP32, and ticks_diff only spans +-2^29 ms), as long
# as it is called at least once per 6 days (every log line and health report calls it).
# Started by the first call, so a test can swap the tick source (compat.set_clock) first.
_up = [0, None]


def uptime_ms():
    now = ticks_ms()
    if _up[1] is not None:
        _up[0] += ticks_diff(now, _up[1])
    _up[1] = now
    return _up[0]


def log(msg):
    try:
        sys.stderr.write("[%9.3f] %s\n" % (uptime_ms() / 1000, msg))
    except Exception:
        pass


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


class State:
    """What must survive a reset or deep sleep but not a power cycle: RTC memory on
    the ESP32, a file next to the ring on the host.  seq: the next telemetry sequence
    number; crashes: consecutive crashed boots; wake_s: wake period set by command."""

    def __init__(self):
        self.seq = 0
        self.crashes = 0
        self.boots = 0
        self.wake_s = None
        try:
            d = json.loads(board.rtc_load() or b"{}")
            self.seq = int(d.get("seq", 0))
            self.crashes = int(d.get("crashes", 0))
            self.boots = int(d.get("boots", 0))
            self.wake_s = d.get("wake_s")
        except (ValueError, TypeError, AttributeError):
            pass  # blank or garbled RTC memory: a cold start
        self.boots += 1

    def save(self):
        d = {"seq": self.seq, "crashes": self.crashes, "boots": self.boots}
        if self.wake_s is not None:
            d["wake_s"] = self.wake_s
        board.rtc_save(dumps(d).encode())
