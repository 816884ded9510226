# The device-side rules for board configurations: one table (TOP) of every key with its
# type and range or choices, mirroring boards/schema.json key for key.  There is no JSON
# Schema engine on the device; host_tests/test_validate_table.py checks the table against
# the schema (keys, required keys, types, ranges, enums, the per-chip pin sets and per-kind
# sensor keys), and host_tests/test_boards.py checks that both give the same verdict - and
# the same key paths - on good and bad files, on both runtimes.
# validate(cfg) reports every problem as (path, message), e.g. ("mqtt.port", "must be an
# integer 1..65535 (got \"1883\")"), all at once, so one edit fixes a file.
# config.load() imports this module, uses it once and unloads it.
#
# A rule is a tuple:
#   ("i", lo, hi)  integer          ("n", lo, hi)  number (None: unbounded)
#   ("s", lo, hi)  string length    ("e", choices) one of      ("b",) true or false
#   ("o", required keys, ((key, rule), ...))     an object with only those keys
#   ("l", lo, hi, item rule, noun)               a list of lo..hi items
#   ("m", lo, hi, entry rule, noun)              an object of lo..hi named entries
# and may end in a tag, for a rule the schema states as a pattern, a "not" or an if/then: on
# a value the tag's check (_tag) runs instead of the base check; on an object, after it.
# The defaults are config.py's, applied after this module is unloaded: strings in this
# table are objects that go with the module, the ones config.py names are interned once.
import json

CHIPS = ("esp32", "esp32s3", "esp32c3", "unix")
KINDS = ("adc", "dht11", "dht22", "ds18b20", "bme280", "sim")
RESERVED = ("status", "cmd", "reply", "health")  # topics the firmware uses itself
# flash.size: MicroPython's generic partition tables (tools/partitions.py)
FLASH_SIZES = ("2MB", "4MB", "8MB", "16MB", "32MB")
# Partition labels of MicroPython's tables and firmware: never the ring's (ring.partition)
RESERVED_LABELS = ("nvs", "phy_init", "factory", "vfs", "ffat", "romfs", "otadata", "ota_0", "ota_1")

_QOS = ("i", 0, 2)
_PATH = ("s", 1, 255)
_GPIO = ("i", 0, 63, "gpio")
_OUT = ("i", 0, 63, "out")  # a sensor drives the line: not an input-only pin
_NUM = ("n", None, None)

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
PINS = {"adc": ("adc",), "dht11": ("data",), "dht22": ("data",), "ds18b20": ("data",),
        "bme280": ("sda", "scl"), "sim": ()}

SENSOR = ("o", ("kind",), (
    ("kind", ("e", KINDS)),
    ("period_s", ("n", 0.1, 86400)),
    ("topic", ("s", 1, 64, "topic")),
    ("qos", _QOS),
    ("pins", ("o", (), (("data", _OUT), ("adc", ("i", 0, 63, "adc")), ("sda", _OUT), ("scl", _OUT)))),
    ("atten", ("e", ("0dB", "2.5dB", "6dB", "11dB"))),
    ("scale", _NUM),
    ("offset", _NUM),
    ("samples", ("i", 1, 64)),
    ("rom", ("s", None, None, "rom")),
    ("bus", ("o", (), (("i2c", ("i", 0, 1, "i2c")), ("freq", ("i", 10000, 1000000))))),
    ("address", ("e", (118, 119), "address")),
    ("signal", ("e", ("sine", "ramp", "const"))),
    ("base", _NUM),
    ("amplitude", _NUM),
    ("steps", ("i", 2, 100000)),
    ("hang_after", ("i", 1, 1000000)),
    ("fail_every", ("i", 1, 1000000)),
), "sensor")

