# Board configuration: load, merge secrets, validate, fill in defaults.
#
# The rules themselves are in validate.py, which load() imports and then unloads again
# (its code is the biggest part of the firmware, and it is needed once per boot).
#
# Portable: MicroPython (unix port, ESP32) and CPython.  No hardware imports.
import json

DEFAULTS = {
    "wifi": {"retries": 5, "timeout_s": 15},
    "mqtt": {"client_id": "sensor-{uid}", "keepalive": 60, "topic_prefix": "sensors/{uid}",
             "qos": 1, "backoff_max_ms": 10000, "max_packet": 4096},
    "ring": {"capacity": 64},
    "watchdog": {"timeout_ms": 30000},
    "power": {"mode": "always-on", "flush_budget_ms": 5000},
    "health": {"period_s": 60, "qos": 0},
    "safe_mode": {"active": "low", "window_ms": 1000, "flag_file": "/safe_mode"},
    "time": {"ntp_servers": ["pool.ntp.org"], "timeout_s": 5, "retry_s": 60},
}
SENSOR_DEFAULTS = {
    "adc": {"atten": "11dB", "scale": 1, "offset": 0, "samples": 4},
    "bme280": {"address": 118},
    "sim": {"signal": "sine", "base": 20, "amplitude": 5, "steps": 60},
}


class ConfigError(Exception):
    """The configuration cannot be used.  .errors: [(path, message)]."""

    def __init__(self, errors, source=None):
        super().__init__("; ".join("%s: %s" % e for e in errors))
        self.errors = errors
        self.source = source

    def lines(self):
        return ["%s: %s" % (p or "(top level)", m) for p, m in self.errors]


# ---- JSON syntax -------------------------------------------------------------------
# MicroPython's json.loads is lenient: it accepts trailing commas, a missing colon, and
# returns {} for a truncated '{"a":'.  A half-written board file must not become a
# half-empty configuration, so the text is checked strictly first (no values built).

_WS = " \t\r\n"


class _Syntax(Exception):
    pass


def check_syntax(text):
    """None if text is one well-formed JSON value, else 'line L col C: problem'.
    Also reports duplicate keys (JSON parsers silently keep the last one)."""
    try:
        i = _value(text, _ws(text, 0), 0)
        i = _ws(text, i)
        if i != len(text):
            raise _Syntax("unexpected %r after the end of the document" % text[i], i)
    except _Syntax as e:
        msg, pos = e.args
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return "line %d col %d: %s" % (line, col, msg)
    return None


def _ws(t, i):
    n = len(t)
    while i < n and t[i] in _WS:
        i += 1
    return i


def _value(t, i, depth):
    if depth > 20:
        raise _Syntax("nested too deeply", i)
    if i >= len(t):
        raise _Syntax("unexpected end of file (truncated?)", i)
    c = t[i]
    if c == "{":
        i = _ws(t, i + 1)
        seen = []
        if i < len(t) and t[i] == "}":
            return i + 1
        while True:
            if i >= len(t):
                raise _Syntax("unexpected end of file (truncated?)", i)
            if t[i] != '"':
                raise _Syntax("expected a key in double quotes", i)
            start = i
            i = _string(t, i)
            key = t[start:i]
            if key in seen:
                raise _Syntax("duplicate key %s" % key, start)
            seen.append(key)
            i = _ws(t, i)
            if i >= len(t) or t[i] != ":":
                raise _Syntax("expected ':' after key %s" % key, i)
            i = _value(t, _ws(t, i + 1), depth + 1)
            i = _ws(t, i)
            if i < len(t) and t[i] == ",":
                comma = i
                i = _ws(t, i + 1)
                if i < len(t) and t[i] == "}":
                    raise _Syntax("trailing comma before '}'", comma)
                continue
            if i < len(t) and t[i] == "}":
                return i + 1
            raise _Syntax("expected ',' or '}'", i)
    if c == "[":
        i = _ws(t, i + 1)
        if i < len(t) and t[i] == "]":
            return i + 1
        while True:
            i = _ws(t, _value(t, i, depth + 1))
            if i < len(t) and t[i] == ",":
                comma = i
                i = _ws(t, i + 1)
                if i < len(t) and t[i] == "]":
                    raise _Syntax("trailing comma before ']'", comma)
                continue
            if i < len(t) and t[i] == "]":
                return i + 1
            raise _Syntax("expected ',' or ']'", i)
    if c == '"':
        return _string(t, i)
    for word in ("true", "false", "null"):
        if t.startswith(word, i):
            return i + len(word)
    return _number(t, i)


