# The board configuration: read the board file (a strict JSON syntax check first,
# jsoncheck.py), merge the secrets files and the host's overrides, validate it (validate.py:
# one table of keys, types and ranges mirroring boards/schema.json; imported, used once and
# unloaded again: it is the biggest part of the firmware and needed once per boot) and fill
# in the defaults (host_tests/test_validate_table.py checks them against the schema's).
#
# Portable: MicroPython (unix port, ESP32) and CPython.  No hardware imports.
import json

from jsoncheck import check_syntax

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


# ---- defaults, merging, overrides -------------------------------------------------------------


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
    if "wifi" in cfg:
        cfg["wifi"]["retries"] = int(cfg["wifi"]["retries"])  # range() takes no 5.0
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
    tls = cfg["mqtt"].get("tls") if not errors else None
    for k in ("ca", "cert", "key") if tls else ():
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
