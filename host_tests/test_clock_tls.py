"""TLS in the library and the firmware: the clock, and the certificates the board file names.

The clock before TLS.  Since MicroPython 1.22 an ESP32 checks certificate dates against its
RTC, which reads 2000-01-01 after power-on, so a verified TLS connect fails until the clock is
set.  On the host:
  - the library: a broker certificate whose validity starts later than the clock fails with
    one TLSError that names the clock (both runtimes; what an ESP32 with an unset clock sees);
  - the firmware: the host board layer starts with its clock at 2000-01-01 (--clock); with TLS
    it sets the clock by NTP (a fake SNTP server here) before connecting, says once and clearly
    why it does not connect while no NTP server answers, keeps the readings in the ring
    meanwhile, and keeps the clock across deep sleep.
Certificates: a CA, client certificate or key file the board file names but the device lacks
stops the app with an error naming the key; TLS without a CA runs only with
mqtt.tls.insecure: true, and says so."""
import json
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import ok, MICROPYTHON
from test_firmware import EXIT_DEEPSLEEP, TLSPeer, fw, mpy_tree, pki, stop, telemetry, wait_until  # noqa: F401


# ---- the library: a certificate that is not valid yet -------------------------------------------


@pytest.fixture(scope="module")
def future_cert(pki):
    """A server certificate for localhost from the test CA, valid only from 2099 on."""
    d = pki
    (d / "ca.cnf").write_text("[ca]\ndefault_ca = ca\n[ca]\ndatabase = index.txt\nserial = serial.txt\n"
                              "new_certs_dir = .\ndefault_md = sha256\npolicy = any\n"
                              "copy_extensions = copy\n[any]\ncommonName = supplied\n")
    (d / "index.txt").write_text("")
    (d / "serial.txt").write_text("1000\n")
    subprocess.run(["openssl", "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key",
                    "-in", "server.csr", "-out", "future.crt", "-startdate", "20990101000000Z",
                    "-enddate", "20991231000000Z", "-extfile", "san.ext", "-notext"],
                   cwd=d, check=True, capture_output=True)
    (d / "future.crt").chmod(0o644)
    return d / "future.crt"


FUTURE_CLIENT = """
import sys, time
from mqtt import MQTTClient, TLSError
c = MQTTClient("future", "127.0.0.1", int(sys.argv[2]), ssl=True,
               ssl_params={"cafile": sys.argv[1], "server_hostname": "localhost"}, timeout_ms=5000)
try:
    c.connect()
    print("CONNECTED")
except TLSError as e:
    print("%04d-%02d-%02d" % time.gmtime()[:3])
    print(isinstance(e, OSError), e)
"""


def test_a_certificate_valid_only_later_fails_with_a_message_about_the_clock(rt, make_broker, pki, future_cert):
    rt.heap = "256K"
    b = make_broker(conf="cafile {0}/ca.crt\ncertfile {1}\nkeyfile {0}/server.key".format(pki, future_cert))
    day, msg = ok(rt.run(FUTURE_CLIENT, args=[pki / "ca.crt", b.port])).splitlines()
    assert msg.startswith("True TLS: the broker's certificate is not valid yet by this device's clock (%s " % day)
    assert msg.endswith(" UTC): is the clock set (NTP)?")


# ---- the firmware: NTP before TLS -------------------------------------------------------------------


