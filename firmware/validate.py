# The device-side validator of board configurations: hand-written (no JSON Schema
# engine on the device), mirroring boards/schema.json rule for rule.
# host_tests/test_boards.py checks that both give the same verdict - and the same key
# paths - on a table of good and bad files, under CPython and the MicroPython unix port.
# Every problem is reported as (path, message), e.g. ("mqtt.port", "must be an integer
# 1..65535 (got \"1883\")"), and all of them at once, so one edit fixes a file.
# config.load() imports this module, uses it once and unloads it again.
import json

CHIPS = ("esp32", "esp32s3", "esp32c3", "unix")
KINDS = ("adc", "dht11", "dht22", "ds18b20", "bme280", "sim")
RESERVED = ("status", "cmd", "reply", "health")  # topics the firmware uses itself
# flash.size: MicroPython's generic partition tables (tools/partitions.py)
FLASH_SIZES = ("2MB", "4MB", "8MB", "16MB", "32MB")
# Partition labels of MicroPython's tables and firmware: never the ring's (ring.partition)
RESERVED_LABELS = ("nvs", "phy_init", "factory", "vfs", "ffat", "romfs", "otadata", "ota_0", "ota_1")


def _span(a, b):
    return list(range(a, b + 1))


# Per chip: flash offset, GPIOs that exist, those wired to the flash (never usable),
# input-only GPIOs, ADC1 channels (ADC2 is unusable while Wi-Fi runs), I2C controllers.
CHIP = {
    "esp32": {"offset": "0x1000", "gpio": _span(0, 19) + _span(21, 23) + _span(25, 27) + _span(32, 39),
              "flash": _span(6, 11), "input_only": _span(34, 39), "adc": _span(32, 39), "i2c": 1},
    "esp32s3": {"offset": "0x0", "gpio": _span(0, 21) + _span(26, 48), "flash": _span(26, 32),
                "input_only": [], "adc": _span(1, 10), "i2c": 1},
    "esp32c3": {"offset": "0x0", "gpio": _span(0, 21), "flash": _span(12, 17),
                "input_only": [], "adc": _span(0, 4), "i2c": 0},
    "unix": {"offset": None, "gpio": _span(0, 63), "flash": [], "input_only": [],
             "adc": _span(0, 63), "i2c": 1},
}

# Keys every sensor may have, and what each kind adds (and which pins it needs).
SENSOR_COMMON = ("kind", "period_s", "topic", "qos")
SENSOR_OPTIONAL = {
    "adc": ("pins", "atten", "scale", "offset", "samples"),
    "dht11": ("pins",),
    "dht22": ("pins",),
    "ds18b20": ("pins", "rom"),
    "bme280": ("pins", "bus", "address"),
    "sim": ("signal", "base", "amplitude", "steps", "hang_after", "fail_every"),
}
SENSOR_KEYS = SENSOR_COMMON + ("pins", "atten", "scale", "offset", "samples", "rom", "bus",
                               "address", "signal", "base", "amplitude", "steps", "hang_after",
                               "fail_every")
PINS = {"adc": ("adc",), "dht11": ("data",), "dht22": ("data",), "ds18b20": ("data",),
        "bme280": ("sda", "scl"), "sim": ()}
ATTEN = ("0dB", "2.5dB", "6dB", "11dB")
SIGNALS = ("sine", "ramp", "const")

# ---- validation ------------------------------------------------------------------------


def _is_int(v):
    # JSON Schema "integer" also accepts 5.0; bool is never a number.
    return type(v) is int or (type(v) is float and v == v and v not in (float("inf"), float("-inf"))
                              and v == int(v))


def _is_num(v):
    return type(v) is int or type(v) is float


def _fmt(v):
    return json.dumps(v)


