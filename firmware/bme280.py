# Bosch BME280 (temperature, humidity, pressure) over I2C, written from the datasheet
# (BST-BME280-DS002, section 4.2 calibration, 5.4 registers, 8.1 compensation in
# floating point).  A BMP280 (chip id 0x58) works too, without humidity.
# Forced mode: every read() triggers one measurement (1x oversampling, ~10 ms) and the
# sensor sleeps in between, which suits periodic sampling and deep sleep.
# `i2c` is anything with readfrom_mem(addr, reg, n) and writeto_mem(addr, reg, buf)
# (machine.I2C, or the host stand-in), so this module imports no hardware module.
import struct

try:
    from time import sleep_ms  # MicroPython
except ImportError:
    from mqtt.compat import sleep_ms

CHIP_ID = 0xD0
RESET = 0xE0
CTRL_HUM = 0xF2
STATUS = 0xF3
CTRL_MEAS = 0xF4
CONFIG = 0xF5
DATA = 0xF7
BME280_ID = 0x60
BMP280_ID = 0x58


class BME280:
    def __init__(self, i2c, address=0x76):
        self.i2c = i2c
        self.addr = address
        cid = self._read(CHIP_ID, 1)[0]
        if cid not in (BME280_ID, BMP280_ID):
            raise OSError("no BME280 at I2C address 0x%02x (chip id 0x%02x)" % (address, cid))
        self.humidity = cid == BME280_ID
        self._write(RESET, 0xB6)
        sleep_ms(3)
        for _ in range(20):  # NVM copy to the image registers
            if not self._read(STATUS, 1)[0] & 0x01:
                break
            sleep_ms(2)
        c = self._read(0x88, 24)
        (self.T1, self.T2, self.T3, self.P1, self.P2, self.P3, self.P4, self.P5, self.P6,
         self.P7, self.P8, self.P9) = struct.unpack("<HhhHhhhhhhhh", c)
        if self.humidity:
            self.H1 = self._read(0xA1, 1)[0]
            e = self._read(0xE1, 7)
            self.H2 = struct.unpack("<h", e[0:2])[0]
            self.H3 = e[2]
            self.H4 = (_s8(e[3]) << 4) | (e[4] & 0x0F)
            self.H5 = (_s8(e[5]) << 4) | (e[4] >> 4)
            self.H6 = _s8(e[6])
        self._write(CONFIG, 0x00)  # no IIR filter, no standby (forced mode)

    def _read(self, reg, n):
        return self.i2c.readfrom_mem(self.addr, reg, n)

    def _write(self, reg, val):
        self.i2c.writeto_mem(self.addr, reg, bytes([val]))

    def read_raw(self):
        """Trigger one forced measurement; (adc_T, adc_P, adc_H)."""
        if self.humidity:
            self._write(CTRL_HUM, 0x01)  # humidity x1 (takes effect with the CTRL_MEAS write)
        self._write(CTRL_MEAS, 0x25)     # temperature x1, pressure x1, forced mode
        sleep_ms(10)
        for _ in range(25):
            if not self._read(STATUS, 1)[0] & 0x08:  # 'measuring' cleared
                break
            sleep_ms(2)
        d = self._read(DATA, 8)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        return adc_t, adc_p, adc_h

    def compensate(self, adc_t, adc_p, adc_h):
        """(degC, Pa, %RH or None) from raw readings (datasheet 8.1, double precision)."""
        v1 = (adc_t / 16384.0 - self.T1 / 1024.0) * self.T2
        v2 = (adc_t / 131072.0 - self.T1 / 8192.0)
        v2 = v2 * v2 * self.T3
        t_fine = v1 + v2
        t = t_fine / 5120.0

        v1 = t_fine / 2.0 - 64000.0
        v2 = v1 * v1 * self.P6 / 32768.0
        v2 = v2 + v1 * self.P5 * 2.0
        v2 = v2 / 4.0 + self.P4 * 65536.0
        v1 = (self.P3 * v1 * v1 / 524288.0 + self.P2 * v1) / 524288.0
        v1 = (1.0 + v1 / 32768.0) * self.P1
        if v1 == 0:
            p = 0.0  # avoid division by zero (sensor not ready)
        else:
            p = 1048576.0 - adc_p
            p = (p - v2 / 4096.0) * 6250.0 / v1
            v1 = self.P9 * p * p / 2147483648.0
            v2 = p * self.P8 / 32768.0
            p = p + (v1 + v2 + self.P7) / 16.0

        h = None
        if self.humidity:
            h = t_fine - 76800.0
            h = (adc_h - (self.H4 * 64.0 + self.H5 / 16384.0 * h)) * (
                self.H2 / 65536.0 * (1.0 + self.H6 / 67108864.0 * h * (1.0 + self.H3 / 67108864.0 * h)))
            h = h * (1.0 - self.H1 * h / 524288.0)
            h = 100.0 if h > 100.0 else 0.0 if h < 0.0 else h
        return t, p, h

    def read(self):
        """{"t": degC, "p": hPa, "h": %RH} rounded for telemetry (no "h" on a BMP280)."""
        t, p, h = self.compensate(*self.read_raw())
        out = {"t": round(t, 2), "p": round(p / 100.0, 2)}
        if h is not None:
            out["h"] = round(h, 1)
        return out


def _s8(b):
    return b - 256 if b > 127 else b
