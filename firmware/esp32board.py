# The board layer on the ESP32 family (ESP32, ESP32-S3, ESP32-C3), loaded by board.py:
# the only module of the firmware that imports hardware modules.  See board.py for the
# interface; hostboard.py implements the same on the host.
import sys
import os
import machine
import network
try:
    from time import ticks_ms, ticks_diff, sleep_ms
except ImportError:  # CPython with stub hardware modules (host_tests/test_firmware.py)
    from mqtt.compat import ticks_ms, ticks_diff, sleep_ms

HOST = False
_wlan = None
_wifi_last_try = 0


def init(cfg, opts):
    pass


def describe():
    return "%s, MicroPython %s" % (sys.implementation._machine, ".".join(str(v) for v in sys.implementation.version[:3]))


def chip_mismatch(chip):
    m = sys.implementation._machine.upper()
    actual = "esp32s3" if "ESP32S3" in m else "esp32c3" if "ESP32C3" in m else "esp32"
    if chip != actual:
        return "the board file says chip %s but this is %s (%s)" % (chip, actual, sys.implementation._machine)
    return None


def uid():
    import binascii

    return binascii.hexlify(machine.unique_id()).decode()


def woke_from_deepsleep():
    return machine.reset_cause() == machine.DEEPSLEEP_RESET


def reset_cause():
    c = machine.reset_cause()
    names = {machine.PWRON_RESET: "power-on", machine.HARD_RESET: "hard", machine.WDT_RESET: "watchdog",
             machine.DEEPSLEEP_RESET: "deep-sleep", machine.SOFT_RESET: "soft"}
    return names.get(c, str(c))


def wifi_connect(w, feed, log):
    global _wlan, _wifi_last_try
    _wlan = network.WLAN(network.STA_IF)
    _wlan.active(True)
    if _wlan.isconnected():
        return True
    for attempt in range(1, w["retries"] + 1):
        try:
            _wlan.connect(w["ssid"], w.get("password", ""))
        except OSError as e:
            log("wifi: connect(%s) failed: %s" % (w["ssid"], e))
        start = ticks_ms()
        while ticks_diff(ticks_ms(), start) < int(w["timeout_s"] * 1000):
            if _wlan.isconnected():
                log("wifi: connected to %s as %s (attempt %d)" % (w["ssid"], _wlan.ifconfig()[0], attempt))
                return True
            st = _wlan.status()
            if st in (getattr(network, "STAT_WRONG_PASSWORD", -100), getattr(network, "STAT_NO_AP_FOUND", -100)):
                log("wifi: %s (status %d)" % ("wrong password" if st == getattr(network, "STAT_WRONG_PASSWORD", -100)
                                              else "no access point named " + w["ssid"], st))
                break
            feed()  # bring-up is bounded: retries x timeout_s
            sleep_ms(200)
        try:
            _wlan.disconnect()
        except OSError:
            pass
        log("wifi: attempt %d of %d failed" % (attempt, w["retries"]))
    _wifi_last_try = ticks_ms()
    return False


def wifi_ok():
    return _wlan is not None and _wlan.isconnected()


def wifi_tick(w, log):
    """Re-start the association now and then while the link is down (non-blocking)."""
    global _wifi_last_try
    if _wlan is None:
        return
    if _wlan.isconnected():
        # forget the last attempt: days later ticks_diff could read it as "just now"
        # (ticks wrap every 2^30 ms, ticks_diff spans +-2^29) and hold the next one back
        _wifi_last_try = None
        return
    if _wifi_last_try is not None and ticks_diff(ticks_ms(), _wifi_last_try) < 30000:
        return
    _wifi_last_try = ticks_ms()
    log("wifi: link down, re-connecting to %s" % w["ssid"])
    try:
        _wlan.disconnect()
        _wlan.connect(w["ssid"], w.get("password", ""))
    except OSError as e:
        log("wifi: %s" % e)


def watchdog(timeout_ms):
    from mqtt.watchdog import Watchdog

    return Watchdog(timeout_ms, hw=machine.WDT(timeout=timeout_ms))


def pin_held(pin, active, window_ms):
    want = 0 if active == "low" else 1
    p = machine.Pin(pin, machine.Pin.IN, machine.Pin.PULL_UP if want == 0 else machine.Pin.PULL_DOWN)
    start = ticks_ms()
    while True:
        if p.value() == want:
            sleep_ms(50)  # debounce
            if p.value() == want:
                return True
        if ticks_diff(ticks_ms(), start) >= window_ms:
            return False
        sleep_ms(20)


def adc(pin, atten):
    A = machine.ADC
    a = A(machine.Pin(pin), atten={"0dB": A.ATTN_0DB, "2.5dB": A.ATTN_2_5DB, "6dB": A.ATTN_6DB,
                                   "11dB": A.ATTN_11DB}[atten])
    return lambda: a.read_uv() / 1000000


def dht(kind, pin):
    import dht as _dht

    return (_dht.DHT22 if kind == "dht22" else _dht.DHT11)(machine.Pin(pin))


def ds18x20(pin):
    import onewire
    import ds18x20 as _ds

    return _ds.DS18X20(onewire.OneWire(machine.Pin(pin)))


def i2c(bus, sda, scl, freq):
    return machine.I2C(bus, scl=machine.Pin(scl), sda=machine.Pin(sda), freq=freq)


def mem_free():
    import gc

    gc.collect()
    return gc.mem_free()


def rtc_load():
    return bytes(machine.RTC().memory())


def rtc_save(data):
    machine.RTC().memory(data)


def clock_tuple():
    import time

    return time.gmtime()


def set_clock(unix_seconds):
    """Set the RTC (UTC); it keeps running through resets and deep sleep, not power loss."""
    import time

    tm = time.gmtime(unix_seconds - (946684800 if time.gmtime(0)[0] == 2000 else 0))
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def find_partition(label):
    import esp32

    return esp32.Partition.find(esp32.Partition.TYPE_DATA, label=label)


def deepsleep(ms):
    machine.deepsleep(ms)


def reset():
    machine.reset()