TOP = ("o", ("board", "chip", "mqtt", "ring", "sensors"), (
    ("$schema", ("s", 0, None)),
    ("description", ("s", 0, 1024)),
    ("board", ("s", 1, 32, "board")),
    ("chip", ("e", CHIPS)),
    ("flash", ("o", ("offset",), (("offset", ("s", None, None, "offset")), ("size", ("e", FLASH_SIZES))))),
    ("uid", ("s", 1, 32, "uid")),
    ("wifi", ("o", ("ssid",), (
        ("ssid", ("s", 1, 32)),
        ("password", ("s", 0, 63)),
        ("retries", ("i", 1, 20)),
        ("timeout_s", ("n", 1, 60))))),
    ("mqtt", ("o", ("broker",), (
        ("broker", ("s", 1, 253, "host")),
        ("port", ("i", 1, 65535)),
        ("tls", ("o", (), (("ca", _PATH), ("cert", _PATH), ("key", _PATH), ("server_hostname", ("s", 1, 253)),
                           ("insecure", ("b",))), "tls")),
        ("client_id", ("s", 1, 64, "client_id")),
        ("keepalive", ("i", 0, 65535)),
        ("topic_prefix", ("s", 1, 128, "prefix")),
        ("qos", _QOS),
        ("user", ("s", 1, 128)),
        ("password", ("s", 0, 256)),
        ("backoff_max_ms", ("i", 1000, 600000)),
        ("max_packet", ("i", 256, 262144))))),
    ("ring", ("o", ("path", "size"), (
        ("path", ("s", 1, 255, "abspath")),
        ("partition", ("s", None, None, "label")),
        ("size", ("i", 12288, 1048576, "sectors")),
        ("capacity", ("i", 4, 256))))),
    ("watchdog", ("o", ("timeout_ms",), (("timeout_ms", ("i", 1000, 120000)),))),
    ("power", ("o", ("mode",), (
        ("mode", ("e", ("always-on", "deep-sleep"))),
        ("wake_period_s", ("n", 0.1, 86400)),
        ("flush_budget_ms", ("i", 100, 60000))), "power")),
    ("health", ("o", (), (("period_s", ("n", 0.1, 86400)), ("qos", _QOS)))),
    ("safe_mode", ("o", (), (
        ("pin", _GPIO),
        ("active", ("e", ("low", "high"))),
        ("window_ms", ("i", 0, 10000)),
        ("flag_file", _PATH)))),
    ("time", ("o", (), (
        ("ntp_servers", ("l", 1, 4, ("s", 1, 253, "hostport"), "NTP servers")),
        ("timeout_s", ("n", 1, 30)),
        ("retry_s", ("n", 1, 86400))))),
    ("sensors", ("m", 1, 16, SENSOR, "sensors")),
), "top")


# Per chip: flash offset, GPIOs that exist, those wired to the flash (never usable),
# input-only GPIOs, ADC1 channels (ADC2 is unusable while Wi-Fi runs), I2C controllers.
def _span(a, b):
    return list(range(a, b + 1))


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

# ---- validation ------------------------------------------------------------------------


def _is_int(v):
    # JSON Schema "integer" also accepts 5.0; bool is never a number.
    return type(v) is int or (type(v) is float and v == v and v not in (float("inf"), float("-inf"))
                              and v == int(v))


def _fmt(v):
    return json.dumps(v)


def _join(path, key):
    return "%s.%s" % (path, key) if path else str(key)


def validate(cfg):
    """All problems in a merged configuration: [(path, message)]; [] when it is good."""
    c = _Checker()
    chip = cfg.get("chip") if type(cfg) is dict else None
    c.chip = chip if type(chip) is str and chip in CHIPS else None
    c.check("", cfg, TOP)
    return c.errors


