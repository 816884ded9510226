"""What the ESP32 port does differently, shown on the host (both runtimes): TCP_QUICKACK only
where it exists (lwIP prints a warning for every unknown socket option instead of raising),
the TLS set-up of lib/mqtt/tls.py (client certificate with or without a separate key file, one
clear error for a missing or bad certificate or key, a warning for TLS without a CA), and
micropython-lib's ds18x20, whose read_temp raises on a CRC error instead of returning None.
The tick wrap has its own file (test_tick_wrap.py)."""
import subprocess

import pytest

from conftest import ok

# Makes `import sys` answer for an ESP32 in the modules imported after it (compat.py decides
# at import time).  The unix port cannot assign sys.platform, but it looks sys.modules up
# before its built-in modules, so a stand-in there is what `import sys` returns.
AS_ESP32 = """
import sys
class _Sys:
    pass
_s = _Sys()
for _k in dir(sys):
    if not _k.startswith("__"):
        setattr(_s, _k, getattr(sys, _k))
_s.platform = "esp32"
sys.modules["sys"] = _s
"""

QUICKACK = """
from mqtt import compat
class Sock:
    calls = []
    def setsockopt(self, level, opt, value):
        self.calls.append((level, opt, value))
s = Sock()
for _ in range(3):
    compat.ack_now(s)
print(sorted(set(s.calls)), len(s.calls))
"""


def test_tcp_quickack_is_never_set_off_linux(rt):
    """On ESP32 lwIP answers an unknown option with a printed warning, not an error: calling
    setsockopt(TCP_QUICKACK) there would print it after every burst."""
    assert ok(rt.run(AS_ESP32 + QUICKACK)).split() == ["[]", "0"]


def test_tcp_quickack_is_set_on_linux(rt):
    assert ok(rt.run(QUICKACK)).strip() == "[(6, 12, 1)] 3"


# ---- TLS: certificates ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost signed by it, a client certificate signed by
    it (client.crt + client.key, and both in one file: client.pem), and junk."""
    d = tmp_path_factory.mktemp("pki")

    def sh(*args):
        subprocess.run(args, cwd=d, check=True, capture_output=True)

    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
       "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test ca")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1\n")
    for name in ("server", "client"):
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key",
           "-out", name + ".csr", "-subj", "/CN=" + ("localhost" if name == "server" else "sensor-1"))
        sh("openssl", "x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
           "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", "san.ext")
    (d / "client.pem").write_bytes((d / "client.crt").read_bytes() + (d / "client.key").read_bytes())
    (d / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
                                "-----END CERTIFICATE-----\n")
    for f in d.iterdir():
        f.chmod(0o644)
    return d


@pytest.fixture
def tls_rt(rt):
    rt.heap = "256K"  # the unix port's mbedTLS takes its record buffers from the MicroPython heap
    return rt


@pytest.fixture
def mtls_broker(make_broker, pki):
    """A Mosquitto that only admits clients with a certificate signed by the test CA."""
    return make_broker(conf="cafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\n"
                       "require_certificate true".format(pki))


CERT_CLIENT = """
import sys
from mqtt import MQTTClient, TLSError
params = {"cafile": sys.argv[1], "server_hostname": "localhost"}
for k, v in zip(("certfile", "keyfile"), sys.argv[2:]):
    if v != "-":
        params[k] = v
c = MQTTClient("mtls", "127.0.0.1", %d, ssl=True, ssl_params=params, timeout_ms=5000)
try:
    c.connect()
except TLSError as e:
    print("TLSError", isinstance(e, OSError), e)
    sys.exit(3)
