"""TLS with CA verification, user/password, and interop with umqtt.simple — both runtimes."""
import subprocess

import pytest

from conftest import ok, UMQTT_DIR


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throw-away CA, a server certificate for 'localhost' signed by it, and an
    unrelated second CA that must not be trusted."""
    d = tmp_path_factory.mktemp("pki")

    def sh(*args):
        subprocess.run(args, cwd=d, check=True, capture_output=True)

    for ca in ("ca", "other"):
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
           "-keyout", ca + ".key", "-out", ca + ".crt", "-subj", "/CN=test %s" % ca)
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
       "-out", "server.csr", "-subj", "/CN=localhost")
    # mbedTLS (MicroPython) matches the host name against DNS SANs only, CPython an IP
    # against IP SANs: 127.0.0.1 is listed both ways so `-h 127.0.0.1` verifies on both.
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
       "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    for f in d.iterdir():
        f.chmod(0o644)
    return d


@pytest.fixture
def tls_rt(rt):
    """On ESP32 mbedTLS allocates its ~40 KB of record buffers from the IDF heap; on
    the unix port it comes out of the MicroPython heap, so TLS runs get 256 KB there."""
    rt.heap = "256K"
    return rt


@pytest.fixture
def tls_broker(make_broker, pki):
    return make_broker(conf="cafile %s/ca.crt\ncertfile %s/server.crt\nkeyfile %s/server.key"
                       % (pki, pki, pki))


TLS_CLIENT = """
import sys
from mqtt import MQTTClient
ca, host = sys.argv[1], sys.argv[2]
c = MQTTClient("tls", "127.0.0.1", %d, ssl=True,
               ssl_params={"cafile": ca, "server_hostname": host})
got = []
c.set_callback(lambda t, m: got.append(m))
try:
    c.connect()
except Exception as e:
    print("REFUSED", type(e).__name__, e)
    sys.exit(3)
c.subscribe("tls/t", 2)
for q in (0, 1, 2):
    c.publish("tls/t", "secure %%d" %% q, qos=q)
while len(got) < 3:
    c.wait_msg()
print("GOT", b",".join(got).decode())
c.disconnect()
"""


def test_tls_with_ca_verification_round_trip(tls_rt, tls_broker, pki):
    out = ok(tls_rt.run(TLS_CLIENT % tls_broker.port, args=[pki / "ca.crt", "localhost"]))
    assert "GOT secure 0,secure 1,secure 2" in out


@pytest.mark.parametrize("ca,host", [("other.crt", "localhost"), ("ca.crt", "wrong.example")],
                         ids=["untrusted-ca", "wrong-hostname"])
def test_tls_refuses_a_broker_it_cannot_verify(tls_rt, tls_broker, pki, ca, host):
    r = tls_rt.run(TLS_CLIENT % tls_broker.port, args=[pki / ca, host])
    assert r.returncode == 3, r.stdout + r.stderr
    assert b"REFUSED" in r.stdout and b"MemoryError" not in r.stdout
    assert b"verif" in r.stdout.lower() or b"certificate" in r.stdout.lower() or b"-9984" in r.stdout


def test_tls_via_mqttc_cafile(tls_rt, tls_broker, pki):
    rt = tls_rt
    ok(rt.mqttc("pub", "-h", "127.0.0.1", "-p", str(tls_broker.port), "--cafile", str(pki / "ca.crt"),
                "-t", "tls/x", "-m", "hi", "-q", "1"))


AUTH_CLIENT = """
import sys
from mqtt import MQTTClient, ConnectRefused
c = MQTTClient("auth", "127.0.0.1", %d, user=sys.argv[1], password=sys.argv[2])
try:
    c.connect()
    print("OK")
    c.disconnect()
except ConnectRefused as e:
    print("REFUSED", e.args[0])
"""


def test_user_and_password(rt, auth_broker):
    b = auth_broker
    assert ok(rt.run(AUTH_CLIENT % b.port, args=["alice", "s3cret"])).split() == ["OK"]
    refused = ok(rt.run(AUTH_CLIENT % b.port, args=["alice", "nope"])).split()
    assert refused[0] == "REFUSED" and refused[1] in ("4", "5")


# ---- interop with micropython-lib's umqtt.simple ----------------------------------


UMQTT_PUBLISHER = """
from umqtt.simple import MQTTClient
c = MQTTClient("umqtt-pub", "127.0.0.1", %d)
c.connect()
for i in range(20):
    c.publish(b"interop/t", b"u%%d" %% i, qos=1)
c.disconnect()
"""


def test_umqtt_simple_publishes_qos1_to_our_subscriber(rt, broker, tmp_path):
    """umqtt.simple 1.3.4 (on the unix port) -> Mosquitto -> our client (each runtime)."""
    from conftest import Runtime
    assert (UMQTT_DIR / "umqtt" / "simple.py").exists(), "run make setup (umqtt)"
    sub = rt.mqttc_spawn("sub", "-p", str(broker.port), "-t", "interop/t", "-q", "1", "-C", "20", "-d")
    while b"< SUBACK" not in sub.stderr.readline():
        pass
    mp = Runtime("micropython", tmp_path)
    ok(mp.run(UMQTT_PUBLISHER % broker.port, umqtt=True))
    out, err = sub.communicate(timeout=20)
    assert sub.returncode == 0, err
    assert out.decode().split() == ["u%d" % i for i in range(20)]


UMQTT_STYLE_SCRIPT = """
# An unmodified umqtt.simple example, only the import line changed.
import time
from mqtt import MQTTClient

server = "127.0.0.1"
got = []

def sub_cb(topic, msg):
    print((topic, msg))
    got.append(msg)

def main(server=server):
    c = MQTTClient("umqtt_client", server, %d)
    c.set_callback(sub_cb)
    c.connect()
    c.subscribe(b"foo_topic")
    c.publish(b"foo_topic", b"hello")
    c.publish(b"foo_topic", b"again", qos=1)
    while len(got) < 2:
        if True:
            c.wait_msg()
        else:
            c.check_msg()
            time.sleep(1)
    c.ping()
    c.check_msg()
    c.disconnect()

main()
"""


def test_umqtt_simple_style_script_runs_unchanged(rt, broker):
    out = ok(rt.run(UMQTT_STYLE_SCRIPT % broker.port))
    assert out.splitlines() == ["(b'foo_topic', b'hello')", "(b'foo_topic', b'again')"]
