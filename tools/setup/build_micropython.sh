#!/usr/bin/env bash
# Build the MicroPython unix port from Debian 13's `micropython` source package, into
# PREFIX/bin/micropython: the 64-bit port (frozen ssl + asyncio, static mbedTLS), or with
# BITS=32 a 32-bit one (MICROPY_FORCE_32BIT=1, gcc -m32) for ESP32-like memory figures, or with
# BITS=32-frozen that 32-bit port with the library and the firmware frozen into it.
#
#   usage: tools/setup/build_micropython.sh PREFIX VERSION CACHE_DIR [BITS]
#
# PREFIX   final install directory (normally CACHE_DIR/micropython[32[-frozen]]-VERSION-
#          CODENAME-HASH); built in a temporary directory and renamed into place only when
#          complete, so an interrupted build never leaves a PREFIX that looks finished.
# VERSION  expected upstream version of the source package (e.g. 1.25.0).
# CACHE_DIR holds the private apt state (CACHE_DIR/apt-SUITE) and the downloaded source
#          package (CACHE_DIR/src), so a rebuild does not download again.
# BITS     64 (default), 32 or 32-frozen. The 32-bit port has no ssl/tls, cryptolib, nor
#          hashlib's md5 and sha1: the "+ds" source has no mbedTLS to build, and Debian's i386
#          one would need a foreign dpkg architecture. Like the 64-bit port: no ffi, btree or
#          jni. It needs gcc-multilib (amd64 host). Frozen: asyncio only
#          (micropython/manifest32.py).
#          32-frozen: the same port, also freezing lib/mqtt and the firmware modules as a
#          production ESP32 image does (micropython/manifest32frozen.py, which includes the
#          repository's manifest_firmware.py), for heap figures with the code in flash.
#
# The source comes through a private apt configuration; /etc/apt is never touched.
# Environment: MPY_SOURCE_SUITE (default trixie), MPY_JOBS (default 2).
set -euo pipefail

if [ "$#" -lt 3 ] || [ "$#" -gt 4 ]; then
    echo "usage: $0 PREFIX VERSION CACHE_DIR [BITS]" >&2
    exit 2
fi
prefix=$1
version=$2
cache_dir=$3
bits=${4:-64}
case "$bits" in
    32|64) variant=$bits ;;
    32-frozen) variant=$bits; bits=32 ;;
    *) echo "build_micropython: BITS must be 32, 32-frozen or 64, not '$bits'" >&2; exit 2;;
esac
suite=${MPY_SOURCE_SUITE:-trixie}
jobs=${MPY_JOBS:-2}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "$variant" = 32-frozen ]; then
    manifest=$here/micropython/manifest32frozen.py
elif [ "$bits" = 32 ]; then
    manifest=$here/micropython/manifest32.py
else
    manifest=$here/micropython/manifest.py
fi

log() { echo "build_micropython: $*"; }
die() { echo "build_micropython: error: $*" >&2; exit 1; }

if [ -x "$prefix/bin/micropython" ]; then
    log "already built: $prefix/bin/micropython"
    exit 0
fi

for tool in gcc make pkg-config python3 apt-get dpkg-source flock; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (run 'make apt' first)"
done
if [ "$bits" = 32 ]; then
    # gcc-multilib: a 32-bit libc to link against (libc6-dev-i386, lib32gcc)
    [ -f /usr/include/x86_64-linux-gnu/gnu/stubs-32.h ] \
        || die "no 32-bit libc headers (gcc-multilib on an amd64 host: run 'make apt' first)"
else
    [ -f /usr/include/mbedtls/ssl.h ] || die "mbedTLS headers not found (run 'make apt' first)"
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || die "$keyring not found (run 'make apt' first)"

mkdir -p "$cache_dir"
# One build at a time per cache (a second `make` waits, then finds the result).
exec 9>"$cache_dir/.build-micropython.lock"
flock 9
if [ -x "$prefix/bin/micropython" ]; then
    log "built meanwhile by another process: $prefix/bin/micropython"
    exit 0
fi
# Leftovers of builds that were killed (we hold the lock, so none is running).
rm -rf "$cache_dir"/.build-micropython-*

