"""Board files and their two validators.

boards/schema.json (checked with jsonschema on the host) and firmware/validate.py (the small
validator the device runs) must agree: on a table of good and bad configurations both give the
same verdict, and for a bad one the same key paths.  The device validator runs under CPython
and under the MicroPython unix port (MICROPYPATH=.frozen:lib:firmware, 128K heap).
The table (GOOD, BAD) is also used by test_firmware.py to boot the firmware with each bad file.
"""
import copy
import json
import os
import subprocess
import sys

import pytest

from conftest import MICROPYTHON, ROOT, HEAP

sys.path.insert(0, str(ROOT / "tools"))
import validate_board  # noqa: E402

BOARDS = ROOT / "boards"
BOARD_FILES = sorted(p.name for p in BOARDS.glob("*.json")
                     if p.name != "schema.json" and not p.name.endswith("secrets.json"))
CHIP_OF = {"esp32-devkitc.json": "esp32", "esp32-s3-devkitc-1.json": "esp32s3",
           "esp32-c3-devkitm-1.json": "esp32c3", "unix.json": "unix"}

# ---- the table -----------------------------------------------------------------------------------

UNIX = {
    "board": "t", "chip": "unix",
    "mqtt": {"broker": "127.0.0.1"},
    "ring": {"path": "ring.bin", "size": 12288},
    "sensors": {"x": {"kind": "sim"}},
}
ESP32 = {
    "board": "t", "chip": "esp32", "flash": {"offset": "0x1000"}, "wifi": {"ssid": "net"},
    "mqtt": {"broker": "10.0.0.1"},
    "ring": {"path": "/ring.bin", "size": 32768},
    "sensors": {"x": {"kind": "dht22", "pins": {"data": 4}}},
}
S3 = dict(ESP32, chip="esp32s3", flash={"offset": "0x0"})
C3 = dict(ESP32, chip="esp32c3", flash={"offset": "0x0"})
DELETE = object()


def make(base, **changes):
    """A copy of base with changes; keys are dotted paths ("mqtt.port"), DELETE removes."""
    cfg = copy.deepcopy(base)
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = copy.deepcopy(value)
    return cfg


def board(name):
    return json.loads((BOARDS / name).read_text())