class _Checker:
    def __init__(self):
        self.errors = []

    def err(self, path, msg):
        self.errors.append((path, msg))

    def obj(self, path, v, allowed, required=()):
        """An object with only `allowed` keys and all `required` ones; False if not an object."""
        if type(v) is not dict:
            self.err(path, "must be an object")
            return False
        for k in sorted(v):
            if k not in allowed:
                self.err(_join(path, k), "unknown key (allowed: %s)" % ", ".join(allowed))
        for k in required:
            if k not in v:
                self.err(_join(path, k), "required")
        return True

    def int_(self, path, v, lo, hi):
        if _is_int(v) and lo <= v <= hi:
            return True
        self.err(path, "must be an integer %d..%d (got %s)" % (lo, hi, _fmt(v)))
        return False

    def num(self, path, v, lo=None, hi=None):
        if not _is_num(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            if lo is None:
                rng = "a number"
            else:
                rng = "a number %s..%s" % (_fmt(lo), _fmt(hi))
            self.err(path, "must be %s (got %s)" % (rng, _fmt(v)))
            return False
        return True

    def str_(self, path, v, lo=1, hi=64):
        if type(v) is not str:
            self.err(path, "must be a string (got %s)" % _fmt(v))
            return False
        if not lo <= len(v) <= hi:
            self.err(path, "must be %d..%d characters long (got %d)" % (lo, hi, len(v)))
            return False
        return True

    def enum(self, path, v, choices):
        if v not in choices or type(v) is not type(choices[0]) or v is True or v is False:
            self.err(path, "must be one of %s (got %s)" % (", ".join(_fmt(c) for c in choices), _fmt(v)))
            return False
        return True

    def bool_(self, path, v):
        if v is not True and v is not False:
            self.err(path, "must be true or false (got %s)" % _fmt(v))


def _join(path, key):
    return "%s.%s" % (path, key) if path else str(key)


def _chars_ok(s, extra):
    for c in s:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in extra):
            return False
    return True


def _template_ok(s, plain):
    """s is made of characters accepted by plain(c) and the placeholders {uid} / {board}."""
    i = 0
    n = len(s)
    while i < n:
        if s[i] == "{":
            if s.startswith("{uid}", i):
                i += 5
            elif s.startswith("{board}", i):
                i += 7
            else:
                return False
        elif s[i] == "}" or not plain(s[i]):
            return False
        else:
            i += 1
    return True


def _topic_ok(s):
    """A topic name (no wildcards, no empty level, not starting with '$'), with placeholders."""
    if not s or s[0] == "$":
        return False
    for seg in s.split("/"):
        if not seg or not _template_ok(seg, lambda c: c not in "+#/ \t\r\n\x0b\x0c\x00"):
            return False
    return True


def _name_ok(s):
    return 1 <= len(s) <= 16 and ("a" <= s[0] <= "z" or "0" <= s[0] <= "9") and _chars_ok(s, "_-") \
        and s == s.lower()


def _gpio(c, path, v, chip, output=False, adc=False):
    """Base check (integer 0..63) then, for a known chip, whether the pin can do the job."""
    if not c.int_(path, v, 0, 63):
        return
    info = CHIP.get(chip)
    if info is None:
        return
    v = int(v)
    if v in info["flash"]:
        c.err(path, "GPIO %d is wired to the flash on %s" % (v, chip))
    elif v not in info["gpio"]:
        c.err(path, "GPIO %d does not exist on %s" % (v, chip))
    elif adc and v not in info["adc"]:
        c.err(path, "GPIO %d is not an ADC1 pin on %s (ADC1: GPIO %d..%d)" % (v, chip, info["adc"][0], info["adc"][-1]))
    elif output and v in info["input_only"]:
        c.err(path, "GPIO %d is input-only on %s (this sensor drives the line)" % (v, chip))


TOP_KEYS = ("$schema", "description", "board", "chip", "flash", "uid", "wifi", "mqtt", "ring",
            "watchdog", "power", "health", "safe_mode", "time", "sensors")


