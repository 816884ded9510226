# mqttc: a mosquitto_pub / mosquitto_sub-style command-line client on top of the mqtt
# library.  Runs on CPython and on the MicroPython unix port (no argparse), as
# `python3 tools/mqttc.py ...` / `micropython tools/mqttc.py ...` from a checkout,
# `python3 -m mqttc ...` with lib/ on the path, and `mqttc ...` once pip installed it.
# `mqttc --help` is the reference; README.md repeats it (a test keeps them in step).
# A host tool: tools/deploy.py leaves it off boards.
#
# One loop drives everything while the command waits (for stdin, for the broker, for
# acks): it polls stdin and the socket together and lets the client run its timers,
# so PINGREQ goes out at keepalive, acks are read as they come, and under -c the
# client's own back-off re-connects (one back-off, one status line every few seconds).
import sys
import errno
import select

from mqtt import MQTTClient, MQTTException, ConnectRefused, ProtocolError, PacketTooLarge, StoreFull
from mqtt import __version__
from mqtt.compat import MICROPYTHON, random_hex, ticks_ms, ticks_diff, sleep_ms

# ---- exit status, one per class of failure -----------------------------------------
# 1-5: the CONNACK return code, as mosquitto_pub/mosquitto_sub exit with it.
EXIT_USAGE = 6
EXIT_CONNECTION = 7
EXIT_TLS = 8  # mosquitto's MOSQ_ERR_TLS, which its tools exit with too
EXIT_PROTOCOL = 9
EXIT_STORE = 10
EXIT_SUBSCRIBE = 11
EXIT_INTERNAL = 12
EXIT_TIMEOUT = 27  # as mosquitto_sub -W
EXIT_INTERRUPTED = 130

STATUS_EVERY_MS = 5000  # a status line while waiting for the broker


class Failure(Exception):
    """Ends the command: args = (exit status, one line for stderr)."""


def usage(msg):
    return Failure(EXIT_USAGE, msg + " (see: mqttc --help)")


class Quiet(Exception):
    """End the command with an exit status and no message (stdout closed, e.g. `| head`)."""


# ---- the option table ------------------------------------------------------------------
# Each option: key, kind, the commands it belongs to.  Kinds: "" flag, "s" text,
# "a" text that may repeat, "q" QoS, "n" count, "b" bytes (K/M), "d" seconds.
OPTIONS = {
    "-h": ("host", "s", "ps"), "-p": ("port", "n", "ps"), "-L": ("url", "s", "ps"),
    "-i": ("id", "s", "ps"), "-I": ("id_prefix", "s", "ps"), "-k": ("keepalive", "n", "ps"),
    "-c": ("persist", "", "ps"), "-u": ("user", "s", "ps"), "-P": ("password", "s", "ps"),
    "-V": ("protocol", "s", "ps"), "-M": ("window", "n", "ps"), "-d": ("debug", "", "ps"),
    "--quiet": ("quiet", "", "ps"), "--nodelay": ("nodelay", "", "ps"),
    "--will-topic": ("will_topic", "s", "ps"), "--will-payload": ("will_payload", "s", "ps"),
    "--will-qos": ("will_qos", "q", "ps"), "--will-retain": ("will_retain", "", "ps"),
    "--max-packet": ("max_packet", "b", "ps"),
    "--cafile": ("cafile", "s", "ps"), "--capath": ("capath", "s", "ps"),
    "--cert": ("cert", "s", "ps"), "--key": ("key", "s", "ps"), "--insecure": ("insecure", "", "ps"),
    "--store": ("store", "s", "ps"), "--store-size": ("store_size", "b", "ps"),
    "--store-capacity": ("store_capacity", "n", "ps"),
    "-t": ("topics", "a", "ps"), "-q": ("qos", "q", "ps"),
    "-m": ("msg", "s", "p"), "-f": ("file", "s", "p"), "-l": ("lines", "", "p"),
    "-s": ("stdin", "", "p"), "-n": ("null", "", "p"), "-r": ("retain", "", "p"),
    "--repeat": ("repeat", "n", "p"), "--repeat-delay": ("repeat_delay", "d", "p"),
    "-C": ("count", "n", "s"), "-W": ("wait", "n", "s"), "-E": ("exit_after_sub", "", "s"),
    "-U": ("unsub", "a", "s"), "-T": ("filter_out", "a", "s"), "-R": ("no_retained", "", "s"),
    "-v": ("verbose", "", "s"), "-N": ("no_eol", "", "s"), "-F": ("format", "s", "s"),
}
LONG = {
    "--host": "-h", "--port": "-p", "--url": "-L", "--id": "-i", "--id-prefix": "-I",
    "--keepalive": "-k", "--disable-clean-session": "-c", "--username": "-u", "--pw": "-P",
    "--password": "-P", "--protocol-version": "-V", "--max-inflight": "-M", "--debug": "-d",
    "--topic": "-t", "--qos": "-q", "--message": "-m", "--file": "-f", "--stdin-line": "-l",
    "--stdin-file": "-s", "--null-message": "-n", "--retain": "-r", "--unsubscribe": "-U",
    "--filter-out": "-T", "--verbose": "-v",
}
RANGES = {"port": (1, 65535), "keepalive": (0, 65535), "window": (1, 65535),
          "store_capacity": (1, 65535), "repeat": (1, 1 << 30), "count": (1, 1 << 30),
          "wait": (1, 1 << 30)}
