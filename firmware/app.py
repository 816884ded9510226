# Entry point of the sensor firmware (main.py calls main()): the start-up decision (startup.py:
# options on the host, the board configuration, safe mode), then the device (device.py) under
# the crash-loop guard.  Order matters for RAM: the configuration is validated and the start-up
# code unloaded again before the MQTT library and the device are imported.
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

import board
import runtime


def _stop(code, why):
    """End the app: on the host with an exit code; on a device back to the REPL."""
    for line in why:
        runtime.log(line)
    if board.HOST:
        sys.exit(code)
    return code


def main(argv=None):
    host = board.HOST
    if argv is None:
        argv = sys.argv[1:] if host else []
    log = runtime.log
    log("firmware %s on %s" % (runtime.VERSION, board.describe()))
    # Options, configuration, safe mode: startup.py and what it loads, all unloaded
    # afterwards, before the MQTT library and the device are loaded.
    import startup

    try:
        o, cfg, state = startup.prepare(argv)
    except startup.Stop as e:
        return _stop(e.code, e.lines)
    finally:
        del startup
        for name in ("startup", "options", "config", "jsoncheck", "validate"):  # boot only
            sys.modules.pop(name, None)
        gc.collect()

    trace = o["trace"]
    del o  # not needed any more: RAM
    from device import Device

    dev = Device(cfg, state, trace)
    try:
        dev.run()
    except KeyboardInterrupt:
        log("interrupted")
        if dev.client is not None:
            dev.shutdown("offline")
        if dev.wdt is not None and not host:
            log("the hardware watchdog keeps running: the board resets in %d ms unless you create %s"
                % (dev.wdt_ms, cfg["safe_mode"]["flag_file"]))
        return _stop(0, [])
    except Exception as e:
        state.crashes += 1
        try:
            state.save()
        except Exception:
            pass
        log("crash %d (safe mode after %d in a row): %s: %s" % (state.crashes, runtime.CRASH_LIMIT, type(e).__name__, e))
        if hasattr(sys, "print_exception"):
            sys.print_exception(e, sys.stderr)
        else:
            import traceback

            traceback.print_exc()
        if host:
            sys.exit(1)
        runtime.sleep_ms(1000)
        board.reset()


def clear_crashes():
    """From the REPL, after fixing a crashing app: forget the crash count (device only)."""
    s = runtime.State()
    s.crashes = 0
    s.save()
