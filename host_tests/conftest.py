"""Shared fixtures: a real Mosquitto on a free loopback port, and the two runtimes
(CPython and the MicroPython unix port) that every behaviour test runs under."""
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from brokerctl import Mosquitto, free_port, wait_port  # noqa: E402,F401
LIB = ROOT / "lib"
MQTTC = ROOT / "tools" / "mqttc.py"
MICROPYTHON = Path(os.environ.get("MICROPYTHON") or ROOT / "build" / "bin" / "micropython")
MICROPYTHON32 = Path(os.environ.get("MICROPYTHON32") or ROOT / "build" / "bin" / "micropython32")
UMQTT_DIR = Path(os.environ.get("UMQTT_DIR") or ROOT / "build" / "umqtt")
HEAP = "128K"  # an ESP32-like heap budget
MPY_DIR = ROOT / "build" / "mpy"  # lib/ precompiled, as deployed to a device


@pytest.fixture(scope="session", autouse=True)
def _mpy_build():
    """The unix port runs lib/ precompiled (tools/build_mpy.py), as a device does:
    compiling the sources inside a 128K heap would measure the compiler."""
    sys.path.insert(0, str(ROOT / "tools"))
    import build_mpy

    build_mpy.build()


@pytest.fixture
def make_broker(tmp_path):
    made = []

    def make(**kw):
        b = Mosquitto(tmp_path / ("broker%d" % len(made)), **kw)
        made.append(b)
        return b.start()

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def broker(make_broker):
    return make_broker()


@pytest.fixture
def auth_broker(make_broker, tmp_path):
    """A Mosquitto that only admits user 'alice' with password 's3cret'."""
    pw = tmp_path / "passwd"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "alice", "s3cret"], check=True)
    pw.chmod(0o644)  # readable for mosquitto when it drops privileges
    return make_broker(conf="allow_anonymous false\npassword_file %s" % pw)


# ---- runtimes -------------------------------------------------------------------


class Runtime:
    """Runs library code in a child process of one runtime."""

    def __init__(self, name, tmp_path, heap=HEAP):
        self.name = name
        self.tmp = tmp_path
        self.heap = heap

    def argv(self, script, *args):
        if self.name == "micropython":
            heap = self.heap
            if script == MQTTC and heap == HEAP:
                heap = "256K"  # mqttc is a host tool, not device code: no ESP32 budget for it
            return [str(MICROPYTHON), "-X", "heapsize=" + heap, str(script), *map(str, args)]
        return [sys.executable, "-u", str(script), *map(str, args)]

    def env(self, umqtt=False):
        env = dict(os.environ)
        paths = [str(LIB)] + ([str(UMQTT_DIR)] if umqtt else [])
        if self.name == "micropython":
            # MICROPYPATH replaces the path: keep .frozen (ssl, asyncio)
            env["MICROPYPATH"] = ":".join([".frozen", str(MPY_DIR)] + paths)
        else:
            env["PYTHONPATH"] = ":".join(paths)
        return env

    def script(self, code):
        fd, path = tempfile.mkstemp(suffix=".py", dir=self.tmp)
        with os.fdopen(fd, "w") as f:
            f.write(code)
        return path

    def spawn(self, code=None, args=(), script=None, umqtt=False, stdin=subprocess.DEVNULL):
        path = script or self.script(code)
        return subprocess.Popen(self.argv(path, *args), cwd=ROOT, env=self.env(umqtt),
                                stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, code=None, args=(), script=None, umqtt=False, timeout=30, input=None):
        path = script or self.script(code)
        r = subprocess.run(self.argv(path, *args), cwd=ROOT, env=self.env(umqtt), input=input,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        return r

    def mqttc(self, *args, timeout=30, input=None):
        return subprocess.run(self.argv(MQTTC, *args), cwd=ROOT, input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)

    def mqttc_spawn(self, *args, stdin=subprocess.DEVNULL, sigint=False):
        """sigint=True: the child takes SIGINT as Ctrl-C even when this process was started
        with it ignored (a background job in a non-interactive shell)."""
        return subprocess.Popen(self.argv(MQTTC, *args), cwd=ROOT, stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=_default_sigint if sigint else None)


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory):
    """A throw-away CA and a broker certificate it signed, for localhost and 127.0.0.1 (as
    a DNS name too: mbedTLS matches host names against DNS names only), and an unrelated CA."""
    d = tmp_path_factory.mktemp("tls_pki")

    def sh(*args):
        subprocess.run(args, cwd=d, check=True, capture_output=True)

    for ca in ("ca", "other"):
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
           "-keyout", ca + ".key", "-out", ca + ".crt", "-subj", "/CN=test %s" % ca)
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
       "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
       "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    for f in d.iterdir():
        f.chmod(0o644)
    return d


def _default_sigint():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


RUNTIMES = ["cpython", "micropython"]


@pytest.fixture(params=RUNTIMES)
def rt(request, tmp_path):
    if request.param == "micropython" and not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port missing at %s: run `make setup`" % MICROPYTHON)
    return Runtime(request.param, tmp_path)


def ok(r):
    """Assert a finished child exited 0, showing its output otherwise."""
    assert r.returncode == 0, "exit %s\nstdout:\n%s\nstderr:\n%s" % (
        r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"))
    return r.stdout.decode()


# ---- an independent peer: paho-mqtt -----------------------------------------------


class Peer:
    """A paho-mqtt client in the test process, to publish to or observe our client."""

    def __init__(self, broker, client_id="", clean=True):
        import paho.mqtt.client as paho

        self.messages = []
        self.cond = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean, protocol=paho.MQTTv311)
        self.c.max_inflight_messages_set(20)
        self.c.on_message = self._on_message
        self._connected = threading.Event()
        self.c.on_connect = lambda *a: self._connected.set()
        self.c.connect(broker.host, broker.port, keepalive=30)
        self.c.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("paho peer could not connect")

    def _on_message(self, client, userdata, m):
        with self.cond:
            self.messages.append((m.topic, m.payload, m.qos, m.retain))
            self.cond.notify_all()

    def subscribe(self, topic, qos):
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos)
        assert done.wait(10), "no SUBACK"

    def publish(self, topic, payload, qos=0, retain=False):
        info = self.c.publish(topic, payload, qos, retain)
        info.wait_for_publish(10)

    def wait_for(self, n, timeout=20):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def peer_factory():
    made = []

    def make(broker, **kw):
        p = Peer(broker, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def have(cmd):
    return shutil.which(cmd) is not None


# ---- mpremote's mip, installing into a directory --------------------------------------------


def mip_install(package_json, target):
    """Install package_json (a local file) with mpremote's own mip code into the directory
    target, which stands in for a device's file system (as `mip install /path/package.json`)."""
    mip = pytest.importorskip("mpremote.mip")

    class Transport:  # the part of mpremote's transport that mip uses
        def fs_exists(self, path):
            return os.path.exists(path)

        def fs_mkdir(self, path):
            os.mkdir(path)

        def fs_writefile(self, dest, data, progress_callback=None):
            Path(dest).write_bytes(data)

    with contextlib.redirect_stdout(io.StringIO()):
        mip._install_package(Transport(), str(package_json), "https://unused.invalid",
                             str(target), None, True)
