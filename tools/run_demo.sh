#!/usr/bin/env bash
# `make run`: a local Mosquitto on a free loopback port, then the mqttc round trip on
# the MicroPython unix port: a subscriber at QoS 2 and one publication at each QoS.
# Everything started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
MP=${MICROPYTHON:-build/bin/micropython}
RUN="$MP -X heapsize=128K tools/mqttc.py"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/mosquitto.conf"
[ "$(id -u)" = 0 ] && echo "user root" >> "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" 2> "$work/mosquitto.log" &
pids+=($!)
for _ in $(seq 50); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
echo "== Mosquitto (PID ${pids[0]}) on 127.0.0.1:$port; client: $($MP -c 'import sys; print(sys.implementation.name, sys.version)')"

$RUN sub -p "$port" -t 'demo/#' -q 2 -C 3 -v -d > "$work/sub.out" 2> "$work/sub.log" &
sub=$!
pids+=($sub)
for _ in $(seq 100); do grep -q '< SUBACK' "$work/sub.log" 2>/dev/null && break; sleep 0.05; done
echo "== subscriber: mqttc sub -t 'demo/#' -q 2 -C 3 -v   (unix port)"

for q in 0 1 2; do
    echo "== mqttc pub -t demo/qos$q -m 'hello at QoS $q' -q $q -d"
    $RUN pub -p "$port" -t "demo/qos$q" -m "hello at QoS $q" -q "$q" -d 2>&1 | sed 's/^/   /'
done

wait "$sub"
echo "== the subscriber received (topic payload):"
sed 's/^/   /' "$work/sub.out"
echo "== and its packet log:"
sed 's/^/   /' "$work/sub.log"
n=$(wc -l < "$work/sub.out")
[ "$n" = 3 ] && echo "== OK: QoS 0, 1 and 2 messages went out and came back" || { echo "== FAILED: got $n of 3"; exit 1; }
