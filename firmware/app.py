# Entry point of the sensor firmware (main.py calls main()): options (host), the board
# configuration, safe mode, the crash-loop guard - then the device runtime (device.py).
# Order matters for RAM: the configuration is validated (validate.py, then unloaded)
# before the MQTT library and the runtime are imported.
#
# Topics, under mqtt.topic_prefix (default "sensors/{uid}"):
#   <prefix>/<sensor topic>  telemetry {"seq": N, "v": value} or {"seq": N, "err": "..."}
#   <prefix>/status          retained "online" / "offline" (also the last will) / "sleeping"
#   <prefix>/health          health report (JSON)
#   <prefix>/cmd             commands in: ping, health, interval, reboot (text or JSON)
#   <prefix>/reply           command replies (JSON)
# See docs/firmware.md.
import gc
import sys
import json

import board
try:
    from time import ticks_ms, ticks_diff, sleep_ms  # MicroPython
except ImportError:  # CPython; not imported earlier on MicroPython, where the library
    from mqtt.compat import ticks_ms, ticks_diff, sleep_ms  # must load after validation

VERSION = "1.0.0"
EXIT_OK = 0
CRASH_LIMIT = 3      # this many crashes in a row -> next boot stays in safe mode (see config.py)

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


# ---- entry point ----------------------------------------------------------------------------


def _stop(code, why):
    """End the app: on the host with an exit code; on a device back to the REPL."""
    for line in why:
        log(line)
    if board.HOST:
        sys.exit(code)
    return code


def _unload(name):
    sys.modules.pop(name, None)
    gc.collect()


def main(argv=None):
    host = board.HOST
    if argv is None:
        argv = sys.argv[1:] if host else []
    log("firmware %s on %s" % (VERSION, board.describe()))
    # Options, configuration, safe mode: all in config.py, which is unloaded afterwards
    # (with validate.py), before the MQTT library and the runtime are loaded.
    import config

    try:
        o, cfg, state = config.prepare(argv, board, State)
    except config.Stop as e:
        return _stop(e.code, e.lines)
    del config
    _unload("config")

    from device import Device

    dev = Device(cfg, state, o["trace"])
    try:
        dev.run()
    except KeyboardInterrupt:
        log("interrupted")
        if dev.client is not None:
            dev.shutdown("offline")
        if dev.wdt is not None and not host:
            log("the hardware watchdog keeps running: the board resets in %d ms unless you create %s"
                % (dev.wdt_ms, cfg["safe_mode"]["flag_file"]))
        return _stop(EXIT_OK, [])
    except Exception as e:
        state.crashes += 1
        try:
            state.save()
        except Exception:
            pass
        log("crash %d (safe mode after %d in a row): %s: %s" % (state.crashes, CRASH_LIMIT, type(e).__name__, e))
        if hasattr(sys, "print_exception"):
            sys.print_exception(e, sys.stderr)
        else:
            import traceback

            traceback.print_exc()
        if host:
            sys.exit(1)
        sleep_ms(1000)
        board.reset()


def clear_crashes():
    """From the REPL, after fixing a crashing app: forget the crash count (device only)."""
    s = State()
    s.crashes = 0
    s.save()