# --- 1. the source package, through a private apt configuration --------------------------
src_cache=$cache_dir/src
find_dsc() {
    # newest cached .dsc of this upstream version (any Debian revision)
    ls -1 "$src_cache"/micropython_"$version"+ds*.dsc 2>/dev/null | sort -V | tail -n 1
}
dsc=$(find_dsc || true)
if [ -z "$dsc" ]; then
    aptdir=$cache_dir/apt-$suite
    mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial" "$src_cache"
    echo "deb-src [signed-by=$keyring] http://deb.debian.org/debian $suite main" \
        > "$aptdir/sources.list"
    apt_opts=(
        -o "Dir::Etc::sourcelist=$aptdir/sources.list"
        -o Dir::Etc::sourceparts=/nonexistent
        -o "Dir::State::Lists=$aptdir/lists"
        -o "Dir::Cache::archives=$aptdir/archives"
        -o Dir::Cache::pkgcache=
        -o Dir::Cache::srcpkgcache=
        -o "APT::Sandbox::User=$(id -un)"
    )
    log "fetching the $suite source index (private apt state in $aptdir)"
    apt-get -q "${apt_opts[@]}" update
    dl=$(mktemp -d "$src_cache/.download-XXXXXX")
    log "downloading the micropython source package"
    (cd "$dl" && apt-get -q "${apt_opts[@]}" source --download-only micropython)
    got=$(ls -1 "$dl"/micropython_*.dsc | head -n 1)
    got_version=$(sed -n 's/^Version: //p' "$got")       # e.g. 1.25.0+ds-1
    got_upstream=${got_version#*:}
    got_upstream=${got_upstream%-*}
    got_upstream=${got_upstream%%+*}
    if [ "$got_upstream" != "$version" ]; then
        rm -rf "$dl"
        die "$suite now ships micropython $got_version, not $version: update MPY_VERSION in the Makefile"
    fi
    mv -f "$dl"/micropython_* "$src_cache"/
    rm -rf "$dl" "$aptdir"   # the index is only needed for this download
    dsc=$(find_dsc)
fi
log "source package: $dsc"

# --- 2. build in a temporary directory --------------------------------------------------
work=$(mktemp -d "$cache_dir/.build-micropython-XXXXXX")
trap 'rm -rf "$work"' EXIT
dpkg-source -q -x "$dsc" "$work/src" >/dev/null
top=$work/src

if [ "$variant" = 32-frozen ]; then
    # What this binary freezes from the repository, with sha256s, taken before the build (an
    # edit during it then shows as a difference): PREFIX/FROZEN_SOURCES, "sha256  path" lines
    # (paths relative to the repository, the manifests included). tools/bench.py compares it
    # with the tree to refuse a binary that no longer holds what lib/ and firmware/ hold.
    python3 - "$top" "$manifest" "$(cd "$here/../.." && pwd)" >"$work/FROZEN_SOURCES" <<'PY' \
        || die "could not list the frozen sources (MicroPython's tools/manifestfile.py)"
import hashlib, os, sys
top, manifest, repo = sys.argv[1:]
repo = os.path.realpath(repo)
sys.path.insert(0, os.path.join(top, "tools"))
import manifestfile
mf = manifestfile.ManifestFile(manifestfile.MODE_FREEZE, {
    "MPY_DIR": top, "MPY_LIB_DIR": os.path.join(top, "lib", "micropython-lib"),
    "PORT_DIR": os.path.join(top, "ports", "unix"),
    "BOARD_DIR": os.path.join(top, "ports", "unix", "variants", "standard")})
mf.execute(manifest)
paths = {f.full_path for f in mf.files()}
paths |= {os.path.join(repo, "manifest.py"), os.path.join(repo, "manifest_firmware.py")}
for path in sorted(paths):
    rel = os.path.relpath(os.path.realpath(path), repo)
    if not rel.startswith(".."):
        with open(path, "rb") as f:
            print("%s  %s" % (hashlib.sha256(f.read()).hexdigest(), rel))
PY
fi

# mpy-cross first, in its own make: a command-line FROZEN_MANIFEST would otherwise leak into
# it (undefined reference to mp_qstr_frozen_const_pool).
log "building mpy-cross"
make -C "$top/mpy-cross" -j"$jobs" >"$work/mpy-cross.log" 2>&1 || {
    tail -n 40 "$work/mpy-cross.log" >&2; die "mpy-cross build failed"; }

# The "+ds" source has no lib/{micropython-lib,axtls,berkeley-db-1.xx,libffi,mbedtls}: turn
# those features off and link Debian's mbedTLS statically (the binary then needs only libc).
if [ "$bits" = 32 ]; then
    # -m32 via MICROPY_FORCE_32BIT; no TLS at all (see BITS above). As Debian's i386 build
    # does: no native _Float16 (gcc wants -msse2 for it on i386).
    port_args=(
        MICROPY_FORCE_32BIT=1
        MICROPY_PY_BTREE=0 MICROPY_PY_FFI=0 MICROPY_PY_JNI=0
        MICROPY_PY_SSL=0 MICROPY_SSL_AXTLS=0 MICROPY_SSL_MBEDTLS=0
        CFLAGS_EXTRA=-DMICROPY_FLOAT_USE_NATIVE_FLT16=0
    )
else
    port_args=(
        MICROPY_PY_BTREE=0 MICROPY_PY_FFI=0 MICROPY_PY_JNI=0
        MICROPY_SSL_AXTLS=0 MICROPY_SSL_MBEDTLS=1
        LDFLAGS_EXTMOD="-l:libmbedtls.a -l:libmbedx509.a -l:libmbedcrypto.a"
    )
fi
log "building ports/unix, $variant (make -j$jobs)"
make -C "$top/ports/unix" -j"$jobs" "${port_args[@]}" FROZEN_MANIFEST="$manifest" \
    >"$work/unix.log" 2>&1 || { tail -n 40 "$work/unix.log" >&2; die "ports/unix build failed"; }

binary=$top/ports/unix/build-standard/micropython
[ -x "$binary" ] || die "no binary at $binary"

# --- 3. check the result ----------------------------------------------------------------
if [ "$bits" = 32 ]; then
    "$binary" -c "import sys, asyncio, socket, select, json, hashlib; assert sys.maxsize == 2**31 - 1, sys.maxsize" \
        || die "built binary fails the import / 32-bit check"
fi
if [ "$variant" = 32-frozen ]; then
    # Only .frozen on the path, from an empty directory: the frozen modules must be the ones
    # imported (a frozen module's __file__ is its name in the image, e.g. mqtt/client.py).
    (cd "$work" && MICROPYPATH=.frozen "$binary" -c "
import mqtt, mqtt.client, mqtt.ring, config, sensors, validate
for m in (mqtt, mqtt.client, mqtt.ring, config, sensors, validate):
    assert not m.__file__.startswith('/') and m.__file__.endswith('.py'), m.__file__
") || die "built binary does not import lib/mqtt and the firmware from .frozen"
elif [ "$bits" = 64 ]; then
    if ldd "$binary" | grep -i mbed >&2; then
        die "binary links mbedTLS dynamically"
    fi
    "$binary" -c "import ssl, tls, asyncio, socket, select, json, hashlib; ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)" \
        || die "built binary fails the import check"
fi

# --- 4. install atomically --------------------------------------------------------------
stage=$work/prefix
mkdir -p "$stage/bin"
cp "$binary" "$stage/bin/micropython"
if [ "$variant" = 32-frozen ]; then
    cp "$work/FROZEN_SOURCES" "$stage/FROZEN_SOURCES"
fi
{
    echo "micropython $("$binary" -c 'import sys; print(sys.version)')"
    echo "source: $(basename "$dsc") (Debian $suite)"
    echo "built on: $(. /etc/os-release && echo "$PRETTY_NAME"), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if [ "$bits" = 32 ]; then
        echo "32-bit (MICROPY_FORCE_32BIT=1): sys.maxsize $("$binary" -c 'import sys; print(sys.maxsize)'); no ssl/tls, no ffi"
    else
        echo "mbedTLS: $("$binary" -c 'import tls; print(tls.MBEDTLS_VERSION)')"
    fi
    if [ "$variant" = 32-frozen ]; then
        echo "frozen: asyncio, lib/mqtt and the firmware modules ($(cd "$work" && MICROPYPATH=.frozen "$binary" -c 'import mqtt; print(mqtt.__version__)'), manifest_firmware.py)"
    fi
} > "$stage/BUILDINFO"
mkdir -p "$(dirname "$prefix")"
mv -T "$stage" "$prefix"
log "installed $prefix/bin/micropython"
sed 's/^/  /' "$prefix/BUILDINFO"
