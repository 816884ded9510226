#!/usr/bin/env bash
# Install the Debian packages this project needs -- only the missing ones, and run
# `apt-get update` only when something is missing. Usage: tools/setup/apt.sh [PACKAGE...]
# (default: the list below). Afterwards mosquitto is not left running as a system service:
# tests start their own brokers on free ports, never the packaged one on 1883.
set -euo pipefail

if [ "$#" -gt 0 ]; then
    packages=("$@")
else
    packages=(
        mosquitto mosquitto-clients          # broker + mosquitto_pub/sub for tests
        build-essential pkg-config dpkg-dev  # building the MicroPython unix port
        libmbedtls-dev                       # its TLS (linked statically)
        debian-archive-keyring               # verifies the private apt source fetch
        python3-venv                         # .venv for the host tools
        openssl ca-certificates              # test certificates; HTTPS for fetch_umqtt.py
    )
    # the 32-bit MicroPython unix port (gcc -m32; `make micropython32`) needs an amd64 host
    if [ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ]; then
        packages+=(gcc-multilib)
    fi
fi

command -v dpkg-query >/dev/null 2>&1 || { echo "apt: dpkg-query not found: this setup needs Debian 12 or 13" >&2; exit 1; }

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "apt: all ${#packages[@]} packages already installed"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "apt: missing packages (${missing[*]}) and not root, and sudo is not available" >&2
    exit 1
fi

new_mosquitto=0
if printf '%s\n' "${missing[@]}" | grep -qx mosquitto; then
    new_mosquitto=1
fi

apt_get=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
echo "apt: installing ${missing[*]}"
"${apt_get[@]}" update
"${apt_get[@]}" install -y --no-install-recommends "${missing[@]}"

if [ "$new_mosquitto" = 1 ]; then
    # Debian's postinst enables and starts mosquitto.service (port 1883). Undo that.
    if [ -d /run/systemd/system ]; then
        echo "apt: stopping and disabling the packaged mosquitto.service"
        "${as_root[@]}" systemctl disable --now mosquitto.service || \
            echo "apt: warning: could not stop/disable mosquitto.service" >&2
    else
        # No systemd: the postinst may have started it through /etc/init.d; stop that
        # instance (by its pidfile) and keep it from starting at boot.
        pidfile=/run/mosquitto/mosquitto.pid
        if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "apt: stopping the mosquitto started by the package (pid $(cat "$pidfile"))"
            "${as_root[@]}" /etc/init.d/mosquitto stop || true
        fi
        if command -v update-rc.d >/dev/null 2>&1 && [ -x /etc/init.d/mosquitto ]; then
            "${as_root[@]}" update-rc.d mosquitto disable >/dev/null 2>&1 || true
        fi
    fi
fi

still_missing=()
for p in "${missing[@]}"; do
    installed "$p" || still_missing+=("$p")
done
if [ "${#still_missing[@]}" -gt 0 ]; then
    echo "apt: still not installed: ${still_missing[*]}" >&2
    exit 1
fi
echo "apt: done"
