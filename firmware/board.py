# The board layer.  The rest of the firmware reaches the hardware only through
# `import board`; board.py picks the implementation for the platform it runs on:
#   esp32board.py  the ESP32 family (the ONLY module that imports machine, network,
#                  esp32, dht, onewire, ds18x20)
#   hostboard.py   host stand-ins for the unix port and CPython (no hardware imports;
#                  simulated sensor hardware in hostsim.py)
# Only one of the two is ever loaded, so neither costs RAM where it does not run.
#
# Interface (both implementations):
#   HOST                         True on the unix port / CPython
#   init(cfg, opts)              once, after the config is loaded
#   describe()                   one line: what runs this
#   chip_mismatch(chip)          None, or why the config's chip is not this chip
#   uid()                        device id (hex of machine.unique_id() on ESP32)
#   woke_from_deepsleep()        this boot is a wake-up from deep sleep
#   reset_cause()                short text
#   wifi_connect(wcfg, feed, log) -> bool   bounded: retries x timeout_s
#   wifi_ok() / wifi_tick(wcfg, log)        link state / occasional re-connect
#   watchdog(timeout_ms)         a mqtt.watchdog.Watchdog (machine.WDT on ESP32)
#   pin_held(pin, active, window_ms)        safe-mode button/jumper
#   adc(pin, atten) -> f()       f() returns volts
#   dht(kind, pin)               object with measure(), temperature(), humidity()
#   ds18x20(pin)                 object with scan(), convert_temp(), read_temp(rom)
#   i2c(bus, sda, scl, freq)     object with readfrom_mem(addr, reg, n), writeto_mem(addr, reg, buf)
#   mem_free()                   free heap bytes (None where unknown)
#   rtc_load() / rtc_save(bytes) memory that survives resets and deep sleep (not power loss)
#   exists(path)
#   deepsleep(ms) / reset()      never return
import sys

if sys.platform == "esp32":
    from esp32board import *  # noqa: F401,F403
else:
    from hostboard import *  # noqa: F401,F403
