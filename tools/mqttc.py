# mqttc: a mosquitto_pub / mosquitto_sub-style command-line client on top of
# lib/mqtt.  Runs as `python3 tools/mqttc.py ...` and `micropython tools/mqttc.py ...`
# (no argparse: the same file runs on the MicroPython unix port).
import sys


def _add_lib_path():
    here = sys.argv[0] if sys.argv and sys.argv[0] else ""
    try:
        here = __file__
    except NameError:
        pass
    d = here.rsplit("/", 1)[0] if "/" in here else "."
    root = d.rsplit("/", 1)[0] if "/" in d else (".." if d == "." else ".")
    sys.path.insert(0, root + "/lib")
    if sys.implementation.name == "micropython" and _mpy_fresh(root):
        sys.path.insert(0, root + "/build/mpy")  # precompiled by `make`: less RAM


def _mpy_fresh(root):
    """True if build/mpy holds an up-to-date .mpy for every lib/mqtt module."""
    import os

    try:
        for name in os.listdir(root + "/lib/mqtt"):
            if name.endswith(".py"):
                if os.stat(root + "/build/mpy/mqtt/" + name[:-3] + ".mpy")[8] < \
                        os.stat(root + "/lib/mqtt/" + name)[8]:
                    return False
        return True
    except OSError:
        return False


_add_lib_path()

from mqtt import MQTTClient, MQTTException, ConnectRefused, ProtocolError, StoreFull  # noqa: E402
from mqtt.backoff import Backoff  # noqa: E402
from mqtt.compat import random_hex, ticks_ms, ticks_diff, sleep_ms  # noqa: E402

USAGE = """usage: mqttc pub -t TOPIC (-m MSG | -l | -n) [-q 0|1|2] [-r] [--repeat N] [common]
       mqttc sub -t FILTER [-t FILTER ...] [-q 0|1|2] [-C COUNT] [-W SECONDS] [-v] [common]
common: -h HOST (127.0.0.1) -p PORT (1883) -i CLIENT_ID -k KEEPALIVE (60)
        -c (clean_session=0: keep the session, reconnect and resend on loss)
        -u USER -P PASSWORD --cafile PEM --will-topic T --will-payload P
        --will-qos Q --will-retain --store PATH -d (log packets to stderr)
pub -l: each stdin line is one message (an empty line is a zero-length message);
pub --store PATH with no -m/-l/-n: complete what the store holds, then exit.
exit status: 0 success, 1 error, 2 usage error, 27 sub -W time-out."""

EXIT_TIMEOUT = 27  # as mosquitto_sub -W


class UsageError(Exception):
    pass


class Done(Exception):
    pass


class WaitExpired(Exception):
    pass


def err(msg):
    sys.stderr.write("mqttc: " + msg + "\n")


def _int(opt, v, lo, hi):
    try:
        n = int(v)
    except ValueError:
        raise UsageError("%s needs a number, got %r" % (opt, v))
    if not lo <= n <= hi:
        raise UsageError("%s must be %d..%d" % (opt, lo, hi))
    return n