GOOD = [
    *[("board file " + n, board(n)) for n in BOARD_FILES],
    ("minimal unix", UNIX),
    ("minimal esp32", ESP32),
    ("minimal esp32s3", S3),
    ("minimal esp32c3", C3),
    ("integer given as 1883.0", make(UNIX, mqtt__port=1883.0)),
    ("limits", make(UNIX, mqtt__keepalive=0, mqtt__qos=2, mqtt__port=65535, ring__size=1048576,
                    ring__capacity=4, watchdog={"timeout_ms": 1000}, health={"period_s": 0.1, "qos": 2},
                    sensors={"x": {"kind": "sim", "period_s": 0.1}})),
    ("upper limits", make(UNIX, watchdog={"timeout_ms": 120000}, ring__capacity=256,
                          power={"mode": "always-on", "flush_budget_ms": 60000})),
    ("placeholders", make(UNIX, mqtt__client_id="{board}-{uid}", mqtt__topic_prefix="a/{board}/{uid}/b")),
    ("deep sleep", make(UNIX, power={"mode": "deep-sleep", "wake_period_s": 0.5, "flush_budget_ms": 100})),
    ("always-on may keep a wake period", make(UNIX, power={"mode": "always-on", "wake_period_s": 60})),
    ("nested sensor topic", make(UNIX, sensors={"x": {"kind": "sim", "topic": "room/1/t"}})),
    ("all sim keys", make(UNIX, sensors={"x": {"kind": "sim", "signal": "ramp", "base": -5, "amplitude": 0.5,
                                               "steps": 10, "hang_after": 3, "fail_every": 2}})),
    ("adc on an input-only pin", make(ESP32, sensors={"l": {"kind": "adc", "pins": {"adc": 39}, "atten": "0dB",
                                                            "scale": 2, "offset": -1.5, "samples": 64}})),
    ("esp32s3 pins", make(S3, sensors={"a": {"kind": "adc", "pins": {"adc": 10}},
                                       "d": {"kind": "ds18b20", "pins": {"data": 48}, "rom": "28ff0123456789ab"}})),
    ("esp32c3 bme280 on I2C 0", make(C3, sensors={"b": {"kind": "bme280", "pins": {"sda": 4, "scl": 5},
                                                        "bus": {"i2c": 0, "freq": 400000}, "address": 119}})),
    ("tls", make(UNIX, mqtt__tls={"ca": "ca.pem", "server_hostname": "broker.local"}, mqtt__port=8883)),
    ("tls client certificate", make(ESP32, mqtt__tls={"ca": "/c/ca.pem", "cert": "/c/me.crt", "key": "/c/me.key"})),
    ("tls client certificate holding its key", make(ESP32, mqtt__tls={"ca": "/c/ca.pem", "cert": "/c/me.pem"})),
    ("tls insecure without a ca", make(UNIX, mqtt__tls={"insecure": True})),
    ("tls insecure false with a ca", make(UNIX, mqtt__tls={"ca": "ca.pem", "insecure": False})),
    ("secrets merged", make(ESP32, wifi__password="x" * 63, mqtt__user="u", mqtt__password="")),
    ("editor keys", make(UNIX, **{"$schema": "./schema.json", "description": "a board"})),
    ("unix may keep a wifi section", make(UNIX, wifi={"ssid": "ignored"})),
    ("safe mode on unix", make(UNIX, safe_mode={"pin": 63, "active": "high", "window_ms": 0, "flag_file": "f"})),
    ("esp32 safe-mode pin 0", make(ESP32, safe_mode={"pin": 0})),
    ("ring partition with flash size", make(ESP32, flash={"offset": "0x1000", "size": "16MB"},
                                            ring__partition="ring")),
    ("ring partition, 16-character label", make(C3, ring__partition="ring_store-01234")),
    ("flash size 2MB", make(ESP32, flash={"offset": "0x1000", "size": "2MB"})),
    ("16 sensors", make(UNIX, sensors={"s%d" % i: {"kind": "sim"} for i in range(16)})),
    ("ntp", make(UNIX, time={"ntp_servers": ["pool.ntp.org", "192.168.1.1:123"], "timeout_s": 2, "retry_s": 30})),
    ("ntp limits", make(ESP32, time={"ntp_servers": ["a", "b", "c", "d"], "timeout_s": 30, "retry_s": 86400})),
    ("sensor name with dash", make(UNIX, sensors={"bench-air": {"kind": "sim"}})),
]

