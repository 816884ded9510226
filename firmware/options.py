# The firmware's command line on the host (main.py --board ... --check; see USAGE).  A
# device calls app.main() without arguments and never loads this module (make deploy
# leaves it off a board).
import json

from jsoncheck import check_syntax

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


def parse_value(text):
    """A --set value: JSON when it is well-formed JSON, else the text as a string."""
    if check_syntax(text) is None:
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def _days(y, m, d):
    """Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's days_from_civil)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def secrets_for(path):
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