def validate(cfg):
    """All problems in a merged configuration: [(path, message)]; [] when it is good."""
    c = _Checker()
    if not c.obj("", cfg, TOP_KEYS, ("board", "chip", "mqtt", "ring", "sensors")):
        return c.errors
    if "$schema" in cfg:
        c.str_("$schema", cfg["$schema"], 0, 100000)
    if "description" in cfg:
        c.str_("description", cfg["description"], 0, 1024)
    if "board" in cfg:
        b = cfg["board"]
        if c.str_("board", b, 1, 32) and not (_chars_ok(b, "._-") and b == b.lower() and b[0] not in "._-"):
            c.err("board", "must be lower-case letters, digits, '.', '_' or '-' (got %s)" % _fmt(b))
    chip = cfg.get("chip")
    if "chip" in cfg and not c.enum("chip", chip, CHIPS):
        chip = None
    esp = chip in ("esp32", "esp32s3", "esp32c3")

    # flash: the deploy tooling flashes MicroPython at this offset
    if "flash" in cfg:
        f = cfg["flash"]
        if chip == "unix":
            c.err("flash", "not used for chip unix (remove it)")
        if c.obj("flash", f, ("offset", "size"), ("offset",)) and "offset" in f:
            off = f["offset"]
            if type(off) is not str or len(off) < 3 or off[:2] != "0x" \
                    or not all(ch in "0123456789abcdefABCDEF" for ch in off[2:]):
                c.err("flash.offset", "must be a hex string like \"0x1000\" (got %s)" % _fmt(off))
            elif esp and off != CHIP[chip]["offset"]:
                c.err("flash.offset", "must be \"%s\" for chip %s (got %s)" % (CHIP[chip]["offset"], chip, _fmt(off)))
        if type(f) is dict and "size" in f:
            c.enum("flash.size", f["size"], FLASH_SIZES)
    elif esp:
        c.err("flash", "required for chip %s ({\"offset\": \"%s\"})" % (chip, CHIP[chip]["offset"]))

    if "uid" in cfg:
        u = cfg["uid"]
        if c.str_("uid", u, 1, 32) and not _chars_ok(u, "_-"):
            c.err("uid", "must be letters, digits, '_' or '-' (got %s)" % _fmt(u))

    # wifi (ignored on unix)
    if "wifi" in cfg:
        w = cfg["wifi"]
        if c.obj("wifi", w, ("ssid", "password", "retries", "timeout_s"), ("ssid",)):
            if "ssid" in w:
                c.str_("wifi.ssid", w["ssid"], 1, 32)
            if "password" in w:
                c.str_("wifi.password", w["password"], 0, 63)
            if "retries" in w:
                c.int_("wifi.retries", w["retries"], 1, 20)
            if "timeout_s" in w:
                c.num("wifi.timeout_s", w["timeout_s"], 1, 60)
    elif esp:
        c.err("wifi", "required for chip %s ({\"ssid\": ...}; the password goes in the secrets file)" % chip)

    if "mqtt" in cfg:
        _mqtt(c, cfg["mqtt"])
    if "ring" in cfg:
        r = cfg["ring"]
        if c.obj("ring", r, ("path", "partition", "size", "capacity"), ("path", "size")):
            if "path" in r and c.str_("ring.path", r["path"], 1, 255) and esp and r["path"][0] != "/":
                c.err("ring.path", "must be an absolute path on the device, like \"/ring.bin\" (got %s)" % _fmt(r["path"]))
            if "partition" in r:
                _partition_label(c, r["partition"], chip)
            if "size" in r and c.int_("ring.size", r["size"], 12288, 1048576) and int(r["size"]) % 4096:
                c.err("ring.size", "must be a multiple of 4096 (the flash sector) (got %s)" % _fmt(r["size"]))
            if "capacity" in r:
                c.int_("ring.capacity", r["capacity"], 4, 256)
    if "watchdog" in cfg:
        w = cfg["watchdog"]
        if c.obj("watchdog", w, ("timeout_ms",), ("timeout_ms",)) and "timeout_ms" in w:
            c.int_("watchdog.timeout_ms", w["timeout_ms"], 1000, 120000)
    if "power" in cfg:
        p = cfg["power"]
        if c.obj("power", p, ("mode", "wake_period_s", "flush_budget_ms"), ("mode",)):
            if "mode" in p and c.enum("power.mode", p["mode"], ("always-on", "deep-sleep")) \
                    and p["mode"] == "deep-sleep" and "wake_period_s" not in p:
                c.err("power.wake_period_s", "required when power.mode is \"deep-sleep\"")
            if "wake_period_s" in p:
                c.num("power.wake_period_s", p["wake_period_s"], 0.1, 86400)
            if "flush_budget_ms" in p:
                c.int_("power.flush_budget_ms", p["flush_budget_ms"], 100, 60000)
    if "health" in cfg:
        h = cfg["health"]
        if c.obj("health", h, ("period_s", "qos")):
            if "period_s" in h:
                c.num("health.period_s", h["period_s"], 0.1, 86400)
            if "qos" in h:
                c.int_("health.qos", h["qos"], 0, 2)
    if "safe_mode" in cfg:
        s = cfg["safe_mode"]
        if c.obj("safe_mode", s, ("pin", "active", "window_ms", "flag_file")):
            if "pin" in s:
                _gpio(c, "safe_mode.pin", s["pin"], chip)
            if "active" in s:
                c.enum("safe_mode.active", s["active"], ("low", "high"))
            if "window_ms" in s:
                c.int_("safe_mode.window_ms", s["window_ms"], 0, 10000)
            if "flag_file" in s:
                c.str_("safe_mode.flag_file", s["flag_file"], 1, 255)
    if "time" in cfg:
        t = cfg["time"]
        if c.obj("time", t, ("ntp_servers", "timeout_s", "retry_s")):
            if "ntp_servers" in t:
                v = t["ntp_servers"]
                if type(v) is not list or not 1 <= len(v) <= 4:
                    c.err("time.ntp_servers", "must be a list of 1..4 NTP servers (got %s)" % _fmt(v))
                else:
                    for i in range(len(v)):
                        h = v[i]
                        if c.str_("time.ntp_servers.%d" % i, h, 1, 253) and not _chars_ok(h, ".-_:"):
                            c.err("time.ntp_servers.%d" % i, "must be a host name or IP address, optionally"
                                  " with :port (got %s)" % _fmt(h))
            if "timeout_s" in t:
                c.num("time.timeout_s", t["timeout_s"], 1, 30)
            if "retry_s" in t:
                c.num("time.retry_s", t["retry_s"], 1, 86400)
    if "sensors" in cfg:
        ss = cfg["sensors"]
        if type(ss) is not dict:
            c.err("sensors", "must be an object of named sensors")
        elif not 1 <= len(ss) <= 16:
            c.err("sensors", "must name 1..16 sensors (got %d)" % len(ss))
        else:
            for name in sorted(ss):
                _sensor(c, "sensors." + name, name, ss[name], chip)
    return c.errors


