"""bench_flash: what the flash ring costs the flash of an ESP32, per durable message,
measured on the NOR-flash simulator (host_tests/norflash.py: 4096-byte sectors, erase
45 ms, program 20 us + 2.7 us per byte) through MQTTClient against a real Mosquitto.

    .venv/bin/python tools/bench_flash.py [--messages N] [--lfs-messages N] [--json]    (~3 min)

Media (the unix port runs them all, CPython the raw partition too):
  - raw:      MQTTClient(store=<partition>): the ring on a 64 KB raw partition;
  - log:      MQTTClient(store="/flash/ring") on littlefs (vfs.VfsLfs2 mounted over the
              simulator as the ESP32 port mounts its vfs): a directory of append-only
              sector files, sync per publish, and with sync_every=8;
  - lfs-file: the old single ring file on littlefs (in-place marks), for comparison.
Per message (28-byte topic, 51-byte payload): sector erases (all and the busiest
sector's), bytes and calls programmed, modelled flash time, attempts to raise a bit.
Then a wear-life table per board file: years until the busiest sector reaches 100,000
erases at the board's configured rate of durable (QoS >= 1) publishes.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from brokerctl import Mosquitto  # noqa: E402

TOPIC = "sensors/esp32-0a1b2c/climate"  # 28 bytes
PAYLOAD = '{"t":21.53,"h":48.21,"p":1013.2,"seq":123456,"v":1}'  # 51 bytes
CYCLES = 100000  # rated erase cycles per sector (ESP32 SPI NOR flash)

WORKER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from norflash import NorFlash, mount_littlefs
from mqtt import MQTTClient
port, medium, qos, n, sync_every, sectors = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
fl = NorFlash(sectors)
if medium == "raw":
    store, kind = fl, None
else:
    mount_littlefs(fl)
    store, kind = "/flash/ring", ("log" if medium == "log" else "file")
c = MQTTClient("bench-flash", "127.0.0.1", int(port), store=store, ring_size=65536, ring_capacity=64,
               sync_every=sync_every, ring_medium=kind, window=16)
c.connect()
topic = %r
payload = %r
for k in range(50):  # warm up: the ring's first sectors opened, littlefs' files created
    c.publish(topic, payload, qos=qos)
c.flush(10000)
fl.reset_counters()
e0 = list(fl.erases)
for k in range(n):
    c.publish(topic, payload, qos=qos)
assert c.flush(30000)
c.disconnect()
s = fl.stats()
busiest = max(fl.erases[i] - e0[i] for i in range(sectors))
print("RESULT %%d %%d %%d %%d %%d %%d %%d" %% (n, s["erases"], busiest, s["prog_bytes"], s["prog_calls"],
                                   fl.time_us(), fl.raised_bits))
""" % (TOPIC, PAYLOAD)


def runtime_argv(runtime, script):
    if runtime == "micropython":
        mp = os.environ.get("MICROPYTHON") or os.path.join(ROOT, "build", "bin", "micropython")
        return [mp, "-X", "heapsize=16M", script], {"MICROPYPATH": ".frozen:%s:%s" % (
            os.path.join(ROOT, "build", "mpy"), os.path.join(ROOT, "lib"))}
    return [sys.executable, script], {"PYTHONPATH": os.path.join(ROOT, "lib")}