MQTT5_ONLY = ("-D", "--property", "-x", "--session-expiry-interval")
NOT_SUPPORTED = ("-A", "--unix", "--proxy", "--psk", "--psk-identity", "--ciphers", "--tls-version",
                 "--tls-alpn", "--tls-engine", "--keyform", "--tls-engine-kpass-sha1",
                 "--tls-use-os-certs", "-S", "--random-filter", "--pretty", "--remove-retained",
                 "--retained-only")
MAX_PACKET = 268435460  # the largest packet MQTT 3.1.1 can express (1 + 4 + 268435455)


def defaults(cmd):
    return {"cmd": cmd, "topics": [], "unsub": [], "filter_out": [], "msg": None, "file": None,
            "lines": False, "stdin": False, "null": False, "qos": 0, "retain": False, "repeat": 1,
            "repeat_delay": 0, "count": 0, "wait": 0, "exit_after_sub": False, "no_retained": False,
            "verbose": False, "no_eol": False, "format": None, "host": None, "port": None,
            "url": None, "id": None, "id_prefix": None, "keepalive": 60, "persist": False,
            "user": None, "password": None, "protocol": None, "window": 16, "debug": False,
            "quiet": False, "nodelay": False, "will_topic": None, "will_payload": None,
            "will_qos": None, "will_retain": False, "max_packet": None, "cafile": None,
            "capath": None, "cert": None, "key": None, "insecure": False, "store": None,
            "store_size": 32768, "store_capacity": 64, "tls": False, "payload": None}


def _number(opt, v, key):
    try:
        n = int(v)
    except ValueError:
        raise usage("%s needs a whole number, not %r" % (opt, v))
    lo, hi = RANGES[key]
    if not lo <= n <= hi:
        raise usage("%s must be %d to %d, not %d" % (opt, lo, hi, n))
    return n


def _bytes(opt, v):
    """A size in bytes, with an optional K or M (1024, 1048576) suffix."""
    m = 1
    s = v.upper()
    if s.endswith("K") or s.endswith("M"):
        m = 1024 if s[-1] == "K" else 1048576
        s = s[:-1]
    try:
        n = int(s) * m
    except ValueError:
        raise usage("%s needs a size in bytes (e.g. 65536 or 64K), not %r" % (opt, v))
    if n < 1:
        raise usage("%s must be positive" % opt)
    return n


def _seconds(opt, v):
    try:
        f = float(v)
    except ValueError:
        raise usage("%s needs seconds, not %r" % (opt, v))
    if not 0 <= f <= 86400 * 365:
        raise usage("%s must be 0 or more seconds" % opt)
    return f


def parse(argv):
    """The options as a dict; raises Failure (usage) with one line naming the problem."""
    if not argv:
        raise usage("say pub or sub")
    cmd = argv[0]
    if cmd in ("--help", "--version"):
        return {"cmd": cmd}
    if cmd not in ("pub", "sub"):
        raise usage("the first argument must be pub or sub, not %r" % cmd)
    o = defaults(cmd)
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("--help", "--version"):
            return {"cmd": a}
        opt = LONG.get(a, a)
        if opt in MQTT5_ONLY:
            raise usage("%s is an MQTT 5 option: mqttc speaks MQTT 3.1.1 only" % a)
        if opt in NOT_SUPPORTED:
            raise usage("%s (a mosquitto option) is not supported by mqttc" % a)
        if opt not in OPTIONS:
            raise usage("unknown option %r" % a)
        key, kind, where = OPTIONS[opt]
        if cmd[0] not in where:
            raise usage("%s is an option of %s, not of %s" % (a, "pub" if where == "p" else "sub", cmd))
        if not kind:
            o[key] = True
            i += 1
            continue
        if i + 1 >= len(argv):
            raise usage("%s needs a value" % a)
        v = argv[i + 1]
        i += 2
        if kind == "a":
            o[key].append(v)
        elif kind == "s":
            o[key] = v
        elif kind == "q":
            if v not in ("0", "1", "2"):
                raise usage("%s must be 0, 1 or 2, not %r" % (a, v))
            o[key] = int(v)
        elif kind == "n":
            o[key] = _number(a, v, key)
        elif kind == "b":
            o[key] = _bytes(a, v)
        else:
            o[key] = _seconds(a, v)
    check(o)
    return o