# (id, config, {paths the device must name}, words its message for the first path contains)
BAD = [
    ("not an object", [1, 2], {""}, "object"),
    ("board missing", make(UNIX, board=DELETE), {"board"}, "required"),
    ("board upper case", make(UNIX, board="ESP"), {"board"}, "lower-case"),
    ("board with a newline", make(UNIX, board="abc\n"), {"board"}, "lower-case"),
    ("unknown chip", make(UNIX, chip="esp8266"), {"chip"}, "one of"),
    ("esp32 without flash", make(ESP32, flash=DELETE), {"flash"}, "required for chip esp32"),
    ("esp32 flash offset 0x0", make(ESP32, flash={"offset": "0x0"}), {"flash.offset"}, '"0x1000" for chip esp32'),
    ("esp32s3 flash offset 0x1000", make(S3, flash={"offset": "0x1000"}), {"flash.offset"}, '"0x0" for chip esp32s3'),
    ("flash offset not hex", make(ESP32, flash={"offset": "4096"}), {"flash.offset"}, "hex string"),
    ("unix with flash", make(UNIX, flash={"offset": "0x0"}), {"flash"}, "not used for chip unix"),
    ("flash unknown key", make(ESP32, flash={"offset": "0x1000", "mode": "dio"}), {"flash.mode"}, "unknown key"),
    ("flash size 3MB", make(ESP32, flash={"offset": "0x1000", "size": "3MB"}), {"flash.size"}, '"4MB"'),
    ("flash size a number", make(ESP32, flash={"offset": "0x1000", "size": 4}), {"flash.size"}, "one of"),
    ("ring partition on unix", make(UNIX, ring__partition="ring"), {"ring.partition"}, "not used for chip unix"),
    ("ring partition label too long", make(ESP32, ring__partition="r" * 17), {"ring.partition"}, "1..16"),
    ("ring partition label upper case", make(ESP32, ring__partition="Ring"), {"ring.partition"}, "lower-case"),
    ("ring partition label empty", make(ESP32, ring__partition=""), {"ring.partition"}, "partition label"),
    ("ring partition label a number", make(ESP32, ring__partition=5), {"ring.partition"}, "partition label"),
    ("ring partition is the vfs", make(ESP32, ring__partition="vfs"), {"ring.partition"}, "label MicroPython uses"),
    ("ring partition is nvs", make(S3, ring__partition="nvs"), {"ring.partition"}, "label MicroPython uses"),
    ("esp32 without wifi", make(ESP32, wifi=DELETE), {"wifi"}, "required for chip esp32"),
    ("wifi without ssid", make(ESP32, wifi={"retries": 3}), {"wifi.ssid"}, "required"),
    ("ssid too long", make(ESP32, wifi__ssid="x" * 33), {"wifi.ssid"}, "1..32"),
    ("wifi password too long", make(ESP32, wifi__password="x" * 64), {"wifi.password"}, "0..63"),
    ("wifi retries 0", make(ESP32, wifi__retries=0), {"wifi.retries"}, "integer 1..20"),
    ("wifi timeout string", make(ESP32, wifi__timeout_s="15"), {"wifi.timeout_s"}, "number 1..60"),
    ("mqtt missing", make(UNIX, mqtt=DELETE), {"mqtt"}, "required"),
    ("broker missing", make(UNIX, mqtt={"port": 1883}), {"mqtt.broker"}, "required"),
    ("broker is a URL", make(UNIX, mqtt__broker="mqtt://host"), {"mqtt.broker"}, "host name or IP"),
    ("port a string", make(UNIX, mqtt__port="1883"), {"mqtt.port"}, "must be an integer 1..65535"),
    ("port too big", make(UNIX, mqtt__port=70000), {"mqtt.port"}, "must be an integer 1..65535"),
    ("port 0", make(UNIX, mqtt__port=0), {"mqtt.port"}, "must be an integer 1..65535"),
    ("port true", make(UNIX, mqtt__port=True), {"mqtt.port"}, "must be an integer 1..65535"),
    ("port fractional", make(UNIX, mqtt__port=1883.5), {"mqtt.port"}, "must be an integer 1..65535"),
    ("keepalive negative", make(UNIX, mqtt__keepalive=-1), {"mqtt.keepalive"}, "integer 0..65535"),
    ("qos 3", make(UNIX, mqtt__qos=3), {"mqtt.qos"}, "integer 0..2"),
    ("tls without ca", make(UNIX, mqtt__tls={}), {"mqtt.tls.ca"}, "required"),
    ("tls true", make(UNIX, mqtt__tls=True), {"mqtt.tls"}, "object"),
    ("tls insecure false without ca", make(UNIX, mqtt__tls={"insecure": False}), {"mqtt.tls.ca"}, "insecure"),
    ("tls insecure with a ca", make(UNIX, mqtt__tls={"ca": "ca.pem", "insecure": True}), {"mqtt.tls.ca"},
     "not used with"),
    ("tls key without cert", make(UNIX, mqtt__tls={"ca": "ca.pem", "key": "me.key"}), {"mqtt.tls.cert"},
     "required with mqtt.tls.key"),
    ("tls insecure a string", make(UNIX, mqtt__tls={"ca": "ca.pem", "insecure": "yes"}), {"mqtt.tls.insecure"},
     "true or false"),
    ("tls cert empty", make(UNIX, mqtt__tls={"ca": "ca.pem", "cert": ""}), {"mqtt.tls.cert"}, "1..255"),
    ("client id with a space", make(UNIX, mqtt__client_id="sensor {uid}"), {"mqtt.client_id"}, "placeholders"),
    ("client id unknown placeholder", make(UNIX, mqtt__client_id="sensor-{id}"), {"mqtt.client_id"}, "placeholders"),
    ("prefix with a wildcard", make(UNIX, mqtt__topic_prefix="sensors/#"), {"mqtt.topic_prefix"}, "wildcards"),
    ("prefix with a leading slash", make(UNIX, mqtt__topic_prefix="/sensors"), {"mqtt.topic_prefix"}, "empty levels"),
    ("prefix $SYS", make(UNIX, mqtt__topic_prefix="$SYS/x"), {"mqtt.topic_prefix"}, "'$'"),
    ("prefix empty level", make(UNIX, mqtt__topic_prefix="a//b"), {"mqtt.topic_prefix"}, "empty levels"),
    ("prefix trailing newline", make(UNIX, mqtt__topic_prefix="a/b\n"), {"mqtt.topic_prefix"}, "spaces"),
    ("mqtt unknown key", make(UNIX, mqtt__hostname="h"), {"mqtt.hostname"}, "unknown key"),
    ("backoff too short", make(UNIX, mqtt__backoff_max_ms=500), {"mqtt.backoff_max_ms"}, "1000..600000"),
    ("ring missing", make(UNIX, ring=DELETE), {"ring"}, "required"),
    ("ring too small", make(UNIX, ring__size=8192), {"ring.size"}, "12288..1048576"),
    ("ring not whole sectors", make(UNIX, ring__size=20000), {"ring.size"}, "multiple of 4096"),
    ("ring size float", make(UNIX, ring__size=16384.5), {"ring.size"}, "integer"),
    ("relative ring path on esp32", make(ESP32, ring__path="ring.bin"), {"ring.path"}, "absolute path"),
    ("ring capacity 1000", make(UNIX, ring__capacity=1000), {"ring.capacity"}, "4..256"),
    ("watchdog too short", make(UNIX, watchdog={"timeout_ms": 500}), {"watchdog.timeout_ms"}, "1000..120000"),
    ("watchdog empty", make(UNIX, watchdog={}), {"watchdog.timeout_ms"}, "required"),
    ("power mode sleep", make(UNIX, power={"mode": "sleep"}), {"power.mode"}, '"deep-sleep"'),
    ("deep sleep without wake period", make(UNIX, power={"mode": "deep-sleep"}), {"power.wake_period_s"},
     "required when power.mode"),
    ("wake period 0", make(UNIX, power={"mode": "deep-sleep", "wake_period_s": 0}), {"power.wake_period_s"},
     "0.1..86400"),
    ("flush budget 50 ms", make(UNIX, power={"mode": "always-on", "flush_budget_ms": 50}), {"power.flush_budget_ms"},
     "100..60000"),
    ("power without mode", make(UNIX, power={"wake_period_s": 5}), {"power.mode"}, "required"),
    ("health period a string", make(UNIX, health={"period_s": "60"}), {"health.period_s"}, "number"),
    ("safe-mode pin on the flash", make(ESP32, safe_mode={"pin": 7}), {"safe_mode.pin"}, "wired to the flash"),
    ("safe-mode pin that does not exist", make(ESP32, safe_mode={"pin": 20}), {"safe_mode.pin"}, "does not exist"),
    ("safe-mode active LOW", make(UNIX, safe_mode={"active": "LOW"}), {"safe_mode.active"}, '"low"'),
    ("safe-mode window too long", make(UNIX, safe_mode={"window_ms": 60000}), {"safe_mode.window_ms"}, "0..10000"),
    ("sensors missing", make(UNIX, sensors=DELETE), {"sensors"}, "required"),
    ("no sensors", make(UNIX, sensors={}), {"sensors"}, "1..16"),
    ("sensors as a list", make(UNIX, sensors=[{"kind": "sim"}]), {"sensors"}, "object of named sensors"),
    ("17 sensors", make(UNIX, sensors={"s%d" % i: {"kind": "sim"} for i in range(17)}), {"sensors"}, "1..16"),
    ("sensor name upper case", make(UNIX, sensors={"Temp": {"kind": "sim"}}), {"sensors.Temp"}, "lower-case"),
    ("sensor name reserved", make(UNIX, sensors={"status": {"kind": "sim"}}), {"sensors.status"}, "reserved"),
    ("sensor name too long", make(UNIX, sensors={"a" * 17: {"kind": "sim"}}), {"sensors." + "a" * 17}, "1..16"),
    ("sensor without kind", make(UNIX, sensors={"x": {"period_s": 5}}), {"sensors.x.kind"}, "required"),
    ("unknown kind", make(UNIX, sensors={"x": {"kind": "bmp180"}}), {"sensors.x.kind"}, "one of"),
    ("period 0", make(UNIX, sensors={"x": {"kind": "sim", "period_s": 0}}), {"sensors.x.period_s"}, "0.1..86400"),
    ("sensor topic reserved", make(UNIX, sensors={"x": {"kind": "sim", "topic": "cmd"}}), {"sensors.x.topic"},
     "reserved"),
    ("sensor topic with a wildcard", make(UNIX, sensors={"x": {"kind": "sim", "topic": "a/+/b"}}),
     {"sensors.x.topic"}, "wildcards"),
    ("sensor qos -1", make(UNIX, sensors={"x": {"kind": "sim", "qos": -1}}), {"sensors.x.qos"}, "0..2"),
    ("sensor unknown key", make(UNIX, sensors={"x": {"kind": "sim", "pin": 4}}), {"sensors.x.pin"}, "unknown key"),
    ("dht22 without pins", make(ESP32, sensors={"x": {"kind": "dht22"}}), {"sensors.x.pins"}, "required for kind dht22"),
    ("dht22 without data pin", make(ESP32, sensors={"x": {"kind": "dht22", "pins": {}}}), {"sensors.x.pins.data"},
     "required for kind dht22"),
    ("dht22 with an adc key", make(ESP32, sensors={"x": {"kind": "dht22", "pins": {"data": 4}, "atten": "11dB"}}),
     {"sensors.x.atten"}, "not used by kind dht22"),
    ("adc given a data pin", make(ESP32, sensors={"x": {"kind": "adc", "pins": {"data": 34}}}),
     {"sensors.x.pins.adc", "sensors.x.pins.data"}, "required for kind adc"),
    ("esp32 adc on ADC2", make(ESP32, sensors={"x": {"kind": "adc", "pins": {"adc": 25}}}), {"sensors.x.pins.adc"},
     "not an ADC1 pin on esp32"),
    ("esp32 dht on an input-only pin", make(ESP32, sensors={"x": {"kind": "dht22", "pins": {"data": 35}}}),
     {"sensors.x.pins.data"}, "input-only"),
    ("esp32 data pin on the flash", make(ESP32, sensors={"x": {"kind": "ds18b20", "pins": {"data": 6}}}),
     {"sensors.x.pins.data"}, "wired to the flash on esp32"),
    ("esp32s3 pin 22 does not exist", make(S3, sensors={"x": {"kind": "dht11", "pins": {"data": 22}}}),
     {"sensors.x.pins.data"}, "does not exist on esp32s3"),
    ("esp32c3 adc on GPIO5", make(C3, sensors={"x": {"kind": "adc", "pins": {"adc": 5}}}), {"sensors.x.pins.adc"},
     "not an ADC1 pin on esp32c3"),
    ("esp32c3 second I2C", make(C3, sensors={"x": {"kind": "bme280", "pins": {"sda": 4, "scl": 5}, "bus": {"i2c": 1}}}),
     {"sensors.x.bus.i2c"}, "only I2C controller 0"),
    ("pin 64", make(UNIX, sensors={"x": {"kind": "dht11", "pins": {"data": 64}}}), {"sensors.x.pins.data"}, "0..63"),
    ("bme280 address 117", make(ESP32, sensors={"x": {"kind": "bme280", "pins": {"sda": 21, "scl": 22},
                                                      "address": 117}}), {"sensors.x.address"}, "118 (0x76)"),
    ("bme280 bus 5 kHz", make(ESP32, sensors={"x": {"kind": "bme280", "pins": {"sda": 21, "scl": 22},
                                                    "bus": {"freq": 5000}}}), {"sensors.x.bus.freq"}, "10000"),
    ("ds18b20 rom upper case", make(ESP32, sensors={"x": {"kind": "ds18b20", "pins": {"data": 4},
                                                          "rom": "28FF0123456789AB"}}), {"sensors.x.rom"}, "hex"),
    ("sim with pins", make(UNIX, sensors={"x": {"kind": "sim", "pins": {"data": 4}}}), {"sensors.x.pins"},
     "not used by kind sim"),
    ("sim signal square", make(UNIX, sensors={"x": {"kind": "sim", "signal": "square"}}), {"sensors.x.signal"},
     '"sine"'),
    ("sim steps 1", make(UNIX, sensors={"x": {"kind": "sim", "steps": 1}}), {"sensors.x.steps"}, "2..100000"),
    ("adc samples 0", make(ESP32, sensors={"x": {"kind": "adc", "pins": {"adc": 34}, "samples": 0}}),
     {"sensors.x.samples"}, "1..64"),
    ("top-level typo", make(UNIX, sensor={"x": {"kind": "sim"}}), {"sensor"}, "unknown key"),
    ("ntp servers empty", make(UNIX, time={"ntp_servers": []}), {"time.ntp_servers"}, "1..4"),
    ("ntp server a string", make(UNIX, time={"ntp_servers": "pool.ntp.org"}), {"time.ntp_servers"}, "list"),
    ("ntp server with a space", make(UNIX, time={"ntp_servers": ["ok", "a b"]}), {"time.ntp_servers.1"},
     "host name"),
    ("ntp timeout 0", make(UNIX, time={"timeout_s": 0}), {"time.timeout_s"}, "1..30"),
    ("ntp unknown key", make(UNIX, time={"server": "x"}), {"time.server"}, "unknown key"),
    ("uid with a space", make(UNIX, uid="my node"), {"uid"}, "letters, digits"),
    ("description a number", make(UNIX, description=5), {"description"}, "string"),
    ("two problems at once", make(UNIX, mqtt__port="1883", mqtt__qos=5), {"mqtt.port", "mqtt.qos"}, "1..65535"),
]

