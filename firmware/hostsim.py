# Simulated sensor hardware for the host board layer (hostboard.py): an ADC, DHT11/22,
# DS18B20 probes and an I2C bus with BME280s, all deterministic, so the real drivers in
# hwsensors.py and bme280.py run on the unix port and CPython.  Loaded only when a
# board file uses such a sensor.
_reads = {}  # per simulated device: reads so far


def _count(key):
    n = _reads.get(key, 0)
    _reads[key] = n + 1
    return n


def _wave(n, period, lo, hi):
    """Deterministic triangle wave between lo and hi (no math module needed)."""
    k = n % period
    half = period // 2
    x = k / half if k <= half else (period - k) / half
    return lo + (hi - lo) * x


def adc(pin):
    return lambda: round(_wave(_count(("adc", pin)), 40, 0.5, 2.5), 4)


class DHT:
    def __init__(self, kind, pin):
        self.key = (kind, pin)
        self.t = self.h = None

    def measure(self):
        n = _count(self.key)
        self.t = round(_wave(n, 20, 20.0, 24.0), 1)
        self.h = round(_wave(n, 30, 40.0, 60.0), 1)

    def temperature(self):
        return self.t

    def humidity(self):
        return self.h


class DS18X20:
    def __init__(self, pin):
        self.pin = pin
        self.rom = bytearray(b"\x28" + bytes([pin]) + b"\x00\x00\x00\x00\x5a\xa5")

    def scan(self):
        return [self.rom]

    def convert_temp(self):
        pass

    def read_temp(self, rom):
        if bytes(rom) != bytes(self.rom):
            raise OSError("no such 1-Wire device")
        return 18.0 + 0.0625 * (_count(("ds18b20", self.pin)) % 32)


class FakeBME280:
    """Register model of a BME280: the calibration of Bosch's worked example (BMP280
    datasheet: adc_T 519888 -> 25.08 degC, adc_P 415148 -> 100653.27 Pa) and plausible
    humidity trimming, so the real driver's arithmetic runs on the host."""

    CALIB = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
    H = (75, 362, 0, 313, 50, 30)
    ADC_T, ADC_P, ADC_H = 519888, 415148, 30000

    def __init__(self):
        import struct

        self.reg = bytearray(256)
        self.reg[0xD0] = 0x60
        struct.pack_into("<HhhHhhhhhhhh", self.reg, 0x88, *self.CALIB)
        h1, h2, h3, h4, h5, h6 = self.H
        self.reg[0xA1] = h1
        struct.pack_into("<hB", self.reg, 0xE1, h2, h3)
        self.reg[0xE4] = (h4 >> 4) & 0xFF
        self.reg[0xE5] = (h4 & 0x0F) | ((h5 & 0x0F) << 4)
        self.reg[0xE6] = (h5 >> 4) & 0xFF
        self.reg[0xE7] = h6 & 0xFF
        p, t, h = self.ADC_P, self.ADC_T, self.ADC_H
        self.reg[0xF7:0xFF] = bytes([p >> 12, (p >> 4) & 0xFF, (p & 0xF) << 4,
                                     t >> 12, (t >> 4) & 0xFF, (t & 0xF) << 4, h >> 8, h & 0xFF])
        self.measurements = 0

    def write(self, reg, data):
        for i, b in enumerate(data):
            self.reg[reg + i] = b
        if reg <= 0xF4 < reg + len(data) and self.reg[0xF4] & 3 in (1, 2):
            self.measurements += 1
            self.reg[0xF4] &= 0xFC  # forced mode: back to sleep when done

    def read(self, reg, n):
        return bytes(self.reg[reg:reg + n])


class FakeI2C:
    devices = {}  # address -> FakeBME280, shared like a real bus

    def _dev(self, addr):
        if addr not in (0x76, 0x77):
            raise OSError(19, "ENODEV")
        if addr not in self.devices:
            self.devices[addr] = FakeBME280()
        return self.devices[addr]

    def scan(self):
        return [0x76, 0x77]

    def readfrom_mem(self, addr, reg, n):
        return self._dev(addr).read(reg, n)

    def writeto_mem(self, addr, reg, buf):
        self._dev(addr).write(reg, buf)