def _url(o):
    """-L mqtt[s]://[user[:password]@]host[:port]/topic (as mosquitto's)."""
    u = o["url"]
    for scheme in ("mqtt://", "mqtts://"):
        if u.startswith(scheme):
            break
    else:
        raise usage("-L %r: the URL must start with mqtt:// or mqtts://" % u)
    rest = u[len(scheme):]
    if "/" not in rest or not rest.split("/", 1)[1]:
        raise usage("-L %r: the URL has no topic (mqtt://HOST[:PORT]/TOPIC)" % u)
    where, topic = rest.split("/", 1)
    if "@" in where:
        cred, where = where.rsplit("@", 1)
        if ":" in cred:
            o["user"], o["password"] = cred.split(":", 1)
        else:
            o["user"] = cred
    if ":" in where:
        where, port = where.rsplit(":", 1)
        o["port"] = _number("-L port", port, "port")
    if not where:
        raise usage("-L %r: the URL has no host" % u)
    o["host"] = where
    o["topics"].insert(0, topic)
    if scheme == "mqtts://":
        o["tls"] = True


def check_topic(t, what):
    b = _b(t)
    if not b:
        raise usage("%s is empty: a topic needs at least one character" % what)
    if len(b) > 65535:
        raise usage("%s is longer than 65535 bytes" % what)
    if "\0" in t:
        raise usage("%s contains a NUL character" % what)
    return b


def check_filter(f, what):
    check_topic(f, what)
    levels = f.split("/")
    for n, level in enumerate(levels):
        if ("#" in level and (level != "#" or n != len(levels) - 1)) or ("+" in level and level != "+"):
            raise usage("%s %r: '#' must be a whole last level and '+' a whole level "
                        "(e.g. a/+/c or a/#)" % (what, f))


def check(o):
    """Everything that makes a command line wrong, before any connection."""
    cmd = o["cmd"]
    if o["url"]:
        _url(o)
    if o["protocol"] is not None and o["protocol"] not in ("mqttv311", "311"):
        raise usage("-V %s: mqttc speaks MQTT 3.1.1 only (-V mqttv311)" % o["protocol"])
    if o["cafile"] or o["capath"]:
        o["tls"] = True
    if o["host"] is None:
        o["host"] = "127.0.0.1"
    if o["port"] is None:
        o["port"] = 8883 if o["tls"] else 1883
    if o["password"] is not None and o["user"] is None:
        raise usage("-P needs -u USER: MQTT 3.1.1 sends a password only with a user name")
    if (o["cert"] is None) != (o["key"] is None):
        raise usage("--cert and --key go together: give both")
    if (o["cert"] or o["insecure"]) and not o["tls"]:
        raise usage("%s needs TLS: give --cafile FILE (or --capath DIR)" % ("--cert" if o["cert"] else "--insecure"))
    if o["tls"] and not (o["cafile"] or o["capath"]):
        raise usage("mqtts:// needs --cafile FILE or --capath DIR to check the broker with")
    if o["will_topic"] is None:
        if o["will_payload"] is not None or o["will_qos"] is not None or o["will_retain"]:
            raise usage("--will-payload, --will-qos and --will-retain need --will-topic")
    else:
        check_topic(o["will_topic"], "--will-topic")
        if "+" in o["will_topic"] or "#" in o["will_topic"]:
            raise usage("--will-topic %r: a will topic cannot hold wildcards (+ #)" % o["will_topic"])
    if o["store"]:
        d = o["store"].rsplit("/", 1)[0] if "/" in o["store"] else "."
        try:
            import os

            os.stat(d or "/")
        except OSError:
            raise Failure(EXIT_STORE, "cannot use --store %s: there is no directory %s (create it first)"
                          % (o["store"], d))
    if o["store_size"] < 12288:
        raise usage("--store-size must be at least 12288 bytes (3 sectors of 4096)")
    o["store_size"] = (o["store_size"] + 4095) // 4096 * 4096
    if cmd == "pub":
        given = [k for k in ("msg", "file") if o[k] is not None] + \
            [k for k in ("lines", "stdin", "null") if o[k]]
        if len(given) > 1:
            raise usage("give only one of -m, -f, -l, -s, -n")
        if not given and not o["store"]:
            raise usage("say what to publish: -m MSG, -f FILE, -l, -s or -n")
        if given or o["topics"]:
            if not o["topics"]:
                raise usage("say where to publish: -t TOPIC")
            if len(o["topics"]) > 1:
                raise usage("pub takes one -t")
            t = o["topics"][0]
            check_topic(t, "-t")
            if "+" in t or "#" in t:
                raise usage("-t %r: a topic to publish to cannot hold wildcards (+ #)" % t)
        if o["lines"] and (o["repeat"] > 1 or o["repeat_delay"]):
            raise usage("--repeat and --repeat-delay do not go with -l")
        if o["file"] is not None:
            try:
                with open(o["file"], "rb") as f:
                    o["payload"] = f.read()
            except OSError as e:
                raise usage("cannot read -f %s: %s" % (o["file"], os_text(e)))
        elif o["msg"] is not None:
            o["payload"] = _b(o["msg"])
        elif o["null"]:
            o["payload"] = b""
    else:
        if not o["topics"]:
            raise usage("say what to subscribe to: -t FILTER")
        for t in o["topics"]:
            check_filter(t, "-t")
        for t in o["unsub"]:
            check_filter(t, "-U")
        for t in o["filter_out"]:
            check_filter(t, "-T")
    if o["persist"] and not o["id"]:  # (Contract 2: -I does not do, its id is new each run)
        raise usage("-c needs a client id: add -i ID (the broker keeps the session under it)")
    if o["id"] is None:
        o["id"] = (o["id_prefix"] or "mqttc-") + random_hex(6)
    if o["tls"]:
        from .tls import tls_files

        tls_files(o)


