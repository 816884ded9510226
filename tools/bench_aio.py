#!/usr/bin/env python3
"""Benchmark the asyncio client (mqtt.aio) against the blocking one (mqtt.MQTTClient).

usage: .venv/bin/python tools/bench_aio.py [--runs N] [--messages N] [--only speed,heap] [--json]

Starts its own Mosquitto (tools/bench.py's Broker: defaults, one loopback listener) and runs
every case in a fresh child process (tools/bench_mp.py), interleaved run by run; medians.

  speed  msg/s, 2000 x 64-byte messages, window 16, on CPython and on the MicroPython unix
         port (-X heapsize=128K, lib/ as .mpy): blocking vs asyncio at QoS 0/1/2, and the
         asyncio client publishing from 8 tasks at once (QoS 1).  Timed region as in
         tools/bench.py: first publish until the last ack (QoS 1/2); QoS 0 until the last
         publish returned plus a round trip through the broker (blocking: PINGREQ/PINGRESP,
         asyncio: SUBSCRIBE/SUBACK).
  heap   on the 32-bit unix port (an ESP32's word size) and the 64-bit one: heap after
         importing each client (asyncio's own share shown apart), and live heap with a
         connected client holding 16 QoS 1 messages in flight.

Prints a Markdown report; --json adds the raw figures.  Progress goes to stderr.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
from bench import Broker, Case, interleave, log, mp_cmd, mp_env, run_child, compile_lib  # noqa: E402

PY = sys.executable


def speed_cases(n, tmp):
    bytecode = os.path.join(tmp, "bytecode")
    compile_lib(bytecode)
    mp = mp_env(bytecode)
    py = {"PYTHONPATH": bench.LIB}
    cases = {}
    for rt in ("py", "mp"):
        for front in ("ours", "aio"):
            for q in (0, 1, 2):
                key = "%s-%s-q%d" % (rt, front, q)
                case = "%s%d" % (front, q)
                if rt == "py":
                    fn = (lambda p, k, c, case=case: [PY, bench.WORKER, case, p, k, c])
                else:
                    fn = (lambda p, k, c, case=case: mp_cmd(case, p, k, c))
                cases[key] = Case(key, fn, py if rt == "py" else mp, n)
        key = "%s-aio-q1-8tasks" % rt
        if rt == "py":
            fn = (lambda p, k, c: [PY, bench.WORKER, "aio1", p, k, c, "tasks=8"])
        else:
            fn = (lambda p, k, c: mp_cmd("aio1", p, k, c, "tasks=8"))
        cases[key] = Case(key, fn, py if rt == "py" else mp, n)
    return cases


def speed_table(cases):
    def med(k):
        return cases[k].median

    lines = ["| runtime | QoS | blocking msg/s | asyncio msg/s | asyncio / blocking |",
             "|---|---:|---:|---:|---:|"]
    for rt, name in (("py", "CPython"), ("mp", "unix port")):
        for q in (0, 1, 2):
            b, a = med("%s-ours-q%d" % (rt, q)), med("%s-aio-q%d" % (rt, q))
            lines.append("| %s | %d | %s | %s | %s |" % (
                name, q, "%.0f" % b if b else "-", "%.0f" % a if a else "-",
                "%.2f×" % (a / b) if a and b else "-"))
        b, a = med("%s-ours-q1" % rt), med("%s-aio-q1-8tasks" % rt)
        lines.append("| %s | 1, 8 tasks | %s | %s | %s |" % (
            name, "%.0f" % b if b else "-", "%.0f" % a if a else "-", "%.2f×" % (a / b) if a and b else "-"))
    return lines


def heap(port, tmp):
    bytecode = os.path.join(tmp, "bytecode-heap")
    compile_lib(bytecode)
    res = {}
    for bits, mp in ((32, bench.MICROPYTHON32), (64, bench.MICROPYTHON)):
        if not os.path.exists(mp):
            log("heap: %s missing (make setup)" % mp)
            continue
        r = {}
        for case in ("heap", "aioheap"):
            out, err = run_child([mp, "-X", "heapsize=128K", bench.WORKER, case, str(port), "0",
                                  "bench-%s-%d" % (case, os.getpid())], mp_env(bytecode))
            if err:
                log("heap %s, %d-bit: %s" % (case, bits, err))
            r[case] = out
        res[bits] = r
    return res


def heap_table(res):
    lines = ["| port | blocking: import | blocking: 16 in flight | asyncio: import (asyncio itself) "
             "| asyncio: 16 in flight | asyncio on top of blocking |",
             "|---|---:|---:|---:|---:|---:|"]
    for bits in (32, 64):
        r = res.get(bits)
        if not r or not r.get("heap") or not r.get("aioheap"):
            continue
        b, a = r["heap"], r["aioheap"]
        lines.append("| %d-bit | %.1f KB | %.1f KB | %.1f KB (%.1f KB) | %.1f KB | %+.1f KB |" % (
            bits, b["import"] / 1024, b["footprint"] / 1024, a["import"] / 1024, a["asyncio"] / 1024,
            a["footprint"] / 1024, (a["footprint"] - b["footprint"]) / 1024))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--only", default="speed,heap")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    only = a.only.split(",")
    tmp = tempfile.mkdtemp(prefix="bench-aio-")
    broker = Broker(tmp)
    port = broker.start()
    report, raw = [], {}
    try:
        if "speed" in only:
            cases = speed_cases(a.messages, tmp)
            interleave(cases, port, a.runs, "speed")
            report += ["**asyncio vs blocking**, %d × 64-byte messages, window 16, median of %d "
                       "interleaved runs:" % (a.messages, a.runs), ""] + speed_table(cases) + [""]
            raw["speed"] = {k: {"runs": c.runs, "median": c.median, "errors": c.errors} for k, c in cases.items()}
        if "heap" in only:
            res = heap(port, tmp)
            report += ["**Heap** (`gc.mem_alloc()`, 128K heap; live figures after `gc.collect()`):", ""]
            report += heap_table(res) + [""]
            raw["heap"] = res
    finally:
        broker.stop()
    print("\n".join(report))
    if a.json:
        print(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
