# Hardware sensor drivers: ADC, DHT11/DHT22, DS18B20 (1-Wire), BME280 (I2C, bme280.py).
# Their hardware objects come from the board layer (board.py); nothing here imports a
# hardware module, so they also run against the host stand-ins (hostsim.py).
from mqtt.compat import ticks_ms, ticks_diff, sleep_ms
from sensors import Sensor


class ADC(Sensor):
    """Volts (calibrated by the ESP-IDF), averaged over `samples`, then * scale + offset."""

    def __init__(self, name, cfg, board):
        Sensor.__init__(self, name, cfg)
        self.volts = board.adc(cfg["pins"]["adc"], cfg["atten"])
        self.samples = cfg["samples"]
        self.scale = cfg["scale"]
        self.offset = cfg["offset"]

    def _read(self, seq):
        total = 0.0
        for _ in range(self.samples):
            total += self.volts()
        return round(total / self.samples * self.scale + self.offset, 4)


class DHT(Sensor):
    """DHT11/DHT22: {"t": degC, "h": %RH}.  The sensor needs 1 s (DHT11) / 2 s (DHT22)
    between measurements; a faster schedule gets the last measurement again."""

    def __init__(self, name, cfg, board):
        Sensor.__init__(self, name, cfg)
        self.dev = board.dht(cfg["kind"], cfg["pins"]["data"])
        self.min_ms = 2000 if cfg["kind"] == "dht22" else 1000
        self.last = None
        self.at = 0

    def _read(self, seq):
        # a negative age is a measurement 2^29+ ms old seen through the tick wrap: stale too
        if self.last is None or not 0 <= ticks_diff(ticks_ms(), self.at) < self.min_ms:
            self.dev.measure()  # raises OSError (ETIMEDOUT) when the sensor does not answer
            self.at = ticks_ms()
            self.last = {"t": self.dev.temperature(), "h": self.dev.humidity()}
        return self.last


class DS18B20(Sensor):
    """DS18B20 on a 1-Wire bus: degC of the probe `rom` (default: the first found)."""

    def __init__(self, name, cfg, board):
        Sensor.__init__(self, name, cfg)
        self.pin = cfg["pins"]["data"]
        self.dev = board.ds18x20(self.pin)
        self.want = cfg.get("rom")
        self.rom = None

    def _read(self, seq):
        if self.rom is None:
            roms = self.dev.scan()
            for r in roms:
                if self.want is None or _hex(r) == self.want:
                    self.rom = r
                    break
            if self.rom is None:
                raise OSError("no DS18B20 %son GPIO %d (found %d)" % (
                    (self.want + " ") if self.want else "", self.pin, len(roms)))
        try:
            self.dev.convert_temp()
            sleep_ms(750)  # 12-bit conversion time
            t = self.dev.read_temp(self.rom)
            why = "CRC error"
        except Exception as e:  # micropython-lib's read_temp raises Exception("CRC error") (not
            t = None            # None); the 1-Wire bus an OSError when nothing answers
            why = str(e) or type(e).__name__
        if t is None:
            self.rom = None  # scan the bus again next time: the probe may have been re-plugged
            raise OSError("DS18B20 on GPIO %d: %s" % (self.pin, why))
        return round(t, 3)


class BME(Sensor):
    def __init__(self, name, cfg, board):
        Sensor.__init__(self, name, cfg)
        self.bus = board.i2c(cfg["bus"]["i2c"], cfg["pins"]["sda"], cfg["pins"]["scl"], cfg["bus"]["freq"])
        self.address = cfg["address"]
        self.dev = None

    def _read(self, seq):
        if self.dev is None:
            from bme280 import BME280

            self.dev = BME280(self.bus, self.address)
        try:
            return self.dev.read()
        except OSError:
            self.dev = None  # re-probe next time (sensor re-plugged, bus glitch)
            raise


def _hex(b):
    return "".join("%02x" % x for x in b)


DRIVERS = {"adc": ADC, "dht11": DHT, "dht22": DHT, "ds18b20": DS18B20, "bme280": BME}