class _Checker:
    def __init__(self):
        self.errors = []
        self.chip = None

    def err(self, path, msg):
        self.errors.append((path, msg))

    def check(self, path, v, r):
        """Check v against rule r; True when it passed the base check."""
        k = r[0]
        if k == "l" or k == "m":
            return self.base(path, v, r)
        n = 2 if k == "e" else 3  # where the tag goes
        tag = r[n] if len(r) > n else None
        if k == "o":
            if type(v) is not dict:
                self.err(path, "must be an object")
                return False
            fields = r[2]
            for key in sorted(v):
                if _rule(fields, key) is None:
                    self.err(_join(path, key), "unknown key (allowed: %s)" % ", ".join(f[0] for f in fields))
            for key in r[1]:
                if key not in v:
                    self.err(_join(path, key), "required")
            for key, sub in fields:
                if key in v:
                    self.check(_join(path, key), v[key], sub)
            if tag:
                _tag(self, tag, path, v, r)
            return True
        if tag:
            return _tag(self, tag, path, v, r)
        return self.base(path, v, r)

    def base(self, path, v, r):
        k = r[0]
        if k == "i":
            if _is_int(v) and r[1] <= v <= r[2]:
                return True
            self.err(path, "must be an integer %d..%d (got %s)" % (r[1], r[2], _fmt(v)))
        elif k == "n":
            lo, hi = r[1], r[2]
            if (type(v) is int or type(v) is float) and (lo is None or lo <= v <= hi):
                return True
            self.err(path, "must be %s (got %s)" % ("a number" if lo is None else "a number %s..%s"
                                                     % (_fmt(lo), _fmt(hi)), _fmt(v)))
        elif k == "s":
            if type(v) is not str:
                self.err(path, "must be a string (got %s)" % _fmt(v))
            elif r[2] is not None and not r[1] <= len(v) <= r[2]:
                self.err(path, "must be %d..%d characters long (got %d)" % (r[1], r[2], len(v)))
            else:
                return True
        elif k == "e":
            ch = r[1]
            if v in ch and (type(v) is type(ch[0]) or type(ch[0]) is int and _is_int(v)) \
                    and v is not True and v is not False:
                return True
            self.err(path, "must be one of %s (got %s)" % (", ".join(_fmt(x) for x in ch), _fmt(v)))
        elif k == "b":
            if v is True or v is False:
                return True
            self.err(path, "must be true or false (got %s)" % _fmt(v))
        elif k == "l":
            if type(v) is not list or not r[1] <= len(v) <= r[2]:
                self.err(path, "must be a list of %d..%d %s (got %s)" % (r[1], r[2], r[4], _fmt(v)))
                return False
            for i in range(len(v)):
                self.check("%s.%d" % (path, i), v[i], r[3])
            return True
        elif k == "m":
            if type(v) is not dict:
                self.err(path, "must be an object of named %s" % r[4])
            elif not r[1] <= len(v) <= r[2]:
                self.err(path, "must name %d..%d %s (got %d)" % (r[1], r[2], r[4], len(v)))
            else:
                for name in sorted(v):
                    p = path + "." + name
                    if not _name_ok(name):
                        self.err(p, "sensor names are 1..16 lower-case letters, digits, '_' or '-'")
                    elif name in RESERVED:
                        self.err(p, "the name %s is reserved (%s)" % (name, ", ".join(RESERVED)))
                    self.check(p, v[name], r[3])
                return True
        return False


def _rule(fields, key):
    for f in fields:
        if f[0] == key:
            return f[1]
    return None


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