def _b(s):
    if isinstance(s, bytes):
        return s
    if MICROPYTHON:
        return s.encode()
    import os

    return os.fsencode(s)  # command-line bytes that are not UTF-8 stay as they were


# ---- errors: one line each, the same on both runtimes ---------------------------------

# errno -> words, the same on both runtimes (the unix port's errno module lacks some
# names: their Linux numbers stand in)
_ERRNO_TEXT = {}
for _name, _n, _text in (
        ("ECONNREFUSED", 111, "connection refused"), ("ECONNRESET", 104, "connection reset"),
        ("ETIMEDOUT", 110, "timed out"), ("EHOSTUNREACH", 113, "host unreachable"),
        ("ENETUNREACH", 101, "network unreachable"), ("ECONNABORTED", 103, "connection aborted"),
        ("EPIPE", 32, "broken pipe"), ("ENOENT", 2, "no such file or directory"),
        ("EACCES", 13, "permission denied"), ("EISDIR", 21, "is a directory"),
        ("ENOTDIR", 20, "not a directory")):
    _ERRNO_TEXT[getattr(errno, _name, _n)] = _text
EPIPE = getattr(errno, "EPIPE", 32)


def _errno(e):
    """The errno of an OSError, also when it only survives in the text (the library
    turns some into ConnectionLost('send failed: [Errno 111] ...'))."""
    n = getattr(e, "errno", None)
    if isinstance(n, int):
        return n
    s = str(e)
    k = s.find("[Errno ")
    if k >= 0:
        digits = s[k + 7:].split("]")[0]
        if digits.isdigit():
            return int(digits)
    return None


def os_text(e):
    n = _errno(e)
    if n in _ERRNO_TEXT:
        return _ERRNO_TEXT[n]
    s = str(e)
    return s[s.find("]") + 1:].strip() if s.startswith("[Errno") else s


def _dns_error(e):
    import socket

    return isinstance(e, getattr(socket, "gaierror", ())) or "addrinfo error" in str(e)