# Text that is not a usable JSON document: the device must say where (MicroPython's own parser
# would accept the first two, and read the third as "{}").
BAD_SYNTAX = [
    ("trailing comma", '{"board": "t", "chip": "unix",}', "line 1 col 30: trailing comma"),
    ("truncated", '{"board": "t",\n "mqtt": {"broker":', "line 2 col 20: unexpected end of file"),
    ("missing colon", '{"board" "t"}', "line 1 col 10: expected ':'"),
    ("duplicate key", '{"board": "t",\n  "board": "u"}', 'line 2 col 3: duplicate key "board"'),
    ("comment", '{"board": "t"} // x', "unexpected '/'"),
]


def ids(table):
    return [row[0] for row in table]


# ---- running the device validator -----------------------------------------------------------------

DRIVER = """
import sys, json, gc
import validate
with open(sys.argv[1]) as f:
    for line in f:  # one case per line: a 128K heap holds one at a time
        print(json.dumps(sorted([list(e) for e in validate.validate(json.loads(line))])))
        gc.collect()
"""


def device_verdicts(runtime, cases, tmp_path):
    """The device validator's errors for each case, run in a child of `runtime`."""
    data = tmp_path / "cases.json"
    data.write_text("".join(json.dumps(c) + "\n" for c in cases))
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ)
    if runtime == "micropython":
        env["MICROPYPATH"] = ".frozen:lib:firmware"
        argv = [str(MICROPYTHON), "-X", "heapsize=" + HEAP, str(script), str(data)]
    else:
        env["PYTHONPATH"] = "lib:firmware"
        argv = [sys.executable, str(script), str(data)]
    r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return [[tuple(e) for e in json.loads(line)] for line in r.stdout.decode().splitlines()]