def measure(runtime, port, medium, qos, n, sync_every, sectors, tmp):
    script = os.path.join(tmp, "flashbench.py")
    with open(script, "w") as f:
        f.write(WORKER)
    argv, extra = runtime_argv(runtime, script)
    env = dict(os.environ, **extra)
    out = subprocess.run(argv + [os.path.join(ROOT, "host_tests"), str(port), medium, str(qos), str(n),
                                 str(sync_every), str(sectors)],
                         env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    if out.returncode or not line:
        raise SystemExit("bench_flash: %s %s failed: %s" % (runtime, medium, (out.stderr or out.stdout).strip()[-400:]))
    n, erases, busiest, pbytes, pcalls, us, raised = map(int, line[0].split()[1:])
    return {"runtime": runtime, "medium": medium, "qos": qos, "sync_every": sync_every, "messages": n,
            "sectors": sectors, "erases": erases / n, "busiest": busiest / n, "bytes": pbytes / n,
            "calls": pcalls / n, "ms": us / n / 1000.0, "raised_bits": raised}


def durable_rates(board):
    """(QoS 1, QoS 2) publishes per second the board file schedules: each sensor every
    period_s, or once per wake-up on a deep-sleep board."""
    default = board.get("mqtt", {}).get("qos", 0)
    wake = board.get("power", {}).get("wake_period_s") if board.get("power", {}).get("mode") == "deep-sleep" else None
    rates = [0.0, 0.0, 0.0]
    for s in list(board.get("sensors", {}).values()) + [board.get("health", {})]:
        period = s.get("period_s") or wake
        if period and s:
            rates[s.get("qos", default if s is not board.get("health") else 0)] += 1.0 / period
    return rates[1], rates[2]


def main(argv):
    n = int(argv[argv.index("--messages") + 1]) if "--messages" in argv else 4000
    lfs = int(argv[argv.index("--lfs-messages") + 1]) if "--lfs-messages" in argv else 40000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(HERE, "build_mpy.py")], check=True,
                       stdout=subprocess.DEVNULL)
        b = Mosquitto(os.path.join(tmp, "broker")).start()
        try:
            # littlefs levels wear dynamically (block_cycles 100): its busiest block
            # settles only after many erases per block, so its runs are longer
            plan = [("cpython", "raw", 1, n, 1, 16), ("micropython", "raw", 1, n, 1, 16),
                    ("micropython", "raw", 2, n, 1, 16),
                    ("micropython", "log", 1, lfs, 1, 448), ("micropython", "log", 2, lfs // 2, 1, 448),
                    ("micropython", "log", 1, lfs, 8, 448),
                    ("micropython", "lfs-file", 1, max(50, n // 10), 1, 448)]
            for rt, medium, qos, count, se, sectors in plan:
                rows.append(measure(rt, b.port, medium, qos, count, se, sectors, tmp))
                r = rows[-1]
                print("%-11s %-8s QoS %d sync_every %d: %.3f erases (busiest sector %.4f), %.0f bytes in "
                      "%.1f programs, %.2f ms flash, %d raised bits per message" % (
                          rt, medium, qos, se, r["erases"], r["busiest"], r["bytes"], r["calls"], r["ms"],
                          r["raised_bits"]), file=sys.stderr)
        finally:
            b.stop()
    boards = []
    for name in sorted(os.listdir(os.path.join(ROOT, "boards"))):
        if not name.endswith(".json") or name == "schema.json":
            continue
        with open(os.path.join(ROOT, "boards", name)) as f:
            board = json.load(f)
        if board.get("chip", "").startswith("esp32"):
            boards.append((name[:-5], durable_rates(board), board.get("ring", {}).get("size", 65536)))
    if "--json" in argv:
        print(json.dumps({"rows": rows, "boards": boards}, indent=1))
        return 0
    print("Per durable message (%d-byte topic, %d-byte payload), NOR simulator through MQTTClient and "
          "Mosquitto:" % (len(TOPIC), len(PAYLOAD)))
    print()
    print("| medium | runtime | QoS | sync | erases | busiest sector | bytes programmed | programs "
          "| flash time | raised bits |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    names = {"raw": "raw partition (64 KB)", "log": "log ring on littlefs (1.75 MB vfs)",
             "lfs-file": "one ring file on littlefs (before)"}
    for r in rows:
        print("| %s | %s | %d | %s | %.3f | %.4f | %.0f | %.1f | %.2f ms | %d |" % (
            names[r["medium"]], r["runtime"], r["qos"], "every %d" % r["sync_every"] if r["sync_every"] > 1
            else "each", r["erases"], r["busiest"], r["bytes"], r["calls"], r["ms"], r["raised_bits"]))
    print()
    def pick(medium, qos, se=1):
        return [r for r in rows if r["medium"] == medium and r["qos"] == qos and r["sync_every"] == se
                and r["runtime"] == "micropython"][0]
    old = pick("lfs-file", 1)
    print("Wear life at each board's configured rate of durable publishes: years until the busiest "
          "sector reaches %d erases (the raw ring wears its own ring.size evenly; littlefs levels over "
          "its whole vfs):" % CYCLES)
    print()
    print("| board | QoS 1 + QoS 2 msgs/day | raw partition | log ring on littlefs | one file on littlefs (before) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (r1, r2), size in boards:
        cols = []
        for medium in ("raw", "log", "lfs-file"):
            scale = 16.0 * 4096 / size if medium == "raw" else 1.0  # a bigger ring spreads wider
            q2 = old if medium == "lfs-file" else pick(medium, 2)
            per_day = (pick(medium, 1)["busiest"] * r1 + q2["busiest"] * r2) * scale * 86400
            years = CYCLES / (per_day * 365) if per_day else float("inf")
            cols.append("%.1f years" % years if years < 1e4 else "> 10,000 years")
        print("| %s | %.0f + %.0f | %s |" % (name, r1 * 86400, r2 * 86400, " | ".join(cols)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
