"""tools/mqttc.py (Contract 2) on both runtimes against a real Mosquitto."""
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ok, ROOT, MQTTC, free_port

# exit status per class of failure (mqttc --help)
EXIT_USAGE, EXIT_CONNECTION, EXIT_TLS, EXIT_PROTOCOL, EXIT_STORE, EXIT_SUBSCRIBE = 6, 7, 8, 9, 10, 11
EXIT_TIMEOUT, EXIT_INTERRUPTED = 27, 130


def common(broker):
    return ["-h", broker.host, "-p", str(broker.port)]


def start_sub(rt, broker, *args):
    """Start `mqttc sub` and wait until its subscription is in place (seen via -d)."""
    p = rt.mqttc_spawn("sub", *common(broker), "-d", *args)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if b"< SUBACK" in line or not line:
            break
    return p


def finish(p, timeout=20):
    if p.stdin and p.stdin.closed:
        p.stdin = None  # closed by the test: communicate() must not flush it
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        p.kill()
    return p.returncode, out, err


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_and_sub_round_trip(rt, broker, qos):
    s = start_sub(rt, broker, "-t", "cli/#", "-q", str(qos), "-C", "3", "-v")
    for i in range(3):
        ok(rt.mqttc("pub", *common(broker), "-t", "cli/t%d" % i, "-m", "hello %d" % i, "-q", str(qos)))
    rc, out, err = finish(s)
    assert rc == 0, err
    assert out.decode().splitlines() == ["cli/t%d hello %d" % (i, i) for i in range(3)]


def test_pub_lines_from_stdin_including_an_empty_one(rt, broker, peer_factory):
    p = peer_factory(broker)
    p.subscribe("lines/t", 2)
    ok(rt.mqttc("pub", *common(broker), "-t", "lines/t", "-l", "-q", "2", input=b"one\n\nthree\n"))
    assert [m[1] for m in p.wait_for(3)] == [b"one", b"", b"three"]


def test_pub_null_message_and_repeat_and_retain(rt, broker, peer_factory):
    p = peer_factory(broker)
    p.subscribe("null/#", 1)
    ok(rt.mqttc("pub", *common(broker), "-t", "null/t", "-n", "-q", "1", "--repeat", "3"))
    ok(rt.mqttc("pub", *common(broker), "-t", "null/r", "-m", "kept", "-r", "-q", "1"))
    got = p.wait_for(4)
    assert [m[:2] for m in got] == [("null/t", b"")] * 3 + [("null/r", b"kept")]
    q = peer_factory(broker)
    q.subscribe("null/r", 1)
    assert q.wait_for(1) == [("null/r", b"kept", 1, True)]


def test_sub_prints_payload_only_without_v_and_flushes_each_line(rt, broker, peer_factory):
    s = start_sub(rt, broker, "-t", "flush/t", "-q", "1")
    p = peer_factory(broker)
    p.publish("flush/t", "first", qos=1)
    assert s.stdout.readline() == b"first\n"  # arrives before the process ends
    p.publish("flush/t", "second", qos=1)
    assert s.stdout.readline() == b"second\n"
    s.kill()
    s.wait()


def test_sub_several_filters(rt, broker, peer_factory):
    s = start_sub(rt, broker, "-t", "a/#", "-t", "b/#", "-C", "2", "-v")
    p = peer_factory(broker)
    p.publish("a/1", "x", qos=1)
    p.publish("b/1", "y", qos=1)
    rc, out, err = finish(s)
    assert rc == 0 and out.decode().splitlines() == ["a/1 x", "b/1 y"]


def test_sub_wait_timeout_exits_non_zero(rt, broker):
    t = time.monotonic()
    r = rt.mqttc("sub", *common(broker), "-t", "quiet/t", "-W", "1")
    assert r.returncode != 0 and b"timed out" in r.stderr
    assert time.monotonic() - t < 8


def test_sub_count_completes_the_qos2_flow_and_disconnects(rt, broker, peer_factory):
    s = start_sub(rt, broker, "-t", "c2/t", "-q", "2", "-C", "1")
    p = peer_factory(broker)
    p.publish("c2/t", "only", qos=2)
    rc, out, err = finish(s)
    assert rc == 0 and out == b"only\n"
    assert b"> PUBCOMP" in err and err.rstrip().endswith(b"> DISCONNECT")


def test_connack_refused_names_the_return_code(rt, auth_broker):
    b = auth_broker
    r = rt.mqttc("pub", *common(b), "-t", "x", "-m", "y", "-u", "alice", "-P", "wrong")
    assert r.returncode != 0
    assert b"return code 5" in r.stderr or b"return code 4" in r.stderr
    ok(rt.mqttc("pub", *common(b), "-t", "x", "-m", "y", "-u", "alice", "-P", "s3cret", "-q", "1"))


