"""The device validator's table (firmware/validate.py) and boards/schema.json say the same thing,
so that they cannot drift apart: every key of the schema is in the table and every key of the
table in the schema, with the same required keys, type, range (minimum/maximum, minLength/
maxLength, minItems/maxItems, minProperties/maxProperties) and choices; every pattern or other
rule the types cannot state has a tag in the table (and no tag is without one); the per-chip
pin sets, flash offsets and I2C controllers, and the keys and pins of each sensor kind, match
the schema's if/then rules; the defaults the firmware fills in (firmware/config.py) are the
schema's.  (test_boards.py checks that the two give the same verdicts.)"""
import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "firmware"))
import config  # noqa: E402
import validate  # noqa: E402

sys.path.pop(0)

SCHEMA = json.loads((ROOT / "boards" / "schema.json").read_text())
ESP_CHIPS = [c for c in validate.CHIPS if c != "unix"]
# Tags on values, and what the schema says instead of them
VALUE_TAGS = {"board": "pattern", "uid": "pattern", "host": "pattern", "hostport": "pattern",
              "client_id": "pattern", "prefix": "pattern", "topic": "pattern", "offset": "pattern",
              "label": "pattern", "rom": "pattern", "abspath": "allOf", "sectors": "multipleOf",
              "address": "enum", "gpio": "allOf", "out": "allOf", "adc": "allOf", "i2c": "allOf"}
OBJECT_TAGS = {"top": "allOf", "tls": "allOf", "power": "if", "sensor": "allOf"}


def tag_of(rule):
    kind = rule[0]
    if kind in ("l", "m", "b"):
        return None
    n = 2 if kind == "e" else 3
    return rule[n] if len(rule) > n else None


def resolve(node):
    """node with its $ref merged in (the schema's $refs point into $defs)."""
    while "$ref" in node:
        ref = dict(SCHEMA["$defs"][node["$ref"].split("/")[-1]])
        ref.update({k: v for k, v in node.items() if k != "$ref"})
        node = ref
    return node


def pairs(schema_node, rule, path=""):
    """Every (path, schema node, rule) below and including this one."""
    node = resolve(schema_node)
    out = [(path, node, rule)]
    kind = rule[0]
    if kind == "o":
        for key, sub in rule[2]:
            if key in node.get("properties", {}):
                out += pairs(node["properties"][key], sub, (path + "." if path else "") + key)
    elif kind == "l" and "items" in node:
        out += pairs(node["items"], rule[3], path + ".N")
    elif kind == "m" and isinstance(node.get("additionalProperties"), dict):
        out += pairs(node["additionalProperties"], rule[3], path + ".NAME")
    return out


ALL = pairs(SCHEMA, validate.TOP)


@pytest.mark.parametrize("path,node,rule", ALL, ids=[p or "(top)" for p, _, _ in ALL])
def test_each_key_has_the_schemas_type_range_choices_and_default(path, node, rule):
    kind = rule[0]
    tag = tag_of(rule)
    if kind == "o":
        assert node.get("type") == "object" and node.get("additionalProperties") is False, path
        assert [k for k, _ in rule[2]] == list(node["properties"]), "%s: keys (in the schema's order)" % path
        assert sorted(rule[1]) == sorted(node.get("required", [])), "%s: required keys" % path
        if tag:
            assert OBJECT_TAGS[tag] in node, "%s: tag %s, but the schema has no %s" % (path, tag, OBJECT_TAGS[tag])
        return
    if kind == "i":
        assert node.get("type") == "integer", path
        assert (node.get("minimum"), node.get("maximum")) == rule[1:3], path
    elif kind == "n":
        assert node.get("type") == "number", path
        assert (node.get("minimum"), node.get("maximum")) == rule[1:3], path
    elif kind == "s":
        assert node.get("type") == "string", path
        assert (node.get("minLength", 0), node.get("maxLength")) == ((rule[1] or 0), rule[2]), path
    elif kind == "e":
        assert "type" not in node and node["enum"] == list(rule[1]), path
    elif kind == "b":
        assert node.get("type") == "boolean", path
    elif kind == "l":
        assert node.get("type") == "array", path
        assert (node.get("minItems"), node.get("maxItems")) == rule[1:3], path
    elif kind == "m":
        assert node.get("type") == "object", path
        assert (node.get("minProperties"), node.get("maxProperties")) == rule[1:3], path
        names = node["propertyNames"]
        assert names["pattern"] and names["not"]["enum"] == list(validate.RESERVED), path
    else:
        pytest.fail("%s: unknown kind %r" % (path, kind))
    # a pattern (or another rule beyond type and range) in the schema has a tag in the table
    needs = [k for k in ("pattern", "multipleOf", "not") if k in node]
    if tag is None:
        assert not needs, "%s: the schema has %s, the table no tag" % (path, needs)
    else:
        assert tag in VALUE_TAGS, "%s: unknown tag %r" % (path, tag)