def classify(e, o, connecting=False):
    """(exit status, one line) for the exception that ended the command.
    connecting: it came from the first connect (a reset there is a TLS mismatch)."""
    where = "%s:%d" % (o["host"], o["port"])
    if isinstance(e, Failure):
        return e.args[0], e.args[1]
    if isinstance(e, ConnectRefused):
        rc = e.args[0]
        hint = {1: "the broker does not speak MQTT 3.1.1", 2: "try another client id (-i)",
                3: "the broker cannot take clients now: try again later",
                4: "check -u and -P", 5: "check -u and -P, and the broker's ACL"}.get(rc, "")
        return (rc if 1 <= rc <= 5 else EXIT_CONNECTION), "%s refused the connection: %s%s" % (
            where, str(e).replace("connection refused, ", ""), hint and "; " + hint)
    if isinstance(e, PacketTooLarge):
        return EXIT_PROTOCOL, "the broker sent a packet larger than --max-packet (%s); " \
            "raise --max-packet to receive it" % str(e)
    if isinstance(e, ProtocolError):
        return EXIT_PROTOCOL, "protocol violation by the broker at %s: %s; connection closed" % (where, e)
    if isinstance(e, StoreFull):
        return EXIT_STORE, "%s in %s: nothing accepted was lost; let the broker take them " \
            "(-c keeps trying) or raise --store-capacity/--store-size" % (e, o["store"] or "memory")
    if isinstance(e, MemoryError):
        return EXIT_CONNECTION, "out of memory (on MicroPython give it more: micropython " \
            "-X heapsize=1M ..., or lower --max-packet)"
    s = str(e)
    if "SUBACK 0x80" in s:
        return EXIT_SUBSCRIBE, "the broker refused the subscription to %s (SUBACK 0x80): " \
            "check the filter and what the broker allows this user" % " ".join(o["topics"])
    tls = o["tls"]
    if _dns_error(e):
        return EXIT_CONNECTION, "cannot find host %r: check -h (or the name server)" % o["host"]
    n = _errno(e)
    if tls and ("CERTIFICATE_VERIFY_FAILED" in s or "certificate" in s.lower()):
        if "mismatch" in s or ("does not match" in s and "not correctly signed" not in s):
            return EXIT_TLS, "TLS: the broker's certificate is not for host %r: connect with " \
                "the name it was issued for (-h), or skip the name check with --insecure" % o["host"]
        if "expired" in s:
            return EXIT_TLS, "TLS: the broker's certificate at %s has expired (or this " \
                "machine's clock is wrong)" % where
        return EXIT_TLS, "TLS: the broker's certificate at %s is not signed by %s: give the " \
            "CA that signed it" % (where, "--cafile " + o["cafile"] if o["cafile"] else "a CA in --capath")
    if n == errno.ECONNREFUSED:
        return EXIT_CONNECTION, "cannot connect to %s: connection refused (is the broker " \
            "running? check -h and -p)" % where
    if connecting and (n == errno.ETIMEDOUT or "timed out" in s):
        return EXIT_CONNECTION, "cannot connect to %s: no answer (check -h, -p and the network)" % where
    reset = n in (errno.ECONNRESET, EPIPE) or "closed by broker" in s or "EOF" in s
    if connecting and reset:
        if tls:
            return EXIT_TLS, "TLS handshake with %s failed: the connection was reset (a plain " \
                "MQTT port? drop --cafile, or use the broker's TLS port)" % where
        return EXIT_CONNECTION, "%s closed the connection before answering CONNECT (a TLS " \
            "port? add --cafile FILE; TLS is usually on 8883)" % where
    if tls and connecting and (isinstance(e, ValueError) or "TLS" in s or "SSL" in s or (n or 0) < 0):
        return EXIT_TLS, "TLS handshake with %s failed: %s" % (where, s.replace("TLS handshake failed: ", "").strip())
    if isinstance(e, (OSError, MQTTException)):
        if n is not None or isinstance(e, OSError):
            s = os_text(e)
            for lead in ("send failed: ", "receive failed: "):
                if str(e).startswith(lead):
                    s = lead[:-2] + ": " + os_text(e)
        if connecting:
            return EXIT_CONNECTION, "cannot connect to %s: %s" % (where, s)
        return EXIT_CONNECTION, "lost the connection to %s: %s" % (where, s)
    return EXIT_INTERNAL, "internal error: %s: %s (a bug: please report it with the -d output)" % (
        type(e).__name__, s)


def transient(e, o):
    """A failed connection attempt worth retrying under -c (not a refusal or a TLS problem)."""
    if isinstance(e, ConnectRefused):
        return e.args[0] == 3  # server unavailable
    code = classify(e, o)[0]
    return code == EXIT_CONNECTION


# ---- stdin without blocking the MQTT loop ------------------------------------------------


class Input:
    """stdin, read as it comes.  poll() says when something is there; read() then takes
    what is there without waiting for more.  The unix port's streams read until the
    buffer is full, so there it goes a byte at a time while poll says more is ready."""

    def __init__(self):
        self.obj = sys.stdin
        self.src = getattr(sys.stdin, "buffer", sys.stdin)
        self.eof = False
        if MICROPYTHON:
            self._one = bytearray(1)
            self._p = select.poll()
            self._p.register(sys.stdin, select.POLLIN)
        else:
            self.fd = sys.stdin.fileno()

    def read(self):
        if not MICROPYTHON:
            import os

            data = os.read(self.fd, 65536)
            if not data:
                self.eof = True
            return data
        out = bytearray()
        while len(out) < 4096:
            if not self.src.readinto(self._one):
                self.eof = True
                break
            out.append(self._one[0])
            for _ in self._p.ipoll(0):
                break
            else:
                break
        return bytes(out)

    def is_me(self, obj):
        return obj is self.obj or (not MICROPYTHON and obj == self.fd)


# ---- the command's loop -----------------------------------------------------------------


