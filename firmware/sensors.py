# The sensor base class and the simulated sensor.  Each driver gets its hardware from
# the board layer (board.py), so none of them imports a hardware module, and read(seq)
# returns a number or a small dict of numbers - or raises on a failed read.  The
# hardware drivers (adc, dht11/22, ds18b20, bme280) are in hwsensors.py, which builds on
# this module; device.py picks the driver for each "kind" and loads hwsensors.py only
# when the board file uses one.
from mqtt.compat import sleep_ms


class Sensor:
    def __init__(self, name, cfg):
        self.name = name
        self.kind = cfg["kind"]
        self.topic = cfg["topic"]
        self.qos = cfg["qos"]
        self.period_ms = int(cfg["period_s"] * 1000)
        self.due = 0
        self.reads = 0

    def read(self, seq):
        self.reads += 1
        return self._read(seq)


class Sim(Sensor):
    """Deterministic simulated sensor: the value is a function of the reading's
    sequence number, so a test can check values as well as counts.
    Fault injection: hang_after (the Nth read of this boot never returns: a stalled
    loop for the watchdog), fail_every (every Nth read raises)."""

    def __init__(self, name, cfg, board):
        Sensor.__init__(self, name, cfg)
        self.signal = cfg["signal"]
        self.base = cfg["base"]
        self.amp = cfg["amplitude"]
        self.steps = cfg["steps"]
        self.hang_after = cfg.get("hang_after")
        self.fail_every = cfg.get("fail_every")

    def _read(self, seq):
        if self.hang_after and self.reads >= self.hang_after:
            while True:  # a driver stuck for good (e.g. a clock-stretching I2C slave)
                sleep_ms(1000)
        if self.fail_every and self.reads % self.fail_every == 0:
            raise OSError("simulated read failure")
        return value(self.signal, self.base, self.amp, self.steps, seq)


def value(signal, base, amp, steps, seq):
    if signal == "const":
        v = base
    elif signal == "ramp":
        v = base + amp * (seq % steps)
    else:
        import math

        v = base + amp * math.sin(2 * math.pi * (seq % steps) / steps)
    return round(v, 3)