def test_suback_failure_is_an_error(rt):
    """Mosquitto 2.0.11 grants ACL-denied subscriptions, so a scripted broker says 0x80."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def broker():
        c, _ = srv.accept()
        c.settimeout(10)
        c.recv(1000)                      # CONNECT
        c.sendall(b"\x20\x02\x00\x00")
        sub = c.recv(1000)                # SUBSCRIBE, id in bytes 2-3
        c.sendall(b"\x90\x03" + sub[2:4] + b"\x80")
        c.recv(1000)
        c.close()

    t = threading.Thread(target=broker, daemon=True)
    t.start()
    r = rt.mqttc("sub", "-p", str(port), "-t", "secret/#", "-W", "5")
    srv.close()
    assert r.returncode == EXIT_SUBSCRIBE, r.stderr
    assert b"0x80" in r.stderr


def test_refused_tcp_connection_is_one_clear_line(rt):
    from conftest import free_port
    r = rt.mqttc("pub", "-p", str(free_port()), "-t", "x", "-m", "y")
    assert r.returncode == EXIT_CONNECTION
    assert len(r.stderr.decode().strip().splitlines()) == 1
    assert b"connection refused" in r.stderr


@pytest.mark.parametrize("args", [
    ["pub", "-t", "x", "-m", "y", "-c"],          # -c without -i
    ["pub", "-t", "x"],                             # no message option
    ["pub", "-m", "y"],                             # no topic
    ["pub", "-t", "x", "-m", "y", "-n"],            # two message options
    ["pub", "-t", "x", "-m", "y", "-k", "65536"],   # keepalive out of range
    ["pub", "-t", "x", "-m", "y", "-q", "3"],
    ["sub", "-t", "x", "-m", "y"],                  # pub option on sub
    ["frob"],
], ids=["c-without-i", "no-message", "no-topic", "two-messages", "keepalive-range", "qos-range",
        "pub-option-on-sub", "unknown-command"])
def test_usage_errors(rt, args):
    r = rt.mqttc(*args)
    assert r.returncode == EXIT_USAGE and r.stdout == b"", r.stderr
    assert len(r.stderr.splitlines()) == 1 and b"mqttc --help" in r.stderr


def test_generated_client_id_and_debug_log_on_stderr_only(rt, broker):
    r = rt.mqttc("pub", *common(broker), "-t", "dbg/t", "-m", "x", "-q", "1", "-d")
    ok(r)
    assert r.stdout == b""
    assert b"> CONNECT id=mqttc-" in r.stderr and b"< PUBACK" in r.stderr


def test_will_options(rt, broker, peer_factory):
    p = peer_factory(broker)
    p.subscribe("w/#", 1)
    s = rt.mqttc_spawn("sub", *common(broker), "-t", "nothing", "--will-topic", "w/gone",
                       "--will-payload", "bye", "--will-qos", "1", "--will-retain", "-k", "5")
    time.sleep(1.0)
    s.kill()  # abrupt: the broker publishes the will
    s.wait()
    assert p.wait_for(1, timeout=15) == [("w/gone", b"bye", 1, False)]


def test_keepalive_zero_is_accepted(rt, broker):
    ok(rt.mqttc("pub", *common(broker), "-t", "k/t", "-m", "x", "-k", "0"))


def test_lost_connection_without_c_ends_promptly(rt, make_broker):
    b = make_broker()
    s = start_sub(rt, b, "-t", "lost/t")
    b.kill()
    rc, out, err = finish(s, timeout=15)
    assert rc == EXIT_CONNECTION and err.strip().splitlines()[-1].startswith(b"mqttc: lost the connection")


def test_reconnects_with_c_and_gets_what_was_queued_meanwhile(rt, make_broker, peer_factory):
    b = make_broker(persistence=True)
    s = start_sub(rt, b, "-t", "rc/t", "-q", "1", "-c", "-i", "rc-sub", "-C", "2")
    p = peer_factory(b)
    p.publish("rc/t", "before", qos=1)
    assert s.stdout.readline() == b"before\n"
    p.close()
    time.sleep(0.5)  # the subscriber's PUBACK reaches the broker before it saves
    b.save()
    b.kill()
    time.sleep(0.5)
    b.start()
    p = peer_factory(b)
    p.publish("rc/t", "after", qos=1)
    rc, out, err = finish(s, timeout=30)
    assert rc == 0, err
    assert out == b"after\n"


# ---- waiting on stdin: the link stays up, acks are read as they come -----------------


def test_pub_lines_sends_pingreq_while_stdin_is_quiet(rt, broker, peer_factory):
    """A pipe quiet for longer than the keepalive must not cost the connection (the
    broker drops a client silent for 1.5 x keepalive)."""
    p = peer_factory(broker)
    p.subscribe("ka/t", 1)
    s = rt.mqttc_spawn("pub", *common(broker), "-t", "ka/t", "-l", "-q", "1", "-k", "1", "-d",
                       stdin=subprocess.PIPE)
    s.stdin.write(b"first\n")
    s.stdin.flush()
    time.sleep(3.5)
    s.stdin.write(b"second\n")
    s.stdin.close()
    rc, out, err = finish(s)
    assert rc == 0, err
    assert err.count(b"> PINGREQ") >= 2 and b"< PINGRESP" in err
    assert [m[1] for m in p.wait_for(2)] == [b"first", b"second"]


def test_pub_stdin_file_is_one_message_and_keeps_the_link_alive(rt, broker, peer_factory):
    p = peer_factory(broker)
    p.subscribe("s/t", 1)
    s = rt.mqttc_spawn("pub", *common(broker), "-t", "s/t", "-s", "-q", "1", "-k", "1", "-d",
                       stdin=subprocess.PIPE)
    s.stdin.write(b"line one\nline")
    s.stdin.flush()
    time.sleep(2.5)
    s.stdin.write(b" two\n")
    s.stdin.close()
    rc, out, err = finish(s)
    assert rc == 0, err
    assert b"> PINGREQ" in err
    assert p.wait_for(1) == [("s/t", b"line one\nline two\n", 1, False)]


def test_pub_lines_reads_each_ack_as_it_comes(rt, broker):
    """PUBACKs are read while stdin is waited on, not only once the window is full: a
    dropped link then resends only what was really unacknowledged."""
    s = rt.mqttc_spawn("pub", *common(broker), "-t", "acks/t", "-l", "-q", "1", "-d",
                       stdin=subprocess.PIPE)
    s.stdin.write(b"one\n")
    s.stdin.flush()
    deadline = time.monotonic() + 10
    seen = b""
    while time.monotonic() < deadline and b"< PUBACK pid=1" not in seen:
        seen += s.stderr.readline()
    assert b"< PUBACK pid=1" in seen  # while stdin is still open
    s.stdin.close()
    rc, out, err = finish(s)
    assert rc == 0, err


# ---- the store's size and capacity, and a line when it is full --------------------------


def test_store_flags_set_the_ring_and_a_full_store_says_so(rt, make_broker, tmp_path):
    from conftest import free_port
    port = free_port()
    ring = tmp_path / "ring.bin"
    s = rt.mqttc_spawn("pub", "-p", str(port), "-t", "full/t", "-l", "-q", "1", "-c", "-i", "full-pub",
                       "--store", str(ring), "--store-size", "16K", "--store-capacity", "3",
                       stdin=subprocess.PIPE)
    s.stdin.write(b"".join(b"m%d\n" % i for i in range(5)))
    s.stdin.close()
    deadline = time.monotonic() + 20
    seen = b""
    while time.monotonic() < deadline and b"store full" not in seen:
        seen += s.stderr.readline()
    assert b"mqttc: store full (3 messages) in " + str(ring).encode() in seen
    assert ring.stat().st_size == 16384
    b = make_broker(port=port)
    rc, out, err = finish(s, timeout=40)
    assert rc == 0, seen + err  # 0: the broker acknowledged all five
    assert b.log_text().count("Received PUBLISH from full-pub") == 5


def test_store_size_below_three_sectors_is_a_usage_error(rt, tmp_path):
    r = rt.mqttc("pub", "-t", "x", "-m", "y", "--store", str(tmp_path / "r"), "--store-size", "8192")
    assert r.returncode == EXIT_USAGE and b"--store-size" in r.stderr


# ---- --max-packet, and a default that takes big messages -------------------------------


def test_sub_receives_a_256_kb_message_by_default(rt, broker, peer_factory):
    """CPython takes any packet MQTT allows; the unix port what its heap allows (1M here)."""
    rt.heap = "1M"
    s = start_sub(rt, broker, "-t", "big/t", "-q", "1", "-C", "1")
    payload = bytes(range(256)) * 1024
    peer_factory(broker).publish("big/t", payload, qos=1)
    rc, out, err = finish(s)
    assert rc == 0, err
    assert out == payload + b"\n"


def test_max_packet_skips_a_bigger_message_says_so_and_goes_on(rt, broker, peer_factory):
    """Contract 1: a PUBLISH over --max-packet is skipped in bounded memory and acknowledged
    (never a reconnect loop); the subscriber says so on stderr and receives what follows."""
    s = start_sub(rt, broker, "-t", "mp/t", "--max-packet", "1K", "-C", "1")
    peer = peer_factory(broker)
    peer.publish("mp/t", b"x" * 2000, qos=1)
    peer.publish("mp/t", b"after", qos=1)
    rc, out, err = finish(s)
    assert rc == 0, err
    assert out.splitlines() == [b"after"], out
    assert b"mqttc: skipped a QoS 0 PUBLISH of" in err and b"topic mp/t" in err, err  # sub -q 0


# ---- the mosquitto_pub / mosquitto_sub options ---------------------------------------


def test_help_exits_0_on_stdout_and_version_names_the_release(rt):
    r = rt.mqttc("--help")
    assert r.returncode == 0 and r.stderr == b"" and r.stdout.startswith(b"usage: mqttc pub")
    r = rt.mqttc("pub", "-t", "x", "--help")
    assert r.returncode == 0 and b"exit status:" in r.stdout
    r = rt.mqttc("--version")
    version = re.search(r'__version__ = "(.+)"', (ROOT / "lib/mqtt/__init__.py").read_text()).group(1)
    assert r.returncode == 0 and r.stdout.decode().startswith("mqttc %s (" % version)


def test_long_forms_work_like_the_short_ones(rt, broker, peer_factory):
    p = peer_factory(broker)
    p.subscribe("long/#", 1)
    ok(rt.mqttc("pub", "--host", broker.host, "--port", str(broker.port), "--topic", "long/t",
                "--message", "hi", "--qos", "1", "--retain", "--id", "long-pub", "--keepalive", "30",
                "--protocol-version", "mqttv311", "--max-inflight", "4", "--nodelay"))
    assert p.wait_for(1) == [("long/t", b"hi", 1, False)]
    s = rt.mqttc("sub", "--host", broker.host, "--port", str(broker.port), "--topic", "long/#",
                 "--verbose", "-C", "1", "-W", "10")
    assert s.returncode == 0 and s.stdout == b"long/t hi\n", s.stderr


def test_pub_file_and_repeat_with_delay(rt, broker, peer_factory, tmp_path):
    f = tmp_path / "payload.bin"
    f.write_bytes(b"\x00binary\nfile\xff")
    p = peer_factory(broker)
    p.subscribe("file/t", 1)
    t = time.monotonic()
    ok(rt.mqttc("pub", *common(broker), "-t", "file/t", "-f", str(f), "-q", "1", "--repeat", "3",
                "--repeat-delay", "0.3"))
    assert time.monotonic() - t >= 0.6
    assert [m[1] for m in p.wait_for(3)] == [f.read_bytes()] * 3
    r = rt.mqttc("pub", *common(broker), "-t", "file/t", "-f", str(tmp_path / "missing"))
    assert r.returncode == EXIT_USAGE and b"cannot read -f " in r.stderr


def test_url_gives_host_port_credentials_and_topic(rt, auth_broker, peer_factory):
    b = auth_broker
    s = rt.mqttc_spawn("sub", "-L", "mqtt://alice:s3cret@%s:%d/url/t" % (b.host, b.port), "-C", "1", "-d")
    wait_subscribed(s)
    ok(rt.mqttc("pub", "-L", "mqtt://alice:s3cret@%s:%d/url/t" % (b.host, b.port), "-m", "via url", "-q", "1"))
    rc, out, err = finish(s)
    assert rc == 0 and out == b"via url\n", err
    r = rt.mqttc("pub", "-L", "mqtt://%s:%d" % (b.host, b.port), "-m", "x")
    assert r.returncode == EXIT_USAGE and b"no topic" in r.stderr


def test_cafile_switches_the_default_port_to_8883(rt, tls_pki):
    rt.heap = "256K"  # TLS on the unix port
    args = ("pub", "-h", "127.0.0.1", "--cafile", str(tls_pki / "ca.crt"), "-t", "x", "-m", "y")
    r = rt.mqttc(*args, "--quiet")
    assert r.returncode != 0 and r.stderr == b""  # --quiet
    r = rt.mqttc(*args)  # nothing listens on 8883 here: the error names the port
    assert b"127.0.0.1:8883" in r.stderr, r.stderr


@pytest.mark.parametrize("args,words", [
    (["-P", "pw"], b"-P needs -u"),
    (["-D", "publish", "user-property", "a"], b"MQTT 3.1.1 only"),
    (["-x", "60"], b"MQTT 3.1.1 only"),
    (["-V", "mqttv5"], b"MQTT 3.1.1 only"),
    (["-V", "mqttv31"], b"MQTT 3.1.1 only"),
    (["--proxy", "socks5h://x"], b"not supported"),
    (["--will-payload", "x"], b"need --will-topic"),
    (["--cert", "c.pem"], b"--cert and --key go together"),
    (["--insecure"], b"--insecure needs TLS"),
], ids=["P-without-u", "mqtt5-D", "mqtt5-x", "V5", "V31", "unsupported", "will-payload-alone",
        "cert-without-key", "insecure-without-tls"])
def test_options_that_cannot_work_are_refused_before_connecting(rt, args, words):
    r = rt.mqttc("pub", "-t", "x", "-m", "y", *args)
    assert r.returncode == EXIT_USAGE and words in r.stderr and len(r.stderr.splitlines()) == 1


def test_connack_refusal_exits_with_the_return_code_as_mosquitto(rt, auth_broker):
    r = rt.mqttc("pub", *common(auth_broker), "-t", "x", "-m", "y", "-u", "alice", "-P", "wrong")
    m = subprocess.run(["mosquitto_pub", *common(auth_broker), "-t", "x", "-m", "y", "-u", "alice",
                        "-P", "wrong"], capture_output=True)
    assert r.returncode == m.returncode == 5, (r.stderr, m.stderr)


def wait_subscribed(p, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if b"< SUBACK" in line or not line:
            return


def test_sub_R_N_T_and_F(rt, broker, peer_factory):
    p = peer_factory(broker)
    p.publish("rnt/old", "stale", qos=1, retain=True)
    s = start_sub(rt, broker, "-t", "rnt/#", "-R", "-T", "rnt/skip/#", "-C", "2",
                  "-F", r"%t|%p|%l|%q|%r|%x|%X|%%|%-6t|%06l\t@@")
    p.publish("rnt/skip/a", "hidden", qos=1)
    p.publish("rnt/new", "fresh", qos=1)
    p.publish("rnt/b", "AZ", qos=1)
    rc, out, err = finish(s)
    assert rc == 0, err
    assert out.decode().splitlines() == [
        "rnt/new|fresh|5|0|0|6672657368|6672657368|%|rnt/new|000005\t@",
        "rnt/b|AZ|2|0|0|415a|415A|%|rnt/b |000002\t@"]
    s = start_sub(rt, broker, "-t", "rnt/old", "-N", "-C", "1")
    rc, out, err = finish(s)
    assert rc == 0 and out == b"stale"


def test_sub_F_json_and_times(rt, broker, peer_factory):
    s = start_sub(rt, broker, "-t", "js/t", "-q", "1", "-C", "2", "-F", "%j %U %I @Y")
    p = peer_factory(broker)
    p.publish("js/t", '{"a": 1}', qos=1)
    p.publish("js/t", 'say "hi"', qos=0)
    rc, out, err = finish(s)
    assert rc == 0, err
    import json as _json
    lines = out.decode().splitlines()
    first = _json.loads(lines[0].rsplit(" ", 3)[0])
    assert {k: first[k] for k in ("topic", "qos", "retain", "payloadlen", "payload")} == {
        "topic": "js/t", "qos": 1, "retain": 0, "payloadlen": 8, "payload": '{"a": 1}'}
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z[+-]\d{4}$", first["tst"])
    assert re.search(r" \d+\.\d{9} \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \d{4}$", lines[0])
    assert '"qos":0,"retain":0,"payloadlen":8,"payload":"say \\"hi\\""}' in lines[1]


def test_sub_E_exits_once_subscribed_and_U_unsubscribes(rt, broker, peer_factory):
    """A persistent session: -E subscribes and leaves; -U later removes the subscription, so
    what is published afterwards is not queued for it."""
    r = rt.mqttc("sub", *common(broker), "-c", "-i", "eu-sub", "-q", "1", "-t", "eu/a", "-t", "eu/b", "-E")
    assert r.returncode == 0 and r.stdout == b"", r.stderr
    r = rt.mqttc("sub", *common(broker), "-c", "-i", "eu-sub", "-q", "1", "-t", "eu/b", "-U", "eu/a", "-E", "-d")
    assert r.returncode == 0 and b"> UNSUBSCRIBE" in r.stderr and b"< UNSUBACK" in r.stderr, r.stderr
    p = peer_factory(broker)
    p.publish("eu/a", "gone", qos=1)
    p.publish("eu/b", "kept", qos=1)
    r = rt.mqttc("sub", *common(broker), "-c", "-i", "eu-sub", "-q", "1", "-t", "eu/b", "-C", "1", "-W", "10", "-v")
    assert r.returncode == 0 and r.stdout == b"eu/b kept\n", r.stderr


def _will_watcher(peer_factory, broker, topic):
    p = peer_factory(broker)
    p.subscribe(topic, 1)
    return p


def test_sub_W_expiry_sends_disconnect_so_the_will_stays_quiet(rt, broker, peer_factory):
    p = _will_watcher(peer_factory, broker, "wx/will")
    r = rt.mqttc("sub", *common(broker), "-t", "wx/t", "-W", "1", "-d", "--will-topic", "wx/will",
                 "--will-payload", "gone")
    assert r.returncode == EXIT_TIMEOUT
    assert b"> DISCONNECT" in r.stderr and r.stderr.rstrip().endswith(b"mqttc: timed out after 1 s")
    time.sleep(1)
    assert p.messages == []


def test_ctrl_c_on_sub_sends_disconnect_so_the_will_stays_quiet(rt, broker, peer_factory):
    p = _will_watcher(peer_factory, broker, "cc/will")
    s = rt.mqttc_spawn("sub", *common(broker), "-t", "cc/t", "-d", "--will-topic", "cc/will",
                       "--will-payload", "gone", sigint=True)
    wait_subscribed(s)
    s.send_signal(signal.SIGINT)
    rc, out, err = finish(s)
    assert rc == EXIT_INTERRUPTED and b"> DISCONNECT" in err, err
    time.sleep(1)
    assert p.messages == []


def test_client_id_prefix_and_max_inflight(rt, broker):
    r = rt.mqttc("pub", *common(broker), "-I", "pre-", "-t", "i/t", "-m", "x", "-q", "1", "-M", "1",
                 "--repeat", "3", "-d")
    ok(r)
    assert b"> CONNECT id=pre-" in r.stderr
    # a window of 1: each PUBLISH waits for the previous PUBACK
    lines = [ln for ln in r.stderr.decode().splitlines() if "PUBLISH" in ln or "PUBACK" in ln]
    assert [ln.split()[2] + ln.split()[3] for ln in lines] == \
        ["PUBLISHpid=1", "PUBACKpid=1", "PUBLISHpid=2", "PUBACKpid=2", "PUBLISHpid=3", "PUBACKpid=3"]


# ---- the same command lines to mosquitto_pub/sub and to mqttc ------------------------


@pytest.fixture
def tls_broker_for(make_broker, tls_pki):
    """A Mosquitto whose one listener speaks TLS."""
    return make_broker(conf="cafile %s/ca.crt\ncertfile %s/server.crt\nkeyfile %s/server.key"
                       % (tls_pki, tls_pki, tls_pki))


class Tools:
    """Runs a command line as mosquitto_pub/mosquitto_sub or as mqttc pub/sub."""

    def __init__(self, rt, mosquitto):
        self.rt = rt
        self.mosquitto = mosquitto
        self.name = "mosq" if mosquitto else "mqttc"

    def __call__(self, cmd, *args, input=None):
        if self.mosquitto:
            return subprocess.run(["mosquitto_" + cmd, *map(str, args)], input=input, capture_output=True,
                                  timeout=30)
        return self.rt.mqttc(cmd, *args, input=input)


def queued(tool, conn, topic, publish, input=None, sub_args=(), n=1):
    """Subscribe a persistent session, publish with `publish` args, then collect what was
    queued for the session: (pub exit, sub exit, sub output)."""
    sid = "cmp-%s-%s" % (tool.name, topic.replace("/", "-"))
    r = tool("sub", *conn, "-c", "-i", sid, "-q", "2", "-t", topic, "-E")
    assert r.returncode == 0, r.stderr
    p = tool("pub", *publish, input=input)
    s = tool("sub", *conn, "-c", "-i", sid, "-q", "2", "-t", topic, "-C", n, "-W", "10", *sub_args)
    return p.returncode, s.returncode, s.stdout


def test_same_command_lines_as_mosquitto_behave_alike(rt, broker, tls_broker_for, tls_pki, tmp_path):
    """stdin, files, URL, TLS, retained handling, unsubscribe, exit-after-subscribe and exit
    codes, each run through mosquitto_pub/sub and through mqttc against the same broker.
    (An empty payload is compared through -F: mosquitto_sub prints nothing for it where mqttc
    prints an empty line, one line per message.)"""
    rt.heap = "256K"  # TLS on the unix port
    conn = common(broker)
    f = tmp_path / "msg.bin"
    f.write_bytes(b"from a file\n\x01\x02")
    tls = ["-h", "localhost", "-p", tls_broker_for.port, "--cafile", tls_pki / "ca.crt"]
    url = "mqtt://%s:%d/cmp/url" % (broker.host, broker.port)
    results = {}
    for tool in (Tools(rt, True), Tools(rt, False)):
        got = results[tool.name] = []
        got.append(queued(tool, conn, "cmp/lines", [*conn, "-t", "cmp/lines", "-q", "1", "-l"],
                          input=b"one\ntwo\n\nfour", n=4, sub_args=["-F", "%l:%p"]))
        got.append(queued(tool, conn, "cmp/stdin", [*conn, "-t", "cmp/stdin", "-q", "2", "-s"],
                          input=b"all\nof it"))
        got.append(queued(tool, conn, "cmp/file", [*conn, "-t", "cmp/file", "-q", "1", "-f", f]))
        got.append(queued(tool, conn, "cmp/url", ["-L", url, "-m", "by url", "-q", "1"], n=1,
                          sub_args=["-F", "%t %l %q %r [%p]"]))
        got.append(queued(tool, tls, "cmp/tls", [*tls, "-t", "cmp/tls", "-m", "secret", "-q", "2"],
                          sub_args=["-v"]))
        # retained: printed, or skipped with -R (then -W expires: 27)
        r = tool("pub", *conn, "-t", "cmp/ret", "-m", "kept", "-r", "-q", "1")
        a = tool("sub", *conn, "-t", "cmp/ret", "-C", "1", "-W", "5", "-v")
        b = tool("sub", *conn, "-t", "cmp/ret", "-R", "-W", "1")
        got.append((r.returncode, a.returncode, a.stdout, b.returncode, b.stdout))
        # -U removes a session's subscription; -E exits once subscribed
        sid = "cmp-%s-unsub" % tool.name
        tool("sub", *conn, "-c", "-i", sid, "-q", "1", "-t", "cmp/u/a", "-t", "cmp/u/b", "-E")
        e = tool("sub", *conn, "-c", "-i", sid, "-q", "1", "-t", "cmp/u/b", "-U", "cmp/u/a", "-E")
        tool("pub", *conn, "-t", "cmp/u/a", "-m", "dropped", "-q", "1")
        tool("pub", *conn, "-t", "cmp/u/b", "-m", "queued", "-q", "1")
        s = tool("sub", *conn, "-c", "-i", sid, "-q", "1", "-t", "cmp/u/b", "-W", "2", "-v")
        got.append((e.returncode, e.stdout, s.returncode, s.stdout))
        # exit codes: TLS to a plain port, plain MQTT to a TLS port
        got.append(tool("pub", "-p", broker.port, "--cafile", tls_pki / "ca.crt", "-t", "x", "-m", "y").returncode)
        got.append(tool("pub", "-h", "localhost", "-p", tls_broker_for.port, "-t", "x", "-m", "y").returncode)
    assert results["mqttc"] == results["mosq"]
    assert results["mqttc"][0] == (0, 0, b"3:one\n3:two\n0:\n4:four\n")
    assert results["mqttc"][5][2] == b"cmp/ret kept\n" and results["mqttc"][6][3] == b"cmp/u/b queued\n"


# ---- no traceback: one line, a class of exit status, the same text on both runtimes ----


@pytest.fixture
def plain_and_tls(make_broker, tls_pki):
    plain = make_broker()
    tls = make_broker(conf="cafile %s/ca.crt\ncertfile %s/server.crt\nkeyfile %s/server.key"
                      % (tls_pki, tls_pki, tls_pki))
    return plain, tls


BAD_INPUTS = [
    # (id, arguments ({plain}/{tls} ports, {tmp} dir, {ca} file), exit status, words in the line)
    ("empty-topic", ["pub", "-t", "", "-m", "x"], EXIT_USAGE, "-t is empty"),
    ("empty-filter", ["sub", "-t", ""], EXIT_USAGE, "-t is empty"),
    ("wildcard-topic", ["pub", "-t", "a/#", "-m", "x"], EXIT_USAGE, "cannot hold wildcards"),
    ("bad-filter", ["sub", "-t", "a/b#"], EXIT_USAGE, "'#' must be a whole last level"),
    ("unknown-option", ["pub", "--frob"], EXIT_USAGE, "unknown option '--frob'"),
    ("not-a-number", ["pub", "-t", "x", "-m", "y", "-k", "abc"], EXIT_USAGE, "-k needs a whole number"),
    ("bad-size", ["pub", "-t", "x", "-m", "y", "--max-packet", "lots"], EXIT_USAGE, "--max-packet needs a size"),
    ("missing-file", ["pub", "-t", "x", "-f", "{tmp}/nope"], EXIT_USAGE, "cannot read -f {tmp}/nope: no such file"),
    ("store-no-dir", ["pub", "-t", "x", "-m", "y", "-q", "1", "--store", "{tmp}/no/ring"], EXIT_STORE,
     "there is no directory {tmp}/no"),
    ("store-is-dir", ["pub", "-t", "x", "-m", "y", "-q", "1", "--store", "{tmp}"], EXIT_STORE,
     "is a directory, not a ring file"),
    ("store-not-ring", ["pub", "-t", "x", "-m", "y", "-q", "1", "--store", "{tmp}/junk"], EXIT_STORE,
     "is not a ring file"),
    ("store-too-big", ["pub", "-p", "{plain}", "-t", "x", "-f", "{tmp}/big", "-q", "1", "--store", "{tmp}/ring"],
     EXIT_STORE, "message too large for a ring record"),
    ("refused", ["pub", "-p", "{free}", "-t", "x", "-m", "y"], EXIT_CONNECTION,
     "cannot connect to 127.0.0.1:{free}: connection refused"),
    ("bad-host", ["pub", "-h", "no-such-host.invalid", "-t", "x", "-m", "y"], EXIT_CONNECTION,
     "cannot find host 'no-such-host.invalid'"),
    ("missing-cafile", ["pub", "-p", "{tls}", "--cafile", "{tmp}/ca.pem", "-t", "x", "-m", "y"], EXIT_TLS,
     "cannot read --cafile {tmp}/ca.pem: no such file"),
    ("plain-on-tls", ["pub", "-p", "{tls}", "-t", "x", "-m", "y"], EXIT_CONNECTION,
     "closed the connection before answering CONNECT (a TLS port? add --cafile"),
    ("tls-on-plain", ["pub", "-p", "{plain}", "--cafile", "{ca}", "-t", "x", "-m", "y"], EXIT_TLS,
     "TLS handshake with 127.0.0.1:{plain} failed: the connection was reset (a plain MQTT port?"),
    ("untrusted", ["pub", "-p", "{tls}", "--cafile", "{other}", "-t", "x", "-m", "y"], EXIT_TLS,
     "is not signed by --cafile {other}"),
]


@pytest.mark.parametrize("args,status,words", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_and_an_exit_class_the_same_on_both_runtimes(
        args, status, words, plain_and_tls, tls_pki, tmp_path):
    from conftest import Runtime
    (tmp_path / "junk").write_bytes(b"this is not a ring" * 1000)
    (tmp_path / "big").write_bytes(b"x" * 5000)
    plain, tls = plain_and_tls
    v = {"plain": plain.port, "tls": tls.port, "tmp": tmp_path, "free": free_port(),
         "ca": tls_pki / "ca.crt", "other": tls_pki / "other.crt"}
    argv = [a.format(**v) for a in args]
    got = []
    for name in ("cpython", "micropython"):
        r = Runtime(name, tmp_path, heap="256K").mqttc(*argv)
        assert r.returncode == status, (name, r.stderr)
        assert b"Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, (name, r.stderr)
        assert words.format(**v) in r.stderr.decode(), (name, r.stderr)
        got.append(r.stderr)
    assert got[0] == got[1]


def test_a_closed_stdout_ends_sub_quietly(rt, broker, peer_factory):
    s = start_sub(rt, broker, "-t", "pipe/t")
    s.stdout.close()  # as `mqttc sub ... | head -1` once head has exited
    p = peer_factory(broker)
    for i in range(3):
        p.publish("pipe/t", "x", qos=1)
    s.stdout = None
    rc, out, err = finish(s)
    assert rc == 0 and b"Traceback" not in err, err


# ---- progress while -c waits for a broker, and what Ctrl-C leaves behind ----------------


def read_stderr_for(p, seconds):
    """stderr lines of a running process for about `seconds` (without ending it)."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stderr, selectors.EVENT_READ)
    lines = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sel.select(max(0, deadline - time.monotonic())):
            line = p.stderr.readline()
            if not line:
                break
            lines.append(line)
    sel.close()
    return lines