c.publish("mtls/t", "hello", qos=1)
c.disconnect()
print("OK")
"""


@pytest.mark.parametrize("files", [("client.crt", "client.key"), ("client.pem", "-")],
                         ids=["cert-and-key", "cert-holding-its-key"])
def test_client_certificate_with_or_without_a_separate_key_file(tls_rt, mtls_broker, pki, files):
    args = [pki / "ca.crt"] + [pki / f if f != "-" else "-" for f in files]
    assert ok(tls_rt.run(CERT_CLIENT % mtls_broker.port, args=args)).split() == ["OK"]


@pytest.mark.parametrize("ca,cert,key,says", [
    ("missing.crt", "-", "-", "TLS: cannot read the CA file {d}/missing.crt"),
    ("junk.pem", "-", "-", "TLS: the CA {d}/junk.pem holds no valid certificate"),
    ("ca.crt", "missing.crt", "client.key", "TLS: cannot read the client certificate file {d}/missing.crt"),
    ("ca.crt", "client.crt", "missing.key", "TLS: cannot read the client key file {d}/missing.key"),
    ("ca.crt", "client.crt", "-", "TLS: cannot load the client certificate {d}/client.crt with its key"
                                  " (in the certificate file) (not a PEM/DER certificate and its private key?)"),
    ("ca.crt", "junk.pem", "client.key", "TLS: cannot load the client certificate {d}/junk.pem with its key"
                                         " {d}/client.key (not a PEM/DER certificate and its private key?)"),
    ("ca.crt", "client.crt", "junk.pem", "TLS: cannot load the client certificate {d}/client.crt with its key"
                                         " {d}/junk.pem (not a PEM/DER certificate and its private key?)"),
], ids=["ca-missing", "ca-junk", "cert-missing", "key-missing", "cert-without-key", "cert-junk", "key-junk"])
def test_a_missing_or_bad_certificate_or_key_is_one_clear_tls_error(tls_rt, mtls_broker, pki, ca, cert, key, says):
    """The same sentence on both runtimes, as a TLSError (an OSError: the reconnect logic and
    `except OSError` code treat it like an unreachable broker, not a crash)."""
    args = [pki / ca] + [pki / f if f != "-" else "-" for f in (cert, key)]
    r = tls_rt.run(CERT_CLIENT % mtls_broker.port, args=args)
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.decode().strip() == "TLSError True " + says.format(d=pki)


NO_CA = """
from mqtt import MQTTClient
for i in range(2):
    c = MQTTClient("noca%%d" %% i, "127.0.0.1", %d, ssl=True, ssl_params=%s)
    c.connect()
    c.publish("noca/t", "x", qos=1)
    c.disconnect()
print("OK")
"""


def test_tls_without_a_ca_connects_as_umqtt_does_and_warns_once(tls_rt, mtls_broker, pki):
    params = {"certfile": str(pki / "client.crt"), "keyfile": str(pki / "client.key")}
    r = tls_rt.run(NO_CA % (mtls_broker.port, params))
    assert ok(r).split() == ["OK"]
    warnings = [line for line in r.stderr.decode().splitlines() if "not authenticated" in line]
    assert warnings == ["mqtt: warning: TLS without a CA (ssl_params cafile/cadata): the broker is not authenticated"]
    # an explicit CERT_NONE is a choice: no warning
    params["cert_reqs"] = 0  # ssl.CERT_NONE on both runtimes
    r = tls_rt.run(NO_CA % (mtls_broker.port, params))
    assert ok(r).split() == ["OK"] and b"not authenticated" not in r.stderr


# ---- DS18B20: micropython-lib's driver raises on a CRC error ------------------------------------

DS18B20 = """
import sys
sys.path.append(sys.argv[1])
import hwsensors
hwsensors.sleep_ms = lambda ms: None  # the 750 ms conversion wait

class Stub:
    # micropython-lib's ds18x20.DS18X20 (micropython/drivers/sensor/ds18x20): read_scratch
    # raises Exception("CRC error"), and read_temp lets it through
    def __init__(self):
        self.scans = 0
        self.reads = 0
    def scan(self):
        self.scans += 1
        return [bytearray(b"\\x28\\x01\\x02\\x03\\x04\\x05\\x06\\x07")]
    def convert_temp(self):
        pass
    def read_temp(self, rom):
        self.reads += 1
        if self.reads == 2:
            raise Exception("CRC error")
        return 21.5

class Board:
    dev = Stub()
    def ds18x20(self, pin):
        return self.dev

b = Board()
s = hwsensors.DS18B20("probe", {"kind": "ds18b20", "topic": "probe", "qos": 1, "period_s": 1,
                                "pins": {"data": 4}}, b)
for seq in range(3):
    try:
        print("read", s.read(seq), "scans", b.dev.scans)
    except OSError as e:
        print("error", e, "scans", b.dev.scans)
"""


def test_a_ds18b20_crc_error_is_a_failed_read_and_the_bus_is_scanned_again(rt):
    from conftest import ROOT
    out = ok(rt.run(DS18B20, args=[ROOT / "firmware"])).splitlines()
    assert out == ["read 21.5 scans 1", "error DS18B20 on GPIO 4: CRC error scans 1", "read 21.5 scans 2"]