def _partition_label(c, label, chip):
    if chip == "unix":
        c.err("ring.partition", "not used for chip unix (the host keeps the ring in ring.path)")
    elif type(label) is not str or not 1 <= len(label) <= 16 or not _chars_ok(label, "_-") \
            or label != label.lower() or label[0] in "_-":
        c.err("ring.partition", "must be a partition label of 1..16 lower-case letters, digits, '_' or '-' (got %s)"
              % _fmt(label))
    elif label in RESERVED_LABELS:
        c.err("ring.partition", "%s is a label MicroPython uses (%s): pick another, e.g. \"ring\""
              % (_fmt(label), ", ".join(RESERVED_LABELS)))


def _mqtt(c, m):
    keys = ("broker", "port", "tls", "client_id", "keepalive", "topic_prefix", "qos", "user",
            "password", "backoff_max_ms", "max_packet")
    if not c.obj("mqtt", m, keys, ("broker",)):
        return
    if "broker" in m:
        b = m["broker"]
        if c.str_("mqtt.broker", b, 1, 253) and not _chars_ok(b, ".-_:"):
            c.err("mqtt.broker", "must be a host name or IP address (got %s)" % _fmt(b))
    if "port" in m:
        c.int_("mqtt.port", m["port"], 1, 65535)
    if "tls" in m:
        t = m["tls"]
        if c.obj("mqtt.tls", t, ("ca", "cert", "key", "server_hostname", "insecure")):
            insecure = t.get("insecure") is True
            for k in ("ca", "cert", "key"):
                if k in t:
                    c.str_("mqtt.tls." + k, t[k], 1, 255)
            if "ca" not in t and not insecure:
                # TLS without a CA authenticates nobody: only when the file says so
                c.err("mqtt.tls.ca", "required: the CA certificate (PEM) to check the broker with; or"
                      " \"insecure\": true to skip the check (anyone on the path can then pose as the broker)")
            elif "ca" in t and insecure:
                c.err("mqtt.tls.ca", "not used with \"insecure\": true, which turns the check off: remove one")
            if "key" in t and "cert" not in t:
                c.err("mqtt.tls.cert", "required with mqtt.tls.key (the client certificate of that key)")
            if "insecure" in t:
                c.bool_("mqtt.tls.insecure", t["insecure"])
            if "server_hostname" in t:
                c.str_("mqtt.tls.server_hostname", t["server_hostname"], 1, 253)
    if "client_id" in m:
        v = m["client_id"]
        if c.str_("mqtt.client_id", v, 1, 64) and \
                not _template_ok(v, lambda ch: _chars_ok(ch, "_.-")):
            c.err("mqtt.client_id", "letters, digits, '_', '.', '-' and the placeholders {uid} {board} only (got %s)" % _fmt(v))
    if "keepalive" in m:
        c.int_("mqtt.keepalive", m["keepalive"], 0, 65535)
    if "topic_prefix" in m:
        v = m["topic_prefix"]
        if c.str_("mqtt.topic_prefix", v, 1, 128) and not _topic_ok(v):
            c.err("mqtt.topic_prefix", "must be a topic without wildcards (+ #), empty levels, spaces or a leading '$'; placeholders {uid} {board} (got %s)" % _fmt(v))
    if "qos" in m:
        c.int_("mqtt.qos", m["qos"], 0, 2)
    if "user" in m:
        c.str_("mqtt.user", m["user"], 1, 128)
    if "password" in m:
        c.str_("mqtt.password", m["password"], 0, 256)
    if "backoff_max_ms" in m:
        c.int_("mqtt.backoff_max_ms", m["backoff_max_ms"], 1000, 600000)
    if "max_packet" in m:
        c.int_("mqtt.max_packet", m["max_packet"], 256, 262144)