@pytest.fixture(scope="module")
def validator():
    return validate_board._validator()


@pytest.fixture(scope="module", params=["cpython", "micropython"])
def verdicts(request, tmp_path_factory):
    """{case id: device errors} for GOOD and BAD, per runtime (one child process each)."""
    if request.param == "micropython" and not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port missing at %s: run `make setup`" % MICROPYTHON)
    rows = [(i, c) for i, c in GOOD] + [(i, c) for i, c, _, _ in BAD]
    got = device_verdicts(request.param, [c for _, c in rows], tmp_path_factory.mktemp(request.param))
    return dict(zip([i for i, _ in rows], got))


# ---- the schema and the committed board files ----------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema():
    import jsonschema

    s = validate_board.schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)


def test_every_required_board_exists():
    assert set(CHIP_OF) <= set(BOARD_FILES)


@pytest.mark.parametrize("name", BOARD_FILES)
def test_board_file_is_valid_and_keeps_the_deploy_contract(name, validator):
    cfg = board(name)
    assert validate_board.schema_errors(cfg, validator) == []
    assert validate_board.device_errors(cfg) == []
    # the keys the deploy tooling depends on
    assert cfg["board"] == name[:-5]
    assert cfg["chip"] == CHIP_OF.get(name, cfg["chip"])
    if cfg["chip"] == "unix":
        assert "flash" not in cfg
    else:
        assert cfg["flash"]["offset"] == ("0x1000" if cfg["chip"] == "esp32" else "0x0")
        assert cfg["ring"]["path"].startswith("/")
        assert cfg["ring"]["partition"] == "ring"  # the ring on its raw partition (make flash)
    # secrets never in boards/
    assert validate_board.leaked_secrets(cfg) == []
    assert "password" not in json.dumps(cfg)


