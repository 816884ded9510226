# The start-up decision, before any watchdog runs: the options (host), the configuration
# (config.py), the board layer's set-up, the RTC state and safe mode.  app.main() calls
# prepare() and then unloads this module with everything it loaded.
import board
from runtime import State, CRASH_LIMIT

EXIT_OK = 0
EXIT_CONFIG = 2      # host only: the configuration is unusable (device: back to the REPL)
EXIT_SAFE = 3        # host only: safe mode (device: back to the REPL)
DEVICE_CONFIG = "/board.json"
DEVICE_SECRETS = ("/secrets.json",)
DEVICE_SAFE_FLAG = "/safe_mode"


class Stop(Exception):
    """The app must not start: .code is the host's exit status, .lines what to log."""

    def __init__(self, code, lines):
        super().__init__(lines[0] if lines else "")
        self.code = code
        self.lines = lines


def options(argv, host):
    """(options, board file, secrets files); Stop on a bad command line or --help.  A
    device without arguments does not load options.py (it is not deployed)."""
    if not (argv or host):
        return {"board": None, "secrets": [], "set": [], "pins": {}, "trace": False, "check": False}, \
            DEVICE_CONFIG, list(DEVICE_SECRETS)
    import options as opt

    try:
        o = opt.parse_args(argv)
    except opt.UsageError as e:
        print(opt.USAGE)
        raise Stop(EXIT_CONFIG if str(e) else EXIT_OK, [str(e)] if str(e) else [])
    path = o["board"] or ("boards/unix.json" if host else DEVICE_CONFIG)
    secrets = o["secrets"] or (opt.secrets_for(path) if host else list(DEVICE_SECRETS))
    return o, path, secrets


def configuration(argv, host):
    """(options, configuration) for app.main().  Raises Stop or ConfigError."""
    import config

    o, path, secrets = options(argv, host)
    o["board"] = path
    overrides = list(o["set"])
    if "period" in o:
        raw = config.read_json(path)
        for name in (raw["sensors"] if type(raw.get("sensors")) is dict else ()):
            overrides.append(("sensors.%s.period_s" % name, o["period"]))
    return o, config.load(path, secrets, overrides)


def prepare(argv):
    """(options, configuration, RTC state) to run the app with; raises Stop when it must not
    run: usage, --check, a bad configuration, safe mode.  No watchdog has been started."""
    host = board.HOST
    # 1. a safe-mode flag file that needs no configuration at all
    if not host and board.exists(DEVICE_SAFE_FLAG):
        raise Stop(EXIT_SAFE, ["safe mode: %s exists; the app does not start. Remove it and reset:"
                               " import os; os.remove('%s'); import machine; machine.reset()"
                               % (DEVICE_SAFE_FLAG, DEVICE_SAFE_FLAG)])
    # 2. options and configuration
    from config import ConfigError

    try:
        o, cfg = configuration(argv, host)
    except ConfigError as e:
        raise Stop(EXIT_CONFIG, ["config error in %s:" % e.source] + ["  " + line for line in e.lines()]
                   + ["the app does not start; fix the file and reset (the REPL stays available)"])
    if o["check"]:
        import json
        import options

        print(json.dumps(options.masked(cfg)))
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