def _sensor(c, path, name, s, chip):
    if not _name_ok(name):
        c.err(path, "sensor names are 1..16 lower-case letters, digits, '_' or '-'")
    elif name in RESERVED:
        c.err(path, "the name %s is reserved (%s)" % (name, ", ".join(RESERVED)))
    if not c.obj(path, s, SENSOR_KEYS, ("kind",)):
        return
    kind = s.get("kind")
    if "kind" in s and not c.enum(path + ".kind", kind, KINDS):
        kind = None
    if "period_s" in s:
        c.num(path + ".period_s", s["period_s"], 0.1, 86400)
    if "topic" in s:
        t = s["topic"]
        if c.str_(path + ".topic", t, 1, 64):
            if not _topic_ok(t):
                c.err(path + ".topic", "must be a topic without wildcards (+ #), empty levels, spaces or a leading '$' (got %s)" % _fmt(t))
            elif t in RESERVED:
                c.err(path + ".topic", "%s is reserved for the firmware (%s)" % (_fmt(t), ", ".join(RESERVED)))
    if "qos" in s:
        c.int_(path + ".qos", s["qos"], 0, 2)
    # base types of the kind-specific keys (checked whatever the kind)
    if "pins" in s and c.obj(path + ".pins", s["pins"], ("data", "adc", "sda", "scl")):
        for k in sorted(s["pins"]):
            if k in ("data", "adc", "sda", "scl"):
                _gpio(c, path + ".pins." + k, s["pins"][k], chip, output=k != "adc", adc=k == "adc")
    if "atten" in s:
        c.enum(path + ".atten", s["atten"], ATTEN)
    for k in ("scale", "offset", "base", "amplitude"):
        if k in s:
            c.num(path + "." + k, s[k])
    if "samples" in s:
        c.int_(path + ".samples", s["samples"], 1, 64)
    if "rom" in s:
        r = s["rom"]
        if type(r) is not str or len(r) != 16 or not all(ch in "0123456789abcdef" for ch in r):
            c.err(path + ".rom", "must be 16 lower-case hex digits (the 1-Wire ROM code) (got %s)" % _fmt(r))
    if "bus" in s and c.obj(path + ".bus", s["bus"], ("i2c", "freq")):
        b = s["bus"]
        if "i2c" in b:
            hi = CHIP[chip]["i2c"] if chip in CHIP else 1
            if c.int_(path + ".bus.i2c", b["i2c"], 0, 1) and int(b["i2c"]) > hi:
                c.err(path + ".bus.i2c", "%s has only I2C controller 0" % chip)
        if "freq" in b:
            c.int_(path + ".bus.freq", b["freq"], 10000, 1000000)
    if "address" in s and (not _is_int(s["address"]) or s["address"] not in (118, 119)):
        c.err(path + ".address", "must be 118 (0x76) or 119 (0x77) (got %s)" % _fmt(s["address"]))
    if "signal" in s:
        c.enum(path + ".signal", s["signal"], SIGNALS)
    if "steps" in s:
        c.int_(path + ".steps", s["steps"], 2, 100000)
    for k in ("hang_after", "fail_every"):
        if k in s:
            c.int_(path + "." + k, s[k], 1, 1000000)
    if kind is None:
        return
    # what the kind needs and what it does not use
    allowed = SENSOR_OPTIONAL[kind]
    for k in sorted(s):
        if k in SENSOR_KEYS and k not in SENSOR_COMMON and k not in allowed:
            c.err(path + "." + k, "not used by kind %s" % kind)
    need = PINS[kind]
    if need:
        if "pins" not in s:
            c.err(path + ".pins", "required for kind %s (%s)" % (kind, ", ".join(need)))
        elif type(s["pins"]) is dict:
            for k in sorted(s["pins"]):
                if k not in need and k in ("data", "adc", "sda", "scl"):
                    c.err(path + ".pins." + k, "not used by kind %s (it needs %s)" % (kind, ", ".join(need)))
            for k in need:
                if k not in s["pins"]:
                    c.err(path + ".pins." + k, "required for kind %s" % kind)