def test_every_schema_key_is_in_the_table():
    """The walk above follows the table; here the schema is walked, so a key the table lacks
    (or a key the schema lacks) fails by name."""
    def walk(node, rule, path):
        node = resolve(node)
        if rule[0] == "o":
            schema_keys = set(node.get("properties", {}))
            table_keys = {k for k, _ in rule[2]}
            assert schema_keys == table_keys, "%s: only in the schema %s, only in the table %s" % (
                path or "(top)", sorted(schema_keys - table_keys), sorted(table_keys - schema_keys))
            for k, sub in rule[2]:
                walk(node["properties"][k], sub, (path + "." if path else "") + k)
        elif rule[0] == "m":
            walk(node["additionalProperties"], rule[3], path + ".NAME")
    walk(SCHEMA, validate.TOP, "")


def test_tags_where_the_schema_has_them():
    """Where the schema states a rule with a pattern or a chip's if/then, the value has the tag."""
    tags = {p: tag_of(r) for p, _, r in ALL if r[0] != "o" and tag_of(r)}
    assert tags["ring.size"] == "sectors" and SCHEMA["properties"]["ring"]["properties"]["size"]["multipleOf"] == 4096
    assert tags["ring.path"] == "abspath"
    assert tags["safe_mode.pin"] == "gpio"
    assert tags["sensors.NAME.pins.adc"] == "adc"
    assert {tags["sensors.NAME.pins." + k] for k in ("data", "sda", "scl")} == {"out"}
    assert tags["sensors.NAME.bus.i2c"] == "i2c"
    assert tags["ring.partition"] == "label"
    assert SCHEMA["properties"]["ring"]["properties"]["partition"]["not"]["enum"] == list(validate.RESERVED_LABELS)
    assert tags["sensors.NAME.topic"] == "topic"
    assert resolve(SCHEMA["$defs"]["sensor"]["properties"]["topic"])["not"]["enum"] == list(validate.RESERVED)


def _chip_rule(chip):
    for rule in SCHEMA["allOf"]:
        if rule["if"]["properties"]["chip"]["const"] == chip:
            return rule["then"]
    raise AssertionError("no if/then for chip %s" % chip)


@pytest.mark.parametrize("chip", ESP_CHIPS)
def test_each_chips_pins_offset_and_i2c_match_the_schema(chip):
    info = validate.CHIP[chip]
    then = _chip_rule(chip)
    assert sorted(then["required"]) == ["flash", "wifi"]
    assert then["properties"]["flash"]["properties"]["offset"]["const"] == info["offset"]
    assert then["properties"]["ring"]["properties"]["path"]["pattern"] == "^/"
    usable = sorted(set(info["gpio"]) - set(info["flash"]))
    out = sorted(set(usable) - set(info["input_only"]))
    assert SCHEMA["$defs"]["gpio_" + chip]["enum"] == usable
    assert SCHEMA["$defs"]["out_" + chip]["enum"] == out
    assert SCHEMA["$defs"]["adc_" + chip]["enum"] == sorted(info["adc"])
    assert then["properties"]["safe_mode"]["properties"]["pin"]["$ref"] == "#/$defs/gpio_" + chip
    pins = then["properties"]["sensors"]["additionalProperties"]["properties"]["pins"]["properties"]
    assert {k: v["$ref"] for k, v in pins.items()} == {
        "data": "#/$defs/out_" + chip, "sda": "#/$defs/out_" + chip, "scl": "#/$defs/out_" + chip,
        "adc": "#/$defs/adc_" + chip}
    bus = then["properties"]["sensors"]["additionalProperties"]["properties"].get("bus")
    i2c_max = bus["properties"]["i2c"]["maximum"] if bus else 1
    assert i2c_max == info["i2c"]


def test_unix_has_no_flash_and_no_partition():
    then = _chip_rule("unix")
    assert then["properties"]["flash"]["not"] == {}
    assert then["properties"]["ring"]["properties"]["partition"]["not"] == {}
    assert validate.CHIP["unix"]["offset"] is None