def test_secrets_files_are_git_ignored():
    r = subprocess.run(["git", "check-ignore", "-q", "boards/esp32-devkitc.secrets.json"], cwd=ROOT)
    assert r.returncode == 0


# ---- agreement ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ids(GOOD))
def test_good_examples_pass_both_validators(case, validator, verdicts):
    cfg = dict(GOOD)[case]
    assert validate_board.schema_errors(cfg, validator) == []
    assert verdicts[case] == []


@pytest.mark.parametrize("case", ids(BAD))
def test_bad_examples_fail_both_validators_at_the_same_keys(case, validator, verdicts):
    _, cfg, paths, words = [row for row in BAD if row[0] == case][0]
    schema_paths = {p for p, _ in validate_board.schema_errors(cfg, validator)}
    device = verdicts[case]
    assert schema_paths == paths, "jsonschema: %s" % validate_board.schema_errors(cfg, validator)
    assert {p for p, _ in device} == paths, "device: %s" % device
    first = sorted(paths)[0]
    message = " ".join(m for p, m in device if p == first)
    assert words in message, "device message for %s: %r" % (first, message)


def test_the_runtimes_give_identical_messages(tmp_path):
    cases = [c for _, c, _, _ in BAD]
    a = device_verdicts("cpython", cases, tmp_path)
    b = device_verdicts("micropython", cases, tmp_path)
    assert a == b