class Runner:
    """The client, its one loop (idle) and the lines it prints while it waits."""

    def __init__(self, o):
        self.o = o
        self.where = "%s:%d" % (o["host"], o["port"])
        self.attempts = 0
        self.fatal = None
        self.shown = None       # when the last status line went out (ticks), None: none yet
        self.store_full = False
        self.c = make_client(o, self)
        k = o["keepalive"]
        # wake up often enough to send PINGREQ in time (the broker allows 1.5 x keepalive)
        self.tick_ms = 1000 if not k else min(1000, k * 250)

    def say(self, line):
        if not self.o["quiet"]:
            sys.stderr.write("mqttc: " + line + "\n")

    def link_event(self, line):
        """The client's hook: the link went down or a connect attempt failed."""
        self.attempts += 1
        if self.o["debug"]:
            self.say(line)
        e = self.c.last_error
        if e is not None and not transient(e, self.o):
            self.fatal = e  # a refusal, TLS or protocol problem: retrying will not help

    def start(self):
        """Connect; under -c a failure that may pass leaves the client re-connecting."""
        c = self.c
        o = self.o
        try:
            try:
                c.connect(clean_session=not o["persist"])
            except (ValueError, OSError) as e:
                if not (MICROPYTHON and o["tls"]):
                    raise
                from .tls import name_mismatch, certificate_name

                if not name_mismatch(e):
                    raise
                # mbedTLS checks host names only: find the one the certificate holds
                o["ssl_params"]["server_hostname"] = certificate_name(o)
                c.connect(clean_session=not o["persist"])
        except Exception as e:
            if not (o["persist"] and transient(e, o)):
                raise Connecting(e)
            self.status()
            return False
        return True

    def status(self):
        """One line every few seconds while -c waits for the broker."""
        now = ticks_ms()
        if self.shown is not None and ticks_diff(now, self.shown) < STATUS_EVERY_MS:
            return
        self.shown = now
        c = self.c
        e = c.last_error
        why = classify(e, self.o, True)[1] if e is not None else "not connected"
        if why.startswith("cannot connect to "):
            why = why.split(": ", 1)[-1]
        why = why.split(" (")[0].split("; ")[0]  # the reason, not the advice
        line = "waiting for the broker at %s: attempt %d failed (%s); next try in %d s" % (
            self.where, max(self.attempts, 1), why, (c.supervisor.due(now) + 999) // 1000)
        n = c.in_flight()
        if n:
            if self.o["store"]:
                line += "; %d message%s safe in the store %s" % (n, "s" * (n != 1), self.o["store"])
            else:
                line += "; %d message%s waiting in memory (lost if mqttc stops: use --store)" % (
                    n, "s" * (n != 1))
        self.say(line)

    def idle(self, ms, inp=None):
        """Let up to ms pass running the client (acks, PINGREQ, ack deadlines, and under
        -c re-connecting); returns True as soon as stdin (inp) has something to read."""
        c = self.c
        start = ticks_ms()
        while True:
            if self.fatal is not None:
                e = self.fatal
                self.fatal = None
                raise e
            up = c.is_connected()
            if not up and self.o["persist"]:
                self.status()
            elif up and self.shown is not None:
                self.say("connected to %s" % self.where)
                self.shown = None
                self.attempts = 0
            left = ms - ticks_diff(ticks_ms(), start)
            t = max(0, min(left, self.tick_ms if up else 250))
            ready = False
            if inp is not None or up:
                p = select.poll()
                if inp is not None:
                    p.register(inp.obj, select.POLLIN)
                if up:
                    p.register(c.sock, select.POLLIN)
                for ev in p.poll(t):
                    if inp is not None and inp.is_me(ev[0]):
                        ready = True
            elif t:
                sleep_ms(t)
            c.check_msg()  # what arrived, timers; re-connects when due
            if ready or ms - ticks_diff(ticks_ms(), start) <= 0:
                return ready

    def wait_link(self):
        """Under -c: until connected (QoS 0 is never handed to a link that is down)."""
        while not self.c.is_connected():
            self.idle(250)

    def publish(self, topic, msg):
        o = self.o
        c = self.c
        qos = o["qos"]
        while True:
            if o["persist"] and not c.is_connected():
                if not qos:
                    self.wait_link()
                    continue
                if not c.room():
                    self.full("store full (%d messages)" % c.in_flight())
                    self.idle(250)
                    continue
            try:
                c.publish(topic, msg, o["retain"], qos)
            except StoreFull as e:
                if not (o["persist"] or c.is_connected()):
                    raise
                self.full(str(e))
                self.idle(250)
                continue
            except ValueError as e:
                if o["store"]:
                    raise Failure(EXIT_STORE, "%s: the store %s holds messages up to about 4 KB "
                                  "(topic and payload); send this one without --store" % (e, o["store"]))
                raise usage(str(e))
            if self.store_full:
                self.store_full = False
                self.say("store has room again")
            if c.is_connected():
                c.check_msg()  # take the acks that came meanwhile, also during a burst
            return

    def full(self, why):
        if not self.store_full:
            self.store_full = True
            self.say("%s in %s: waiting for the broker to take messages before accepting more "
                     "(--store-capacity and --store-size set the limits)" % (why, self.o["store"] or "memory"))

    def finish_pub(self):
        c = self.c
        o = self.o
        if o["persist"]:
            while True:
                done = c.flush(1000)  # keeps re-connecting until everything is acknowledged
                self.idle(0)  # the status line, or that the link is back
                if done:
                    break
        elif not c.flush():
            n = c.in_flight()
            raise Failure(EXIT_CONNECTION, "%s did not acknowledge %d message%s in time: nothing "
                          "more is sent (-c keeps trying, --store keeps them)" % (self.where, n, "s" * (n != 1)))
        if c.dropped:
            raise Failure(EXIT_CONNECTION, "%d QoS 0 message%s dropped while the connection to %s was "
                          "down (QoS 1 or 2 would have kept them)" % (c.dropped, "s were" if c.dropped != 1
                                                                      else " was", self.where))


class Connecting(Exception):
    """An exception from the first connection attempt (classify reads resets there as TLS)."""


def make_client(o, r):
    ssl = False
    params = {}
    if o["tls"]:
        ssl = True
        if o["cafile"]:
            params["cafile"] = o["cafile"]
        else:
            params["cadata"] = o["cadata"] if MICROPYTHON else o["cadata"].decode()  # PEM
        if o["cert"]:
            params["certfile"] = o["cert"]
            params["keyfile"] = o["key"]
        if o["insecure"] and not MICROPYTHON:
            from .tls import insecure_context

            ssl = insecure_context(o)
            params = {"server_hostname": None}
    o["ssl_params"] = params  # MicroPython: Runner.start may name the certificate's host
    trace = None
    if o["debug"]:
        trace = r.say
    mp = o["max_packet"] or default_max_packet()
    o["max_packet"] = mp
    try:
        c = MQTTClient(o["id"], o["host"], o["port"], o["user"], o["password"], o["keepalive"],
                       ssl=ssl, ssl_params=params, store=o["store"], trace=trace,
                       log=r.say,  # rare events: a message skipped or held
                       reconnect=o["persist"], window=o["window"], max_packet=mp,
                       ring_size=o["store_size"], ring_capacity=o["store_capacity"])
    except MemoryError:
        raise
    except Exception as e:
        if not o["store"]:
            raise
        s = os_text(e) if isinstance(e, OSError) else str(e)
        raise Failure(EXIT_STORE, "cannot use --store %s: %s (give a ring file made by mqttc or "
                      "MQTTClient(store=...), or a new path in an existing directory)" % (o["store"], s))
    c.trace = r.link_event  # link events only; packets go to the session's trace (-d)
    if o["will_topic"]:
        c.set_last_will(o["will_topic"], _b(o["will_payload"] or ""), o["will_retain"], o["will_qos"] or 0)
    return c


def default_max_packet():
    """CPython: any packet MQTT allows.  MicroPython: what the heap allows - a packet is
    buffered whole and its payload copied once more for the callback."""
    if not MICROPYTHON:
        return MAX_PACKET
    import gc

    gc.collect()
    return max(16384, (gc.mem_free() - 16384) // 2)


# ---- pub --------------------------------------------------------------------------------


def pub(o):
    r = Runner(o)
    c = r.c
    r.start()
    topic = _b(o["topics"][0]) if o["topics"] else None
    try:
        if o["lines"]:
            for line in lines(r):
                r.publish(topic, line)
        elif o["payload"] is not None or o["stdin"]:
            msg = o["payload"] if not o["stdin"] else read_all(r)
            for k in range(o["repeat"]):
                if k and o["repeat_delay"]:
                    r.idle(int(o["repeat_delay"] * 1000))
                r.publish(topic, msg)
        r.finish_pub()
    except KeyboardInterrupt:
        interrupted_pub(r)
        raise Quiet(EXIT_INTERRUPTED)
    c.disconnect()


def lines(r):
    """Each stdin line (without its newline), while the link is kept alive meanwhile."""
    inp = Input()
    buf = b""
    while True:
        k = buf.find(b"\n")
        if k >= 0:
            line = buf[:k]
            buf = buf[k + 1:]
            yield line
            continue
        if inp.eof:
            if buf:
                yield buf  # a last line without a newline
            return
        if r.idle(r.tick_ms, inp):
            buf += inp.read()


def read_all(r):
    inp = Input()
    parts = []
    while not inp.eof:
        if r.idle(r.tick_ms, inp):
            parts.append(inp.read())
    return b"".join(parts)


def interrupted_pub(r):
    """Ctrl-C: DISCONNECT, and say what is safe where and how to finish sending it."""
    o = r.o
    c = r.c
    n = c.in_flight()
    try:
        c.disconnect(0)
    except Exception:
        pass
    if not n:
        r.say("interrupted: every message so far was acknowledged")
    elif o["store"]:
        cmd = "%s pub --store %s -i %s -c -h %s -p %d" % (prog(), o["store"], o["id"], o["host"], o["port"])
        if o["user"] is not None:
            cmd += " -u %s -P PASSWORD" % o["user"]
        if o["cafile"]:
            cmd += " --cafile %s" % o["cafile"]
        r.say("interrupted: %d message%s safe in the store %s; finish sending %s with: %s" % (
            n, "s are" if n != 1 else " is", o["store"], "them" if n != 1 else "it", cmd))
    else:
        r.say("interrupted: %d message%s not acknowledged by the broker %s lost (use --store "
              "PATH to keep messages across a stop)" % (n, "s" * (n != 1), "were" if n != 1 else "was"))


def prog():
    a = sys.argv[0] if sys.argv else "mqttc"
    if a.endswith("/mqttc") or a == "mqttc":
        return "mqttc"
    exe = getattr(sys, "executable", "") or ("micropython" if MICROPYTHON else "python3")
    return "%s %s" % (exe.rsplit("/", 1)[-1], a)


# ---- sub --------------------------------------------------------------------------------


def sub(o):
    r = Runner(o)
    c = r.c
    out = getattr(sys.stdout, "buffer", sys.stdout)
    count = o["count"]
    seen = [0]
    fmt = o["format"]
    if fmt is not None:
        from .output import formatted

    def on_msg(topic, msg, retained, qos, dup):
        if retained and o["no_retained"]:
            return
        for f in o["filter_out"]:
            if matches(f, topic):
                return
        try:
            if fmt is not None:
                out.write(formatted(fmt, topic, msg, qos, retained))
            elif o["verbose"]:
                out.write(topic)
                out.write(b" ")
                out.write(msg)
            else:
                out.write(msg)
            if not o["no_eol"]:
                out.write(b"\n")
            out.flush()
        except OSError:
            raise Quiet(0)  # stdout closed (`| head`): stop as mosquitto_sub does
        seen[0] += 1
        if count and seen[0] >= count:
            c.deliver = False  # hold back anything further: it stays with the broker

    c.set_callback(on_msg, True)
    if o["exit_after_sub"]:
        c.deliver = False  # -E prints nothing: it only subscribes
    start = ticks_ms()
    wait_ms = o["wait"] * 1000
    done_sub = False
    try:
        if r.start():
            done_sub = subscribe(r)
        else:
            c.subscribe([(t, o["qos"]) for t in o["topics"]])  # sent after the CONNACK
        while not (count and seen[0] >= count):
            if not done_sub and c.is_connected():
                done_sub = subscribed(r)  # the client subscribed as it re-connected
            if done_sub and o["exit_after_sub"]:
                break
            t = 1000
            if wait_ms:
                t = wait_ms - ticks_diff(ticks_ms(), start)
                if t <= 0:
                    try:
                        c.disconnect(1000)
                    except Exception:
                        pass
                    raise Failure(EXIT_TIMEOUT, "timed out after %d s" % o["wait"])
            r.idle(min(t, 1000))
        c.flush()  # complete the QoS 2 flow of the last message (PUBCOMP sent)
    except KeyboardInterrupt:
        try:
            c.disconnect(0)
        except Exception:
            pass
        raise Quiet(EXIT_INTERRUPTED)
    except Quiet:
        try:
            c.disconnect(0)
        except Exception:
            pass
        raise
    c.disconnect()


def subscribe(r):
    """Subscribe; False when the link dropped meanwhile under -c (the client subscribes
    again after the next CONNACK)."""
    if r.c.subscribe([(t, r.o["qos"]) for t in r.o["topics"]]) is None:
        return False
    return subscribed(r)


def subscribed(r):
    """The subscriptions are in place: now the -U unsubscriptions."""
    if r.o["unsub"]:
        r.c.unsubscribe(list(r.o["unsub"]))
    return True


def matches(f, topic):
    """Does topic (bytes) match filter f (str), wildcards included [MQTT-4.7]?"""
    fl = f.split("/")
    tl = topic.decode().split("/")
    if tl[0].startswith("$") and fl[0] in ("#", "+"):
        return False  # [MQTT-4.7.2-1]
    for i, level in enumerate(fl):
        if level == "#":
            return True
        if i >= len(tl) or (level != "+" and level != tl[i]):
            return False
    return len(fl) == len(tl)


# ---- main -------------------------------------------------------------------------------


def main(argv):
    o = None
    try:
        o = parse(argv)
        if o["cmd"] == "--help":
            from .help import HELP

            print(HELP)
            return 0
        if o["cmd"] == "--version":
            impl = sys.implementation
            print("mqttc %s (%s %s)" % (__version__, "MicroPython" if MICROPYTHON else "CPython",
                                        ".".join(str(x) for x in impl.version[:3])))
            return 0
        if o["cmd"] == "pub":
            pub(o)
        else:
            sub(o)
        return 0
    except Quiet as e:
        return e.args[0]
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as e:
        connecting = isinstance(e, Connecting)
        if connecting:
            e = e.args[0]
        if o is None or "host" not in o:
            o = {"host": "?", "port": 0, "tls": False, "topics": [], "store": None, "cafile": None,
                 "quiet": False, "debug": False}
        code, line = classify(e, o, connecting)
        if code == EXIT_INTERNAL and o.get("debug"):
            if MICROPYTHON:
                sys.print_exception(e)
            else:
                import traceback

                traceback.print_exception(type(e), e, e.__traceback__)
        if not o.get("quiet"):
            sys.stderr.write("mqttc: " + line + "\n")
        return code


def run():
    """The `mqttc` console script (pyproject.toml)."""
    try:
        code = main(sys.argv[1:])
    except KeyboardInterrupt:  # a second Ctrl-C while finishing
        code = EXIT_INTERRUPTED
    try:
        sys.stdout.flush()
    except Exception:
        if not MICROPYTHON:
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    sys.exit(code)


if __name__ == "__main__":
    run()
