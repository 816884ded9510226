# Host stand-ins for the board layer (unix port and CPython): no Wi-Fi, a software
# watchdog, simulated sensor hardware, RTC memory in a file, and deep sleep / reset
# simulated by ending the process with a distinctive exit code so that a wrapper
# (tools/run_firmware.sh, or a test) starts it again - RAM is lost, as on a device:
#     75  deep sleep: start again (this module then sleeps until the wake-up time)
#     76  reset (the "reboot" command)
# A watchdog that is not fed kills the process with SIGKILL (exit 137 / -9).
# No hardware module is imported here; see board.py for the interface.
import os
import sys
import time

MICROPYTHON = sys.implementation.name == "micropython"


def sleep_ms(ms):
    time.sleep(ms / 1000)

HOST = True
EXIT_DEEPSLEEP = 75
EXIT_RESET = 76

_rtc_path = None
_wake_path = None
_clock = [None]   # the board's wall clock minus the host's, in s (--clock, NTP); None: unread
_held = {}        # pin -> level forced by --pin N=LEVEL
_woke = False
_finder = None    # set_partition_finder(): raw partitions for tests


def _now_ms():
    return int(time.time() * 1000)


def _mkdirs(path):
    d = path.rsplit("/", 1)[0] if "/" in path else ""
    parts = [p for p in d.split("/") if p]
    cur = "/" if d.startswith("/") else ""
    for p in parts:
        cur = cur + p
        try:
            os.mkdir(cur)
        except OSError:
            pass
        cur += "/"


def init(cfg, opts):
    """opts: 'pins' {pin: level}, 'clock' Unix seconds (the board's clock at power-on, as an
    ESP32's RTC reads 2000-01-01: --clock).  RTC memory lives in <ring path>.rtc, the clock's offset
    from the host's in <ring path>.clock (kept across resets and deep sleep, as the RTC);
    a pending deep sleep (the wake-up time in <ring path>.wake) is waited out here."""
    global _rtc_path, _wake_path, _held, _woke
    ring = cfg["ring"]["path"]
    _mkdirs(ring)
    _rtc_path = ring + ".rtc"
    _wake_path = ring + ".wake"
    _held = dict(opts.get("pins") or {})
    try:
        with open(_wake_path) as f:
            wake_at = int(f.read())
        os.remove(_wake_path)
    except (OSError, ValueError):
        if opts.get("clock") is not None:  # power-on: not on a wake-up, the RTC kept running
            set_clock(opts["clock"])
        return
    _woke = True
    left = wake_at - _now_ms()
    if 0 < left <= 86400000:
        sleep_ms(left)


def describe():
    impl = sys.implementation
    return "host (%s %s on %s): simulated sensors, no Wi-Fi" % (
        impl.name, ".".join(str(v) for v in impl.version[:3]), sys.platform)


def chip_mismatch(chip):
    return None  # any board file runs here, its hardware simulated


def uid():
    name = os.getenv("HOSTNAME") or ""
    if not name:
        try:
            with open("/etc/hostname") as f:
                name = f.read().strip()
        except OSError:
            name = "host"
    out = "".join(c if ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "_-") else "-"
                  for c in name)
    return out[:32] or "host"


def woke_from_deepsleep():
    return _woke


def reset_cause():
    return "deep-sleep" if _woke else "power-on"


def wifi_connect(w, feed, log):
    log("wifi: skipped on the host (the host's network is used)")
    return True


def wifi_ok():
    return True


def wifi_tick(w, log):
    pass


def watchdog(timeout_ms):
    from mqtt.watchdog import Watchdog

    return Watchdog(timeout_ms, hw=None)  # software stand-in: SIGKILL when starved


def pin_held(pin, active, window_ms):
    level = _held.get(pin)
    return level is not None and level == (0 if active == "low" else 1)


def adc(pin, atten):
    import hostsim

    return hostsim.adc(pin)


def dht(kind, pin):
    import hostsim

    return hostsim.DHT(kind, pin)


def ds18x20(pin):
    import hostsim

    return hostsim.DS18X20(pin)


def i2c(bus, sda, scl, freq):
    import hostsim

    return hostsim.FakeI2C()


def mem_free():
    if MICROPYTHON:
        import gc

        gc.collect()
        return gc.mem_free()
    return None


def rtc_load():
    try:
        with open(_rtc_path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def rtc_save(data):
    tmp = _rtc_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, _rtc_path)  # atomic: a kill never leaves half a file


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def clock_tuple():
    """The simulated RTC, UTC: the host's clock plus the offset in <ring path>.clock, where it
    survives resets and deep sleep as an ESP32's RTC does (read when first needed: TLS)."""
    if _clock[0] is None:
        try:
            with open(_rtc_path[:-3] + "clock") as f:
                _clock[0] = int(f.read())
        except (OSError, ValueError):
            _clock[0] = 0  # never set: the host's
    return time.gmtime(int(time.time()) + _clock[0])


def set_clock(unix_seconds):
    _clock[0] = unix_seconds - int(time.time())
    with open(_rtc_path[:-3] + "clock", "w") as f:
        f.write(str(_clock[0]))


def set_partition_finder(finder):
    """Tests: finder(label) -> a list of block devices with the esp32.Partition protocol
    ([] = the board has no such partition), as esp32.Partition.find answers on a board.
    None (the default): the host has no partition table and the ring stays a file."""
    global _finder
    _finder = finder


def find_partition(label):
    return None if _finder is None else _finder(label)


def _exit(code):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    if MICROPYTHON:
        sys.exit(code)
    os._exit(code)  # like a reset: no interpreter clean-up, no waiting for threads


def deepsleep(ms):
    with open(_wake_path, "w") as f:
        f.write(str(_now_ms() + ms))
    _exit(EXIT_DEEPSLEEP)


def reset():
    _exit(EXIT_RESET)
