# Watchdog hook.  On ESP32 pass machine.WDT(timeout=...) as `hw`: feed() feeds it,
# and a hung loop resets the chip (the flash ring then replays after reboot).  On the
# unix port and CPython a software stand-in runs in a thread and, when not fed in
# time, prints one line to stderr and kills the process with SIGKILL - as abrupt as
# a reset - so tests can prove a stalled loop is caught.
#
# Feed only when the loop made progress, e.g.
#     if client.progress_within(period_ms): wdt.feed()
# and keep every blocking call bounded well below timeout_ms.
import sys

from .compat import ticks_ms, ticks_diff, sleep_ms


def hard_reset(why):
    """Reset like hardware would: no cleanup, no flush of anything but the message."""
    try:
        sys.stderr.write("watchdog: %s; resetting\n" % why)
    except Exception:
        pass
    try:
        import machine

        machine.reset()  # ESP32 and other real boards
    except (ImportError, AttributeError):
        import os

        os.system("kill -9 $PPID")  # unix port and CPython: the shell's parent is us


class Watchdog:
    def __init__(self, timeout_ms, hw=None):
        self.timeout_ms = timeout_ms
        self.hw = hw
        self.fed = ticks_ms()
        self.feeds = 0
        if hw is None:
            import _thread

            _thread.start_new_thread(self._watch, ())

    def feed(self):
        self.fed = ticks_ms()
        self.feeds += 1
        if self.hw is not None:
            self.hw.feed()

    def _watch(self):
        step = max(10, min(200, self.timeout_ms // 10))
        while True:
            sleep_ms(step)
            starved = ticks_diff(ticks_ms(), self.fed)
            if starved > self.timeout_ms:
                return hard_reset("not fed for %d ms (timeout %d ms)" % (starved, self.timeout_ms))