def _string(t, i):
    n = len(t)
    i += 1
    while i < n:
        c = t[i]
        if c == '"':
            return i + 1
        if c == "\\":
            if i + 1 >= n or t[i + 1] not in '"\\/bfnrtu':
                raise _Syntax("bad escape in string", i)
            i += 2
            continue
        if c < " ":
            raise _Syntax("control character in string (unterminated string?)", i)
        i += 1
    raise _Syntax("unterminated string", i)


def _number(t, i):
    start = i
    n = len(t)
    if i < n and t[i] == "-":
        i += 1
    digits = i
    while i < n and "0" <= t[i] <= "9":
        i += 1
    if i == digits:
        raise _Syntax("unexpected %r" % t[start] if start < n else "unexpected end", start)
    if t[digits] == "0" and i - digits > 1:
        raise _Syntax("leading zero in number", start)
    if i < n and t[i] == ".":
        i += 1
        d = i
        while i < n and "0" <= t[i] <= "9":
            i += 1
        if i == d:
            raise _Syntax("digit expected after '.'", i)
    if i < n and t[i] in "eE":
        i += 1
        if i < n and t[i] in "+-":
            i += 1
        d = i
        while i < n and "0" <= t[i] <= "9":
            i += 1
        if i == d:
            raise _Syntax("digit expected in exponent", i)
    return i


# ---- defaults, merging, overrides ---------------------------------------------------------


def apply_defaults(cfg):
    """Fill in every optional key (call on a valid config).  Integers given as 5.0 become 5."""
    for sec in DEFAULTS:
        d = cfg.get(sec)
        if d is None and (sec == "wifi" or sec == "time" and "tls" not in cfg["mqtt"]):
            continue  # no Wi-Fi section: unix; the clock is needed for TLS only
        if d is None:
            d = cfg[sec] = {}
        for k in DEFAULTS[sec]:
            if k not in d:
                d[k] = DEFAULTS[sec][k]
    m = cfg["mqtt"]
    if "port" not in m:
        m["port"] = 8883 if "tls" in m else 1883
    for k in ("port", "keepalive", "qos", "backoff_max_ms", "max_packet"):
        m[k] = int(m[k])
    cfg["ring"]["size"] = int(cfg["ring"]["size"])
    cfg["ring"]["capacity"] = int(cfg["ring"]["capacity"])
    cfg["watchdog"]["timeout_ms"] = int(cfg["watchdog"]["timeout_ms"])
    cfg["power"]["flush_budget_ms"] = int(cfg["power"]["flush_budget_ms"])
    cfg["health"]["qos"] = int(cfg["health"]["qos"])
    if "pin" in cfg["safe_mode"]:
        cfg["safe_mode"]["pin"] = int(cfg["safe_mode"]["pin"])
    cfg["safe_mode"]["window_ms"] = int(cfg["safe_mode"]["window_ms"])
    for name in cfg["sensors"]:
        s = cfg["sensors"][name]
        s.setdefault("period_s", 60)
        s.setdefault("topic", name)
        s["qos"] = int(s.get("qos", m["qos"]))
        for k, v in SENSOR_DEFAULTS.get(s["kind"], {}).items():
            s.setdefault(k, v)
        if s["kind"] == "bme280":
            b = s.setdefault("bus", {})
            b["i2c"] = int(b.get("i2c", 0))
            b["freq"] = int(b.get("freq", 100000))
        for k in ("samples", "steps", "hang_after", "fail_every", "address"):
            if k in s:
                s[k] = int(s[k])
        if "pins" in s:
            for k in s["pins"]:
                s["pins"][k] = int(s["pins"][k])
    return cfg


def deep_merge(base, over):
    """base with over's values, objects merged key by key (over wins); base is not changed."""
    out = dict(base)
    for k in over:
        v = over[k]
        if type(v) is dict and type(out.get(k)) is dict:
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def set_path(cfg, dotted, value):
    """cfg["a"]["b"] = value for "a.b", creating objects on the way."""
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        if type(node.get(k)) is not dict:
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def parse_value(text):
    """A --set value: JSON when it is well-formed JSON, else the text as a string."""
    if check_syntax(text) is None:
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def expand(template, uid, board):
    return template.replace("{uid}", uid).replace("{board}", board)


# ---- loading ---------------------------------------------------------------------------------

SECRETS_RESERVED = ("board", "chip", "flash")