@pytest.mark.parametrize("kind", validate.KINDS)
def test_each_sensor_kinds_keys_and_pins_match_the_schema(kind):
    sensor = SCHEMA["$defs"]["sensor"]
    then = [r["then"] for r in sensor["allOf"] if r["if"]["properties"]["kind"]["const"] == kind]
    assert len(then) == 1, kind
    then = then[0]
    props = then.get("properties", {})
    kind_keys = [k for k, _ in validate.SENSOR[2] if k not in validate.SENSOR_COMMON]
    unused = sorted(k for k in props if props[k].get("not") == {})
    assert unused == sorted(set(kind_keys) - set(validate.SENSOR_OPTIONAL[kind])), kind
    need = validate.PINS[kind]
    if need:
        assert then["required"] == ["pins"]
        assert props["pins"]["required"] == list(need)
        assert sorted(props["pins"]["properties"]) == sorted({"data", "adc", "sda", "scl"} - set(need))
    else:
        assert "required" not in then and "pins" in unused
    assert sorted(validate.SENSOR_OPTIONAL) == sorted(validate.KINDS) == sorted(validate.PINS)


def test_the_defaults_the_firmware_fills_in_are_the_schemas():
    """What config.apply_defaults fills in - every section, and a sensor of each kind - against
    every "default" in the schema.  mqtt.port and a sensor's topic and qos have defaults that
    depend on other keys (the schema says so in words); mqtt.tls.insecure is left out, which
    is the same as its default, false."""
    want = {path: node["default"] for path, node, rule in ALL if "default" in node}
    given = {"board": "t", "chip": "unix", "mqtt": {"broker": "h", "tls": {"insecure": True}},
             "ring": {"path": "r", "size": 12288}, "wifi": {"ssid": "s"},
             "sensors": {"x" + k: {"kind": k, "pins": {}} for k in validate.KINDS}}
    cfg = config.apply_defaults(json.loads(json.dumps(given)))
    got = {}

    def diff(path, full, part):
        for k, v in full.items():
            p = path + k
            if isinstance(v, dict) and k in part:
                diff(p + ".", v, part[k])
            elif isinstance(v, dict):
                diff(p + ".", v, {})
            elif k not in part:
                got.setdefault(p, v)

    for k, v in cfg.items():
        if k == "sensors":
            for name, sensor in v.items():
                diff("sensors.NAME.", sensor, given["sensors"][name])
        elif isinstance(v, dict):
            diff(k + ".", v, given.get(k, {}))
    assert got.pop("mqtt.port") == 8883 and got.pop("sensors.NAME.topic").startswith("x")
    assert got.pop("sensors.NAME.qos") == cfg["mqtt"]["qos"]
    want.pop("mqtt.tls.insecure")
    assert got == want


def test_every_integer_key_given_as_n_point_0_comes_out_as_an_int():
    """JSON Schema's "integer" admits 5.0; the firmware must then hold 5 (range(5.0) raises)."""
    cfg = {"board": "t", "chip": "unix", "wifi": {"ssid": "s", "retries": 3.0},
           "mqtt": {"broker": "h", "port": 1883.0, "keepalive": 30.0, "qos": 1.0, "backoff_max_ms": 2000.0,
                    "max_packet": 4096.0},
           "ring": {"path": "r", "size": 12288.0, "capacity": 8.0}, "watchdog": {"timeout_ms": 9000.0},
           "power": {"mode": "always-on", "flush_budget_ms": 500.0}, "health": {"qos": 1.0},
           "safe_mode": {"pin": 4.0, "window_ms": 10.0},
           "sensors": {"a": {"kind": "adc", "qos": 0.0, "samples": 2.0, "pins": {"adc": 3.0}},
                       "b": {"kind": "bme280", "pins": {"sda": 1.0, "scl": 2.0}, "bus": {"i2c": 1.0, "freq": 10000.0},
                             "address": 119.0},
                       "d": {"kind": "dht22", "pins": {"data": 5.0}},
                       "s": {"kind": "sim", "steps": 10.0, "hang_after": 9.0, "fail_every": 7.0}}}
    assert validate.validate(cfg) == []
    done = config.apply_defaults(json.loads(json.dumps(cfg)))
    integer_paths = [p for p, node, r in ALL if node.get("type") == "integer" or r[0] == "e" and type(r[1][0]) is int]
    seen = 0

    def check(node, parts, path):
        nonlocal seen
        if not parts:
            assert type(node) is int, "%s is %r" % (path, node)
            seen += 1
        elif parts[0] == "NAME":
            for v in node.values():
                check(v, parts[1:], path)
        elif parts[0] in node:
            check(node[parts[0]], parts[1:], path)

    for p in integer_paths:
        check(done, p.split("."), p)
    assert seen >= len(integer_paths)
