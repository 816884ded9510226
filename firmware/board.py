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
#   clock_tuple()                the wall clock (RTC), UTC, as time.gmtime(); 2000-01-01 after
#                                power-on on an ESP32 (host: --clock DATE)
#   set_clock(unix_seconds)      set it (kept across resets and deep sleep)
#   exists(path)
#   find_partition(label)        the raw data partitions labelled so (esp32.Partition objects:
#                                the block protocol MQTTClient's store= takes), [] for none;
#                                None where the platform has no partition table (the host)
#   deepsleep(ms) / reset()      never return
# and, common to both (below):
#   ring_store(ring, log)        the ring's store= for MQTTClient
#   partition_bytes(part)        a partition's size
import sys

if sys.platform == "esp32":
    from esp32board import *  # noqa: F401,F403
else:
    from hostboard import *  # noqa: F401,F403


def ring_store(ring, log):
    """The store for the flash ring, from the board file's "ring" section: the raw partition
    labelled ring["partition"] when the board file names one and the flash has it (make flash
    writes that partition table), else the file ring["path"] (littlefs on a board). A board
    whose table lacks the partition (flashed some other way) falls back to the file, with one
    warning line. On the host find_partition() is None unless a test injects a finder
    (hostboard.set_partition_finder): the file, silently."""
    label = ring.get("partition")
    found = find_partition(label) if label else None
    if found is None:
        return ring["path"]
    if not found:
        log("ring: warning: this board has no flash partition %r (not flashed with `make flash`?):"
            " the ring is the file %s instead" % (label, ring["path"]))
        return ring["path"]
    part = found[0]
    size = partition_bytes(part)
    if size != ring["size"]:
        log("ring: partition %r is %d bytes, ring.size says %d: the partition is used as it is"
            " (make flash applies the new size, erasing the ring)" % (label, size, ring["size"]))
    return part


def partition_bytes(part):
    """The size of a block device with the esp32.Partition protocol: block count x block size."""
    return part.ioctl(4, 0) * part.ioctl(5, 0)