def read_json(path, what="board file"):
    """The object in a JSON file; ConfigError naming the file and the problem if not."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([("", "cannot read %s %s (%s)" % (what, path, e))], path)
    problem = check_syntax(text)
    if problem:
        raise ConfigError([("", "%s %s is not valid JSON: %s" % (what, path, problem))], path)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError([("", "%s %s is not valid JSON: %s" % (what, path, e))], path)
    if type(data) is not dict:
        raise ConfigError([("", "%s %s must hold a JSON object" % (what, path))], path)
    return data


def load(path, secrets=(), overrides=()):
    """The validated configuration, defaults filled in.  secrets: paths of secrets files,
    deep-merged in order (a missing one is skipped); overrides: [(dotted path, value)].
    Raises ConfigError."""
    cfg = read_json(path)
    for sp in secrets:
        try:
            open(sp).close()
        except OSError:
            continue
        sec = read_json(sp, "secrets file")
        clash = [k for k in SECRETS_RESERVED if k in sec]
        if clash:
            raise ConfigError([(k, "may not be set in the secrets file %s (it belongs in the board file)" % sp)
                               for k in clash], sp)
        cfg = deep_merge(cfg, sec)
    for k, v in overrides:
        set_path(cfg, k, v)
    import validate

    errors = validate.validate(cfg)
    del validate
    _unload("validate")
    tls = cfg.get("mqtt", {}).get("tls") if type(cfg.get("mqtt")) is dict else None
    for k in ("ca", "cert", "key") if not errors and tls else ():
        if k in tls:
            try:
                open(tls[k]).close()
            except OSError:  # deployed by make deploy from boards/<path>
                errors.append(("mqtt.tls." + k, "no such file: %s" % tls[k]))
    if errors:
        raise ConfigError(errors, path)
    return apply_defaults(cfg)


def _unload(name):
    """Drop a module that is needed only once, so its code can be garbage-collected."""
    import sys
    import gc

    sys.modules.pop(name, None)
    gc.collect()


def _is_num(v):
    return type(v) is int or type(v) is float


# ---- start-up: options (host), the configuration, safe mode ---------------------------------
# Everything app.main() does before the app runs lives here, so that it is unloaded with
# this module once the decision is made.

EXIT_OK = 0
EXIT_CONFIG = 2      # host only: the configuration is unusable (device: back to the REPL)
EXIT_SAFE = 3        # host only: safe mode (device: back to the REPL)
CRASH_LIMIT = 3      # consecutive crashed boots before safe mode (app.CRASH_LIMIT)
DEVICE_CONFIG = "/board.json"
DEVICE_SECRETS = ("/secrets.json",)
DEVICE_SAFE_FLAG = "/safe_mode"


class Stop(Exception):
    """The app must not start: .code is the host's exit status, .lines what to log."""

    def __init__(self, code, lines):
        super().__init__(lines[0] if lines else "")
        self.code = code
        self.lines = lines

USAGE = """usage: main.py [--board FILE] [--secrets FILE]... [--broker HOST] [--port N] [--ring PATH]
               [--uid ID] [--period S] [--set KEY=VALUE]... [--pin N=LEVEL]... [--clock DATE]
               [--trace] [--check]
  --board    board file (default boards/unix.json on the host, /board.json on a device)
  --secrets  secrets file(s) merged over it (default: secrets.json, boards/secrets.json and
             boards/<name>.secrets.json, when they exist)
  --broker / --port / --ring / --uid    shortcuts for --set mqtt.broker=... etc.
  --period   every sensor's period_s
  --set      any key, dotted (sensors.temp.qos=2); the value is JSON, or else a string
  --pin      host: simulate GPIO N held at LEVEL (0/1) at boot (safe-mode pin)
  --clock    host: the board's clock at power-on, YYYY-MM-DD (an ESP32's reads 2000-01-01)
  --trace    log every MQTT packet
  --check    validate, print the merged configuration (secrets masked) and exit
exit codes (host): 0 ok, 2 bad configuration, 3 safe mode, 75 deep sleep, 76 reboot"""


class UsageError(Exception):
    pass