# ---- syntax and files --------------------------------------------------------------------------------------

SYNTAX_DRIVER = """
import sys, json
import config
for path in sys.argv[1:]:
    try:
        config.read_json(path)
        print("ok")
    except config.ConfigError as e:
        print(e.lines()[0])
"""


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_broken_json_is_reported_with_line_and_column(runtime, tmp_path):
    files = []
    for i, (_, text, _) in enumerate(BAD_SYNTAX):
        f = tmp_path / ("bad%d.json" % i)
        f.write_text(text)
        files.append(str(f))
    script = tmp_path / "syntax.py"
    script.write_text(SYNTAX_DRIVER)
    env = dict(os.environ)
    if runtime == "micropython":
        env["MICROPYPATH"] = ".frozen:lib:firmware"
        argv = [str(MICROPYTHON), "-X", "heapsize=" + HEAP, str(script)] + files
    else:
        env["PYTHONPATH"] = "lib:firmware"
        argv = [sys.executable, str(script)] + files
    r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=30)
    lines = r.stdout.decode().splitlines()
    assert len(lines) == len(BAD_SYNTAX), r.stderr.decode()
    for (case, _, expected), line in zip(BAD_SYNTAX, lines):
        assert "not valid JSON" in line and expected in line, (case, line)
    # the host tool rejects the same files
    for f in files:
        errors, _, _ = validate_board.check(f, use_secrets=False)
        assert errors and ("not valid JSON" in errors[0] or "duplicate key" in errors[0]), (f, errors)


# ---- tools/validate_board.py ----------------------------------------------------------------------------------