def _tag(c, tag, path, v, r):
    """The rules the table's types cannot say (see the header)."""
    chip = c.chip
    esp = chip is not None and chip != "unix"
    if tag == "top":  # what the chip requires or rules out
        if esp:
            if "flash" not in v:
                c.err("flash", "required for chip %s ({\"offset\": \"%s\"})" % (chip, CHIP[chip]["offset"]))
            if "wifi" not in v:
                c.err("wifi", "required for chip %s ({\"ssid\": ...}; the password goes in the secrets file)" % chip)
        elif chip == "unix" and "flash" in v:
            c.err("flash", "not used for chip unix (remove it)")
    elif tag == "offset":  # the deploy tooling flashes MicroPython at this offset
        if type(v) is not str or len(v) < 3 or v[:2] != "0x" or not all(ch in "0123456789abcdefABCDEF" for ch in v[2:]):
            c.err(path, "must be a hex string like \"0x1000\" (got %s)" % _fmt(v))
        elif esp and v != CHIP[chip]["offset"]:
            c.err(path, "must be \"%s\" for chip %s (got %s)" % (CHIP[chip]["offset"], chip, _fmt(v)))
    elif tag == "label":
        if chip == "unix":
            c.err(path, "not used for chip unix (the host keeps the ring in ring.path)")
        elif type(v) is not str or not 1 <= len(v) <= 16 or not _chars_ok(v, "_-") or v != v.lower() or v[0] in "_-":
            c.err(path, "must be a partition label of 1..16 lower-case letters, digits, '_' or '-' (got %s)" % _fmt(v))
        elif v in RESERVED_LABELS:
            c.err(path, "%s is a label MicroPython uses (%s): pick another, e.g. \"ring\""
                  % (_fmt(v), ", ".join(RESERVED_LABELS)))
    elif tag == "rom":
        if type(v) is not str or len(v) != 16 or not all(ch in "0123456789abcdef" for ch in v):
            c.err(path, "must be 16 lower-case hex digits (the 1-Wire ROM code) (got %s)" % _fmt(v))
    elif tag == "address":
        if not _is_int(v) or v not in r[1]:
            c.err(path, "must be 118 (0x76) or 119 (0x77) (got %s)" % _fmt(v))
    elif tag == "tls":  # TLS without a CA authenticates nobody: only when the file says so
        insecure = v.get("insecure") is True
        if "ca" not in v and not insecure:
            c.err(path + ".ca", "required: the CA certificate (PEM) to check the broker with; or"
                  " \"insecure\": true to skip the check (anyone on the path can then pose as the broker)")
        elif "ca" in v and insecure:
            c.err(path + ".ca", "not used with \"insecure\": true, which turns the check off: remove one")
        if "key" in v and "cert" not in v:
            c.err(path + ".cert", "required with mqtt.tls.key (the client certificate of that key)")
    elif tag == "power":
        if v.get("mode") == "deep-sleep" and "wake_period_s" not in v:
            c.err(path + ".wake_period_s", "required when power.mode is \"deep-sleep\"")
    elif tag == "sensor":  # what the kind needs and what it does not use
        kind = v.get("kind")
        if type(kind) is not str or kind not in KINDS:
            return
        allowed = SENSOR_OPTIONAL[kind]
        for k in sorted(v):
            if k not in SENSOR_COMMON and k not in allowed and _rule(r[2], k):
                c.err(path + "." + k, "not used by kind %s" % kind)
        need = PINS[kind]
        if need:
            pins = v.get("pins")
            if "pins" not in v:
                c.err(path + ".pins", "required for kind %s (%s)" % (kind, ", ".join(need)))
            elif type(pins) is dict:
                for k in sorted(pins):
                    if k not in need and k in ("data", "adc", "sda", "scl"):
                        c.err(path + ".pins." + k, "not used by kind %s (it needs %s)" % (kind, ", ".join(need)))
                for k in need:
                    if k not in pins:
                        c.err(path + ".pins." + k, "required for kind %s" % kind)
    elif not c.base(path, v, r):  # the tags below add to the base check
        return False
    elif tag == "board":
        if not (_chars_ok(v, "._-") and v == v.lower() and v[0] not in "._-"):
            c.err(path, "must be lower-case letters, digits, '.', '_' or '-' (got %s)" % _fmt(v))
    elif tag == "uid":
        if not _chars_ok(v, "_-"):
            c.err(path, "must be letters, digits, '_' or '-' (got %s)" % _fmt(v))
    elif tag == "host":
        if not _chars_ok(v, ".-_:"):
            c.err(path, "must be a host name or IP address (got %s)" % _fmt(v))
    elif tag == "hostport":
        if not _chars_ok(v, ".-_:"):
            c.err(path, "must be a host name or IP address, optionally with :port (got %s)" % _fmt(v))
    elif tag == "client_id":
        if not _template_ok(v, lambda ch: _chars_ok(ch, "_.-")):
            c.err(path, "letters, digits, '_', '.', '-' and the placeholders {uid} {board} only (got %s)" % _fmt(v))
    elif tag == "prefix":
        if not _topic_ok(v):
            c.err(path, "must be a topic without wildcards (+ #), empty levels, spaces or a leading '$';"
                  " placeholders {uid} {board} (got %s)" % _fmt(v))
    elif tag == "topic":
        if not _topic_ok(v):
            c.err(path, "must be a topic without wildcards (+ #), empty levels, spaces or a leading '$' (got %s)"
                  % _fmt(v))
        elif v in RESERVED:
            c.err(path, "%s is reserved for the firmware (%s)" % (_fmt(v), ", ".join(RESERVED)))
    elif tag == "abspath":
        if esp and v[0] != "/":
            c.err(path, "must be an absolute path on the device, like \"/ring.bin\" (got %s)" % _fmt(v))
    elif tag == "sectors":
        if int(v) % 4096:
            c.err(path, "must be a multiple of 4096 (the flash sector) (got %s)" % _fmt(v))
    elif tag == "i2c":
        hi = CHIP[chip]["i2c"] if chip else 1
        if int(v) > hi:
            c.err(path, "%s has only I2C controller 0" % chip)
    else:  # gpio, out, adc: whether the pin can do the job on this chip
        if chip is None:
            return True
        info = CHIP[chip]
        v = int(v)
        if v in info["flash"]:
            c.err(path, "GPIO %d is wired to the flash on %s" % (v, chip))
        elif v not in info["gpio"]:
            c.err(path, "GPIO %d does not exist on %s" % (v, chip))
        elif tag == "adc" and v not in info["adc"]:
            c.err(path, "GPIO %d is not an ADC1 pin on %s (ADC1: GPIO %d..%d)" % (v, chip, info["adc"][0], info["adc"][-1]))
        elif tag == "out" and v in info["input_only"]:
            c.err(path, "GPIO %d is input-only on %s (this sensor drives the line)" % (v, chip))
    return True