class FakeNTP:
    """An SNTP server on a free loopback UDP port that answers (with the host's time) only
    while .answer is True; counts the queries."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.answer = False
        self.queries = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.running:
            try:
                data, addr = self.sock.recvfrom(512)
            except OSError:
                continue
            self.queries += 1
            if self.answer and len(data) >= 48 and data[0] & 7 == 3:
                r = bytearray(48)
                r[0] = 0x24  # LI 0, version 4, mode 4 (server)
                r[1] = 2     # stratum
                r[24:32] = data[40:48]  # originate = the client's transmit
                now = time.time() + 2208988800
                struct.pack_into("!II", r, 40, int(now), int((now % 1) * 2 ** 32))
                self.sock.sendto(bytes(r), addr)

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def ntp():
    s = FakeNTP()
    yield s
    s.close()


@pytest.fixture
def tls_broker(make_broker, pki):
    return make_broker(conf="cafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key".format(pki))


def tls_args(pki, ntp, *extra):
    return ["--period", "0.3", "--clock", "2000-01-01",
            "--set", "mqtt.tls.ca=%s/ca.crt" % pki, "--set", "mqtt.tls.server_hostname=localhost",
            "--set", 'time.ntp_servers=["127.0.0.1:%d"]' % ntp.port, "--set", "time.timeout_s=1",
            "--set", "time.retry_s=1", *extra]


def test_tls_waits_for_the_clock_set_by_ntp_and_says_so_once(fw, tls_broker, pki, ntp):
    fw.heap = "384K"  # the unix port's mbedTLS takes its record buffers from the MicroPython heap
    fw.binary = MICROPYTHON  # TLS: the 64-bit port (the 32-bit one is built without ssl)
    peer = TLSPeer(tls_broker, pki / "ca.crt")
    try:
        prefix = fw.prefix()
        peer.subscribe(prefix + "/#", 2)
        p = fw.spawn(tls_broker.port, "boards/unix.json", *tls_args(pki, ntp))
        wait_until(lambda: ntp.queries >= 3, 20, "NTP queries", p)
        assert not telemetry(peer, prefix)  # no connection without the clock
        ntp.answer = True
        # the readings taken while waiting for the clock (>= 12 in those seconds) went to the
        # ring, and out once connected
        wait_until(lambda: set(range(12)) <= {b["seq"] for s, b, q in telemetry(peer, prefix)}, 20,
                   "the readings taken while waiting for the clock", p)
        err = stop(p)
        errors = [line for line in err.splitlines() if "clock not set" in line]
        assert len(errors) == 1, err
        assert "time: error: clock not set (it reads 2000-01-01 " in errors[0]
        assert "TLS cannot check the broker's certificate, so the device does not connect" in errors[0]
        assert "127.0.0.1:%d: no answer within 1000 ms" % ntp.port in errors[0]
        assert err.count("time: clock set by NTP from 127.0.0.1:%d: " % ntp.port) == 1, err
    finally:
        peer.close()


def test_the_clock_set_by_ntp_survives_deep_sleep(fw, tls_broker, pki, ntp):
    """The RTC keeps running in deep sleep: the wake-up connects without asking NTP again."""
    fw.heap = "384K"
    fw.binary = MICROPYTHON  # TLS: the 64-bit port (the 32-bit one is built without ssl)
    ntp.answer = True
    args = tls_args(pki, ntp, "--set", "power.mode=deep-sleep", "--set", "power.wake_period_s=0.5",
                    "--set", "power.flush_budget_ms=3000")
    code, err = fw.run(tls_broker.port, "boards/unix.json", *args, timeout=30)
    assert code == EXIT_DEEPSLEEP and "time: clock set by NTP" in err, err
    assert ntp.queries == 1
    code, err = fw.run(tls_broker.port, "boards/unix.json", *args, timeout=30)
    assert code == EXIT_DEEPSLEEP, err
    assert "time: clock set" not in err and "clock not set" not in err and "mqtt: connected" in err, err
    assert ntp.queries == 1
    # a power cycle (the RTC is lost, and it is no wake-up) asks again
    for ext in (".clock", ".wake"):
        (fw.ring.parent / (fw.ring.name + ext)).unlink()
    code, err = fw.run(tls_broker.port, "boards/unix.json", *args, timeout=30)
    assert code == EXIT_DEEPSLEEP and "time: clock set by NTP" in err and ntp.queries == 2, err


def test_without_tls_the_clock_is_not_needed(fw, broker, ntp):
    code, err = fw.run(broker.port, "boards/unix.json", "--clock", "2000-01-01", "--set", "power.mode=deep-sleep",
                       "--set", "power.wake_period_s=0.5", "--set", 'time.ntp_servers=["127.0.0.1:%d"]' % ntp.port)
    assert code == EXIT_DEEPSLEEP and "mqtt: connected" in err and ntp.queries == 0, err


# ---- the firmware: certificates ----------------------------------------------------------------


@pytest.fixture(scope="module")
def client_pem(pki):
    """A client certificate from the test CA with its key in the same file."""
    d = pki
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out",
                    "client.csr", "-subj", "/CN=sensor"], cwd=d, check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", "client.crt", "-days", "2"], cwd=d, check=True, capture_output=True)
    pem = d / "client.pem"
    pem.write_bytes((d / "client.crt").read_bytes() + (d / "client.key").read_bytes())
    pem.chmod(0o644)
    return pem


@pytest.mark.parametrize("key", ["ca", "cert", "key"])
def test_a_certificate_file_the_board_names_but_lacks_stops_the_app(fw, broker, pki, key):
    sets = {"ca": "%s/ca.crt" % pki, key: "/nonexistent/%s.pem" % key}
    if key == "key":
        sets["cert"] = "%s/ca.crt" % pki
    args = []
    for k, v in sets.items():
        args += ["--set", "mqtt.tls.%s=%s" % (k, v)]
    code, err = fw.run(broker.port, "boards/unix.json", *args)
    assert code == 2, err
    assert "mqtt.tls.%s: no such file: /nonexistent/%s.pem" % (key, key) in err


def test_insecure_tls_with_a_client_certificate_holding_its_key(fw, make_broker, pki, client_pem):
    """Against a broker that admits only clients with a certificate from its CA; the device does
    not check the broker (mqtt.tls.insecure: true) and says so once."""
    fw.heap = "384K"
    fw.binary = MICROPYTHON  # TLS: the 64-bit port (the 32-bit one is built without ssl)
    b = make_broker(conf="cafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\n"
                    "require_certificate true".format(pki))
    code, err = fw.run(b.port, "boards/unix.json", "--set", "mqtt.tls.insecure=true", "--set",
                       "mqtt.tls.cert=%s" % client_pem, "--set", "power.mode=deep-sleep", "--set",
                       "power.wake_period_s=0.5", timeout=30)
    assert code == EXIT_DEEPSLEEP and "mqtt: connected" in err and "all sent" in err, err
    assert err.count("TLS without checking the broker's certificate (mqtt.tls.insecure)") == 1, err