def parse_args(argv):
    o = {"board": None, "secrets": [], "set": [], "pins": {}, "trace": False, "check": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            raise UsageError("")
        if a in ("--trace", "--check"):
            o[a[2:]] = True
            i += 1
            continue
        if i + 1 >= len(argv):
            raise UsageError("%s needs a value" % a)
        v = argv[i + 1]
        i += 2
        if a == "--board":
            o["board"] = v
        elif a == "--secrets":
            o["secrets"].append(v)
        elif a in ("--broker", "--port", "--ring", "--uid"):
            key = {"--broker": "mqtt.broker", "--port": "mqtt.port", "--ring": "ring.path", "--uid": "uid"}[a]
            o["set"].append((key, parse_value(v) if a == "--port" else v))
        elif a == "--period":
            o["period"] = parse_value(v)
        elif a == "--set":
            if "=" not in v:
                raise UsageError("--set needs KEY=VALUE")
            k, val = v.split("=", 1)
            o["set"].append((k, parse_value(val)))
        elif a == "--clock":
            d = v.split("-")
            if len(d) != 3 or not all(x.isdigit() for x in d):
                raise UsageError("--clock needs a date YYYY-MM-DD, e.g. --clock 2000-01-01")
            o["clock"] = _days(int(d[0]), int(d[1]), int(d[2])) * 86400
        elif a == "--pin":
            try:
                n, level = v.split("=")
                o["pins"][int(n)] = int(level)
            except ValueError:
                raise UsageError("--pin needs N=LEVEL, e.g. --pin 0=0")
        else:
            raise UsageError("unknown option %s" % a)
    return o


def _days(y, m, d):
    """Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's days_from_civil)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _secrets_for(path):
    """Host default, as the deploy tool merges them (later wins)."""
    d = path.rsplit("/", 1)[0] if "/" in path else "."
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".json"):
        name = name[:-5]
    parent = d.rsplit("/", 1)[0] if "/" in d else "."
    if d in (".", ""):
        parent = ".."
    return [parent + "/secrets.json", d + "/secrets.json", d + "/" + name + ".secrets.json"]


def masked(cfg):
    out = {}
    for k in cfg:
        v = cfg[k]
        if type(v) is dict:
            out[k] = masked(v)
        elif k == "password" and v:
            out[k] = "***"
        else:
            out[k] = v
    return out


def startup(argv, host, device_config, device_secrets):
    """(options, configuration) for app.main().  Raises UsageError or ConfigError."""
    o = parse_args(argv)
    path = o["board"] or ("boards/unix.json" if host else device_config)
    o["board"] = path
    secrets = o["secrets"] or (_secrets_for(path) if host else list(device_secrets))
    overrides = list(o["set"])
    if "period" in o:
        raw = read_json(path)
        for name in (raw["sensors"] if type(raw.get("sensors")) is dict else ()):
            overrides.append(("sensors.%s.period_s" % name, o["period"]))
    return o, load(path, secrets, overrides)


def prepare(argv, board, State):
    """(options, configuration, RTC state) to run the app with; raises Stop when it must not
    run: usage, --check, a bad configuration, safe mode.  No watchdog has been started."""
    host = board.HOST
    # 1. a safe-mode flag file that needs no configuration at all
    if not host and board.exists(DEVICE_SAFE_FLAG):
        raise Stop(EXIT_SAFE, ["safe mode: %s exists; the app does not start. Remove it and reset:"
                               " import os; os.remove('%s'); import machine; machine.reset()"
                               % (DEVICE_SAFE_FLAG, DEVICE_SAFE_FLAG)])
    # 2. options and configuration
    try:
        o, cfg = startup(argv, host, DEVICE_CONFIG, DEVICE_SECRETS)
    except UsageError as e:
        print(USAGE)
        raise Stop(EXIT_CONFIG if str(e) else EXIT_OK, [str(e)] if str(e) else [])
    except ConfigError as e:
        raise Stop(EXIT_CONFIG, ["config error in %s:" % e.source] + ["  " + line for line in e.lines()]
                   + ["the app does not start; fix the file and reset (the REPL stays available)"])
    if o["check"]:
        print(json.dumps(masked(cfg)))
        raise Stop(EXIT_OK, ["%s: valid" % o["board"]])
    why = board.chip_mismatch(cfg["chip"])
    if why:
        raise Stop(EXIT_CONFIG, ["config error in %s: chip: %s" % (o["board"], why)])
    for k in ("$schema", "description", "flash"):
        cfg.pop(k, None)  # not needed any more: RAM
    if host:
        cfg.pop("wifi", None)
    # 3. board, RTC state, safe mode
    board.init(cfg, o)
    state = State()
    sm = cfg["safe_mode"]
    reason = None
    if board.exists(sm["flag_file"]):
        reason = "flag file %s exists (remove it to leave safe mode)" % sm["flag_file"]
    elif "pin" in sm and board.pin_held(sm["pin"], sm["active"], 0 if board.woke_from_deepsleep() else sm["window_ms"]):
        reason = "GPIO %d held %s at boot" % (sm["pin"], sm["active"])
    elif state.crashes >= CRASH_LIMIT:
        reason = ("the app crashed %d times in a row (power-cycle, or fix it and then:"
                  " import app; app.clear_crashes(); machine.reset())" % state.crashes)
    if reason:
        raise Stop(EXIT_SAFE, ["safe mode: " + reason + "; the app does not start, no watchdog runs"])
    return o, cfg, state