def parse(argv):
    if not argv or argv[0] in ("--help", "help"):
        raise UsageError("")
    cmd = argv[0]
    if cmd not in ("pub", "sub"):
        raise UsageError("first argument must be pub or sub, not %r" % cmd)
    o = {"cmd": cmd, "topics": [], "msg": None, "lines": False, "null": False, "qos": 0,
         "retain": False, "repeat": 1, "count": 0, "wait": 0, "verbose": False,
         "host": "127.0.0.1", "port": 1883, "id": None, "keepalive": 60, "persist": False,
         "user": None, "password": None, "cafile": None, "will_topic": None,
         "will_payload": "", "will_qos": 0, "will_retain": False, "store": None, "debug": False}
    flags = {"-l": "lines", "-n": "null", "-r": "retain", "-v": "verbose", "-c": "persist",
             "--will-retain": "will_retain", "-d": "debug"}
    values = {"-m": "msg", "-h": "host", "-i": "id", "-u": "user", "-P": "password",
              "--cafile": "cafile", "--will-topic": "will_topic",
              "--will-payload": "will_payload", "--store": "store"}
    numbers = {"-q": ("qos", 0, 2), "--repeat": ("repeat", 1, 1 << 30),
               "-C": ("count", 1, 1 << 30), "-W": ("wait", 1, 1 << 30),
               "-p": ("port", 1, 65535), "-k": ("keepalive", 0, 65535),
               "--will-qos": ("will_qos", 0, 2)}
    pub_only = ("-m", "-l", "-n", "-r", "--repeat")
    sub_only = ("-C", "-W", "-v")
    i = 1
    while i < len(argv):
        a = argv[i]
        if (cmd == "sub" and a in pub_only) or (cmd == "pub" and a in sub_only):
            raise UsageError("%s is not an option of %s" % (a, cmd))
        if a == "--help":
            raise UsageError("")
        if a in flags:
            o[flags[a]] = True
            i += 1
            continue
        if a not in values and a not in numbers and a != "-t":
            raise UsageError("unknown option %r" % a)
        if i + 1 >= len(argv):
            raise UsageError("%s needs a value" % a)
        v = argv[i + 1]
        if a == "-t":
            o["topics"].append(v)
        elif a in values:
            o[values[a]] = v
        else:
            key, lo, hi = numbers[a]
            o[key] = _int(a, v, lo, hi)
        i += 2
    if not o["topics"] and not (cmd == "pub" and o["store"]):
        raise UsageError("-t is required")
    if cmd == "pub":
        if len(o["topics"]) > 1:
            raise UsageError("pub takes one -t")
        given = (o["msg"] is not None) + o["lines"] + o["null"]
        if given > 1:
            raise UsageError("give only one of -m, -l, -n")
        if not given and not o["store"]:
            raise UsageError("one of -m, -l or -n is required")
        if given and not o["topics"]:
            raise UsageError("-t is required")
    if o["persist"] and not o["id"]:
        raise UsageError("-c needs a client id (-i)")
    if o["id"] is None:
        o["id"] = "mqttc-" + random_hex(6)
    return o


def make_client(o):
    ssl_params = {}
    if o["cafile"]:
        ssl_params = {"cafile": o["cafile"]}
    trace = None
    if o["debug"]:
        trace = err
    # -c: the client re-connects by itself (back-off reset after each CONNACK),
    # resends per §4.4 and restores subscriptions the broker lost.
    c = MQTTClient(o["id"], o["host"], o["port"], o["user"], o["password"], o["keepalive"],
                   ssl=bool(o["cafile"]), ssl_params=ssl_params, store=o["store"], trace=trace,
                   reconnect=o["persist"])
    if o["will_topic"]:
        c.set_last_will(o["will_topic"], o["will_payload"], o["will_retain"], o["will_qos"])
    return c


class Runner:
    """The first connection (retried with back-off under -c); later losses are
    handled inside the client when -c is given, and end the command otherwise."""

    def __init__(self, o):
        self.o = o
        self.c = make_client(o)
        self.backoff = Backoff()

    def connect(self):
        o = self.o
        while True:
            try:
                self.c.connect(clean_session=not o["persist"])
                break
            except (ConnectRefused, ProtocolError):
                raise
            except (OSError, MQTTException) as e:
                if not o["persist"]:
                    raise
                if o["store"] and o["cmd"] == "pub":
                    # the ring accepts messages offline; the client keeps re-connecting
                    if o["debug"]:
                        err("connect failed (%s); publishing into the store meanwhile" % e)
                    return
                d = self.backoff.next_ms()
                if o["debug"]:
                    err("connect failed (%s); retrying in %d ms" % (e, d))
                sleep_ms(d)
        if o["cmd"] == "sub":
            self.subscribe()

    def subscribe(self):
        q = self.o["qos"]
        while True:
            granted = self.c.subscribe([(t, q) for t in self.o["topics"]])
            if granted is not None:
                return
            self.c.wait_msg(1000)  # -c and the link dropped: restored on reconnect

    def run(self, step):
        """Call step() until it raises Done."""
        while True:
            step()