def run_tool(*args):
    return subprocess.run([sys.executable, "tools/validate_board.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_tool_accepts_every_board_file():
    r = run_tool()
    assert r.returncode == 0, r.stdout + r.stderr
    for name in BOARD_FILES:
        assert "boards/%s: valid" % name in r.stdout


def test_tool_names_the_key_and_the_problem(tmp_path):
    d = tmp_path / "boards"
    d.mkdir()
    bad = d / "node.json"
    bad.write_text(json.dumps(make(ESP32, board="node", mqtt__port=70000, sensors={"x": {"kind": "adc", "pins": {"adc": 25}}})))
    r = run_tool(bad)
    assert r.returncode == 1
    assert "mqtt.port: 70000 is greater than the maximum of 65535" in r.stdout
    assert "sensors.x.pins.adc:" in r.stdout
    assert "DISAGREEMENT" not in r.stdout


def test_tool_checks_that_the_certificate_files_exist_to_deploy(tmp_path):
    """An ESP32 board's mqtt.tls.ca "/certs/ca.pem" is deployed from boards/certs/ca.pem: the
    error names the key, the device path and the missing local file."""
    d = tmp_path / "boards"
    (d / "certs").mkdir(parents=True)
    (d / "node.json").write_text(json.dumps(make(ESP32, board="node", mqtt__tls={
        "ca": "/certs/ca.pem", "cert": "/certs/node.crt", "key": "/certs/node.key"})))
    (d / "certs" / "ca.pem").write_text("x")
    (d / "certs" / "node.crt").write_text("x")
    r = run_tool(d / "node.json")
    assert r.returncode == 1
    assert r.stdout.strip().splitlines() == ["%s: mqtt.tls.key: no such file %s (for /certs/node.key on the device:"
                                             " make deploy copies /X from %s/X)" % (d / "node.json", d / "certs" / "node.key", d)]
    (d / "certs" / "node.key").write_text("x")
    assert run_tool(d / "node.json").returncode == 0


def test_tool_checks_that_the_ring_partition_fits_the_flash(tmp_path):
    """The layout rule of tools/partitions.py: a 2MB flash's vfs (320 KB) keeps 256 KB, so it
    gives the ring at most 64 KB; the error names ring.size."""
    d = tmp_path / "boards"
    d.mkdir()
    small = make(ESP32, board="node", flash={"offset": "0x1000", "size": "2MB"}, ring__partition="ring")
    (d / "node.json").write_text(json.dumps(make(small, ring__size=65536)))
    assert run_tool(d / "node.json").returncode == 0
    (d / "node.json").write_text(json.dumps(make(small, ring__size=69632)))
    r = run_tool(d / "node.json")
    assert r.returncode == 1
    assert "ring.size: 69632 bytes is more than the vfs of a 2MB flash can give (at most 65536" in r.stdout
    (d / "node.json").write_text(json.dumps(make(small, ring__size=69632, ring__partition=DELETE)))
    assert run_tool(d / "node.json").returncode == 0  # no partition: the ring is a file on vfs


def test_tool_merges_secrets_and_never_prints_them(tmp_path):
    d = tmp_path / "boards"
    d.mkdir()
    (d / "node.json").write_text(json.dumps(make(ESP32, board="node")))
    (d / "node.secrets.json").write_text(json.dumps({"wifi": {"password": "hunter2-but-longer-than-63-chars" * 3},
                                                     "mqtt": {"password": "s3cret"}}))
    r = run_tool(d / "node.json")
    assert r.returncode == 1
    assert "wifi.password:" in r.stdout and "hunter2" not in r.stdout
    assert run_tool(d / "node.json", "--no-secrets").returncode == 0
    (d / "node.secrets.json").write_text(json.dumps({"wifi": {"password": "hunter2hunter2"}, "chip": "unix"}))
    r = run_tool(d / "node.json")
    assert r.returncode == 1 and "may not set chip" in r.stdout


def test_tool_refuses_a_secret_in_the_board_file(tmp_path):
    d = tmp_path / "boards"
    d.mkdir()
    (d / "node.json").write_text(json.dumps(make(ESP32, board="node", wifi__password="hunter2hunter2")))
    r = run_tool(d / "node.json")
    assert r.returncode == 1
    assert "wifi.password: a secret in the board file: move it to node.secrets.json" in r.stdout


def test_device_loader_merges_secrets_the_same_way(tmp_path):
    """firmware/config.py (main.py --check) picks up boards/<name>.secrets.json like the tools."""
    d = tmp_path / "boards"
    d.mkdir()
    (d / "node.json").write_text(json.dumps(make(ESP32, board="node")))
    (d / "node.secrets.json").write_text(json.dumps({"wifi": {"password": "hunter2hunter2"},
                                                     "mqtt": {"user": "u", "password": "pw"}}))
    env = dict(os.environ, PYTHONPATH="lib:firmware")
    r = subprocess.run([sys.executable, "firmware/main.py", "--board", str(d / "node.json"), "--check"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["wifi"]["password"] == "***" and cfg["mqtt"]["password"] == "***" and cfg["mqtt"]["user"] == "u"
    assert cfg["mqtt"]["port"] == 1883 and cfg["watchdog"]["timeout_ms"] == 30000  # defaults filled in
    (d / "node.secrets.json").write_text(json.dumps({"flash": {"offset": "0x0"}}))
    r = subprocess.run([sys.executable, "firmware/main.py", "--board", str(d / "node.json"), "--check"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "flash: may not be set in the secrets file" in r.stderr
