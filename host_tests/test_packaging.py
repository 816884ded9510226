"""The package a user picks up: one version everywhere, `pip install .` giving a working
`mqttc`, the README's mqttc reference in step with the parser, and examples/ running on
both runtimes against Mosquitto."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, ok

sys.path.insert(0, str(ROOT / "lib"))
import mqttc  # noqa: E402
from mqttc.help import HELP  # noqa: E402

VERSION = re.search(r'__version__ = "(.+)"', (ROOT / "lib/mqtt/__init__.py").read_text()).group(1)


def test_one_version_for_library_firmware_and_tools():
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)
    assert json.loads((ROOT / "package.json").read_text())["version"] == VERSION
    assert re.search(r'version="(.+)"', (ROOT / "manifest.py").read_text()).group(1) == VERSION
    assert re.search(r'^VERSION = "(.+)"', (ROOT / "firmware/runtime.py").read_text(), re.M).group(1) == VERSION
    assert re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M).group(1) == VERSION
    assert 'version = {attr = "mqtt.__version__"}' in (ROOT / "pyproject.toml").read_text()


def test_readme_holds_the_mqttc_reference_as_mqttc_help_prints_it():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- mqttc --help -->\n```\n", 1)[1].split("\n```\n<!-- end mqttc --help -->", 1)[0]
    assert block == HELP


def test_every_option_of_the_parser_is_in_the_reference():
    for opt in list(mqttc.OPTIONS) + list(mqttc.LONG):
        assert re.search(r"(^|[ ,])%s([ ,;]|$)" % re.escape(opt), HELP, re.M), opt
    for opt in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", HELP.split("exit status:")[0]):
        assert opt in mqttc.OPTIONS or opt in mqttc.LONG or opt in ("--help", "--version"), opt


def test_pip_install_in_a_fresh_venv_gives_a_working_mqttc(tmp_path, broker, peer_factory):
    """What a user does: `pip install .` (build isolation fetches setuptools) into a new venv.
    From a copy of the files the package needs, so the checkout stays clean."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", str(src)], capture_output=True, text=True,
                       timeout=300)
    if r.returncode and re.search(r"No matching distribution found for setuptools|Could not fetch|"
                                  r"NewConnectionError|Temporary failure in name resolution", r.stderr):
        pytest.skip("pip cannot fetch setuptools to build with (offline?): %s" % r.stderr.strip()[-200:])
    assert r.returncode == 0, r.stderr
    mqttc_cmd = str(venv / "bin/mqttc")
    r = subprocess.run([mqttc_cmd, "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("mqttc %s (CPython" % VERSION), r.stdout + r.stderr
    p = peer_factory(broker)
    p.subscribe("pip/t", 1)
    r = subprocess.run([mqttc_cmd, "pub", "-p", str(broker.port), "-t", "pip/t", "-m", "installed", "-q", "1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert p.wait_for(1) == [("pip/t", b"installed", 1, False)]
    r = subprocess.run([str(venv / "bin/python"), "-c", "import mqtt, mqttc; print(mqtt.__version__, mqtt.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.split()[0] == VERSION and str(venv) in r.stdout, r.stdout + r.stderr
    licence = list(venv.glob("lib/python*/site-packages/ringmqtt-%s.dist-info/**/LICENSE" % VERSION))
    assert licence, "the MIT licence travels with the package"


# ---- examples/ -------------------------------------------------------------------


def example(name):
    return ROOT / "examples" / name


def test_example_publish_with_ring(rt, broker, peer_factory, tmp_path):
    p = peer_factory(broker)
    p.subscribe("examples/ring", 1)
    out = ok(rt.run(script=example("publish_with_ring.py"),
                    args=[broker.host, broker.port, tmp_path / "ring.bin", 5]))
    assert "published 5, all acknowledged" in out
    assert [m[1] for m in p.wait_for(5)] == [b"reading %d" % i for i in range(5)]


def test_example_subscribe(rt, broker, peer_factory):
    s = rt.spawn(script=example("subscribe.py"), args=[broker.host, broker.port, "examples/#", 2])
    assert s.stdout.readline().startswith(b"granted QoS")
    p = peer_factory(broker)
    p.publish("examples/a", "one", qos=1)
    p.publish("examples/b", "two", qos=1)
    out, err = s.communicate(timeout=20)
    assert s.returncode == 0, err
    assert out.decode().splitlines() == ["examples/a one", "examples/b two"]


def test_example_sensor_loop(rt, broker, peer_factory, tmp_path):
    p = peer_factory(broker)
    p.subscribe("sensors/example/#", 1)
    r = rt.run(script=example("sensor_loop.py"), args=[broker.host, broker.port, 3, 0.2, tmp_path / "ring.bin"])
    assert "sent 3 readings" in ok(r)
    got = p.wait_for(5)
    assert [m[0] for m in got] == ["sensors/example/status"] + ["sensors/example/temperature"] * 3 + [
        "sensors/example/status"]
    assert got[0][1] == b"online" and got[-1][1] == b"offline"
    assert [json.loads(m[1]) for m in got[1:4]] == [{"seq": n, "v": pytest.approx(21.0 + n / 10)} for n in range(3)]