def _stdin_lines():
    src = getattr(sys.stdin, "buffer", sys.stdin)
    while True:
        line = src.readline()
        if not line:
            return
        if isinstance(line, str):
            line = line.encode()
        if line.endswith(b"\n"):
            line = line[:-1]
        yield line


def pub(o):
    r = Runner(o)
    c = r.c
    r.connect()
    qos = o["qos"]
    retain = o["retain"]
    topic = o["topics"][0] if o["topics"] else None
    if o["lines"]:
        source = _stdin_lines()
    elif o["null"]:
        source = (b"" for _ in range(o["repeat"]))
    elif o["msg"] is not None:
        m = o["msg"].encode()
        source = (m for _ in range(o["repeat"]))
    else:
        source = iter(())  # --store resume only
    state = {"msg": None}

    def step():
        while True:
            if state["msg"] is None:
                try:
                    state["msg"] = next(source)
                except StopIteration:
                    break
            try:
                c.publish(topic, state["msg"], retain, qos)
            except StoreFull:
                if not o["persist"]:
                    raise
                c.wait_msg(200)  # -c: the link is down and the store full; keep trying
                continue
            state["msg"] = None  # accepted
        if o["persist"]:
            while not c.flush(1000):  # keeps re-connecting until everything is acked
                pass
        elif not c.flush():
            raise MQTTException("timed out waiting for acknowledgements (%d in flight)" % c.in_flight())
        if c.dropped:
            raise MQTTException("%d QoS 0 messages dropped while disconnected" % c.dropped)
        raise Done

    try:
        r.run(step)
    except Done:
        pass
    c.disconnect()


def sub(o):
    r = Runner(o)
    c = r.c
    out = getattr(sys.stdout, "buffer", sys.stdout)
    verbose = o["verbose"]
    count = o["count"]
    seen = [0]

    def on_msg(topic, msg):
        if verbose:
            out.write(topic + b" " + msg + b"\n")
        else:
            out.write(msg + b"\n")
        try:
            out.flush()
        except AttributeError:
            pass
        seen[0] += 1
        if count and seen[0] >= count:
            c.deliver = False  # hold back anything further: it stays with the broker

    c.set_callback(on_msg)
    start = ticks_ms()
    wait_ms = o["wait"] * 1000

    def step():
        while not (count and seen[0] >= count):
            t = 1000
            if wait_ms:
                t = wait_ms - ticks_diff(ticks_ms(), start)
                if t <= 0:
                    raise WaitExpired()
            c.wait_msg(min(t, 1000))
        # complete the QoS 2 flow of the last message (PUBCOMP sent)
        c.flush()
        raise Done

    r.connect()
    try:
        r.run(step)
    except Done:
        pass
    c.disconnect()


def main(argv):
    try:
        o = parse(argv)
    except UsageError as e:
        if str(e):
            err(str(e))
        sys.stderr.write(USAGE + "\n")
        return 2
    try:
        if o["cmd"] == "pub":
            pub(o)
        else:
            sub(o)
        return 0
    except WaitExpired:
        err("timed out after %d s" % o["wait"])
        return EXIT_TIMEOUT
    except ConnectRefused as e:
        err(str(e))
        return 1
    except ProtocolError as e:
        err("protocol violation by the broker: %s" % e)
        return 1
    except ImportError as e:
        err("--store is not available: %s" % e)
        return 1
    except (MQTTException, OSError, StoreFull) as e:
        err("%s (%s:%d)" % (e, o["host"], o["port"]))
        return 1
    except KeyboardInterrupt:
        err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