def test_c_says_every_few_seconds_what_it_waits_for(rt, make_broker, tmp_path):
    port = free_port()
    ring = tmp_path / "ring.bin"
    s = rt.mqttc_spawn("pub", "-p", str(port), "-t", "wait/t", "-m", "hello", "-q", "1", "-c", "-i", "wait-pub",
                       "--store", str(ring))
    lines = read_stderr_for(s, 6.5)
    assert 2 <= len(lines) <= 3, lines  # one at the first failure, then one every 5 s
    for n, line in enumerate(lines):  # (the first comes before the message is in the store)
        assert re.match(rb"mqttc: waiting for the broker at 127\.0\.0\.1:%d: attempt \d+ failed \(connection "
                        rb"refused\); next try in \d+ s%s\n$" % (port, b"" if not n else (
                            b"; 1 message safe in the store " + re.escape(str(ring).encode()))), line), line
    b = make_broker(port=port)
    rc, out, err = finish(s, timeout=30)
    err = err.splitlines()
    assert rc == 0 and err[-1] == b"mqttc: connected to 127.0.0.1:%d" % port, err
    assert all(line.startswith(b"mqttc: waiting for the broker at ") for line in err[:-1])
    assert b.log_text().count("Received PUBLISH from wait-pub") == 1


def test_quiet_keeps_stderr_empty_while_waiting(rt, make_broker):
    port = free_port()
    s = rt.mqttc_spawn("sub", "-p", str(port), "-t", "q/t", "-c", "-i", "quiet-sub", "--quiet", "-C", "1")
    time.sleep(1.5)
    b = make_broker(port=port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "quiet-sub" not in b.log_text():
        time.sleep(0.1)
    time.sleep(0.5)  # its SUBSCRIBE follows the CONNACK
    subprocess.run(["mosquitto_pub", "-p", str(port), "-t", "q/t", "-m", "m", "-q", "1"], check=True)
    rc, out, err = finish(s)
    assert rc == 0 and out == b"m\n" and err == b""


def test_ctrl_c_says_what_is_safe_and_the_command_that_finishes_it(rt, make_broker, tmp_path):
    port = free_port()
    ring = tmp_path / "ring.bin"
    s = rt.mqttc_spawn("pub", "-p", str(port), "-t", "cc/t", "-l", "-q", "1", "-c", "-i", "cc-pub",
                       "--store", str(ring), stdin=subprocess.PIPE, sigint=True)
    s.stdin.write(b"one\ntwo\n")
    s.stdin.flush()
    time.sleep(1.5)
    s.send_signal(signal.SIGINT)
    rc, out, err = finish(s)
    assert rc == EXIT_INTERRUPTED
    line = err.decode().strip().splitlines()[-1]  # after the status lines
    assert line.startswith(
        "mqttc: interrupted: 2 messages are safe in the store %s; finish sending them with: " % ring), line
    command = line.split(" with: ", 1)[1].split()
    assert command[:2] == [Path(rt.argv("x")[0]).name, str(MQTTC)]  # as this test ran it
    assert command[2:] == ["pub", "--store", str(ring), "-i", "cc-pub", "-c", "-h", "127.0.0.1", "-p", str(port)]
    b = make_broker(port=port)
    ok(rt.mqttc(*command[2:]))
    assert b.log_text().count("Received PUBLISH from cc-pub") == 2
