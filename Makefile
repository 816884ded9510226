# Fresh-machine toolchain (Debian 12 bookworm / 13 trixie). `make setup`, then `make test`.
# Every step is cached: a second `make setup` only checks and takes seconds.
#
# Recipes see MICROPYTHON (build/bin/micropython, a symlink into the cache), MICROPYTHON32
# (build/bin/micropython32, the 32-bit port for memory figures), MICROPYTHON32_FROZEN
# (build/bin/micropython32-frozen, the same with the library and firmware frozen; built only by
# `make size` and `make micropython32-frozen`) and UMQTT_DIR.
# Heavy artefacts live outside the repo in CACHE_DIR (override: make CACHE_DIR=...).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv

ifndef CACHE_DIR
CACHE_DIR := $(shell echo "$${XDG_CACHE_HOME:-$$HOME/.cache}/ringmqtt")
endif
CODENAME := $(shell . /etc/os-release 2>/dev/null && echo "$$VERSION_CODENAME")

# MicroPython unix port, built from Debian 13's source package. The cache key holds the
# Debian codename, the version and a hash of the build inputs (script, manifest, ssl.py), so
# editing those rebuilds, while a fresh clone (new mtimes) reuses the cached binary.
MPY_VERSION := 1.25.0
MPY_INPUTS := tools/setup/build_micropython.sh \
	$(sort $(filter-out %/manifest32.py %/manifest32frozen.py,$(wildcard tools/setup/micropython/*.py)))
MPY_HASH := $(shell sha256sum $(MPY_INPUTS) | sha256sum | cut -c1-10)
MPY_PREFIX := $(CACHE_DIR)/micropython-$(MPY_VERSION)-$(CODENAME)-$(MPY_HASH)
MPY_CACHED := $(MPY_PREFIX)/bin/micropython

# The same source built 32-bit (gcc -m32, MICROPY_FORCE_32BIT=1; no ssl/tls, no ffi) for
# ESP32-like heap figures (tools/size.py, tools/bench.py), under its own cache key. About 70 s
# once on 2 cores, so `make setup` builds it -- on amd64 hosts only (gcc-multilib).
MPY32_INPUTS := tools/setup/build_micropython.sh tools/setup/micropython/manifest32.py
MPY32_HASH := $(shell sha256sum $(MPY32_INPUTS) | sha256sum | cut -c1-10)
MPY32_PREFIX := $(CACHE_DIR)/micropython32-$(MPY_VERSION)-$(CODENAME)-$(MPY32_HASH)
MPY32_CACHED := $(MPY32_PREFIX)/bin/micropython
HOST_ARCH := $(shell dpkg --print-architecture 2>/dev/null)
MPY32_SETUP := $(if $(filter amd64,$(HOST_ARCH)),micropython32)

# The 32-bit port with lib/mqtt and the firmware modules frozen (manifest32frozen.py, which
# includes manifest_firmware.py), as a production ESP32 image carries them: `make size`'s
# "32-bit port, frozen" heap column. Its cache key hashes the frozen sources too (every
# lib/mqtt module; firmware/*.py but what manifest_firmware.py leaves out), so editing them
# rebuilds: about 30 s on 2 idle cores (more when they are busy), which is why neither `make
# setup` nor `make test` builds it. Each build leaves a binary of about 0.5 MB in the cache:
# the 4 newest are kept.
MPY32F_FROZEN := manifest.py manifest_firmware.py $(sort $(shell find lib/mqtt -name '*.py')) \
	$(filter-out firmware/main.py firmware/boot.py firmware/hostboard.py firmware/hostsim.py \
		firmware/options.py, \
		$(sort $(wildcard firmware/*.py)))
MPY32F_INPUTS := $(MPY32_INPUTS) tools/setup/micropython/manifest32frozen.py $(MPY32F_FROZEN)
MPY32F_HASH := $(shell sha256sum $(MPY32F_INPUTS) | sha256sum | cut -c1-10)
MPY32F_PREFIX := $(CACHE_DIR)/micropython32-frozen-$(MPY_VERSION)-$(CODENAME)-$(MPY32F_HASH)
MPY32F_CACHED := $(MPY32F_PREFIX)/bin/micropython
MPY32F_SIZE := $(if $(filter amd64,$(HOST_ARCH)),micropython32-frozen)

# The venv stamp is named after requirements.txt's content: it reinstalls when that changes.
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-12)
VENV_STAMP := $(VENV)/.requirements-$(REQ_HASH).stamp

UMQTT_FILES := build/umqtt/umqtt/simple.py build/umqtt/ussl.py

export MICROPYTHON := $(CURDIR)/build/bin/micropython
export MICROPYTHON32 := $(CURDIR)/build/bin/micropython32
export MICROPYTHON32_FROZEN := $(CURDIR)/build/bin/micropython32-frozen
export UMQTT_DIR := $(CURDIR)/build/umqtt

.PHONY: help setup apt venv micropython micropython32 micropython32-frozen umqtt mpy mip install test run demo clean distclean

help: ## List the targets
	@echo "usage: make TARGET   (cache: $(CACHE_DIR))"
	@grep -hE '^[a-z][a-z0-9-]*:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{ printf "  %-20s %s\n", $$1, $$2 }'

setup: apt venv micropython $(MPY32_SETUP) umqtt ## Everything below: apt + venv + micropython(32) + umqtt

apt: ## Install missing Debian packages (mosquitto, build tools, mbedTLS, python3-venv, openssl)
	@tools/setup/apt.sh

venv: $(VENV_STAMP) ## Python venv in .venv with the pinned requirements.txt

$(VENV)/bin/python: | apt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(VENV_STAMP): | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
	rm -f $(VENV)/.requirements-*.stamp
	touch $@

micropython: $(MPY_CACHED) ## MicroPython unix port with ssl + asyncio (cached), linked at build/bin/micropython
	@mkdir -p build/bin
	@if [ "$$(readlink build/bin/micropython)" != "$(MPY_CACHED)" ]; then \
		ln -sfn "$(MPY_CACHED)" build/bin/micropython; \
		echo "build/bin/micropython -> $(MPY_CACHED)"; \
	fi

$(MPY_CACHED): | apt
	@[ -n "$(CODENAME)" ] || { echo "no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
	tools/setup/build_micropython.sh "$(MPY_PREFIX)" "$(MPY_VERSION)" "$(CACHE_DIR)"

micropython32: $(MPY32_CACHED) ## 32-bit unix port for memory figures (cached), linked at build/bin/micropython32
	@mkdir -p build/bin
	@if [ "$$(readlink build/bin/micropython32)" != "$(MPY32_CACHED)" ]; then \
		ln -sfn "$(MPY32_CACHED)" build/bin/micropython32; \
		echo "build/bin/micropython32 -> $(MPY32_CACHED)"; \
	fi

$(MPY32_CACHED): | apt
	@[ -n "$(CODENAME)" ] || { echo "no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
	@[ "$(HOST_ARCH)" = amd64 ] || { echo "the 32-bit port is built with gcc -m32: needs an amd64 host, not '$(HOST_ARCH)'" >&2; exit 1; }
	tools/setup/build_micropython.sh "$(MPY32_PREFIX)" "$(MPY_VERSION)" "$(CACHE_DIR)" 32

micropython32-frozen: $(MPY32F_CACHED) ## 32-bit port with lib/mqtt + firmware frozen, for `make size` (cached per source hash), linked at build/bin/micropython32-frozen
	@mkdir -p build/bin
	@if [ "$$(readlink build/bin/micropython32-frozen)" != "$(MPY32F_CACHED)" ]; then \
		ln -sfn "$(MPY32F_CACHED)" build/bin/micropython32-frozen; \
		echo "build/bin/micropython32-frozen -> $(MPY32F_CACHED)"; \
	fi

$(MPY32F_CACHED): | apt
	@[ -n "$(CODENAME)" ] || { echo "no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
	@[ "$(HOST_ARCH)" = amd64 ] || { echo "the 32-bit port is built with gcc -m32: needs an amd64 host, not '$(HOST_ARCH)'" >&2; exit 1; }
	tools/setup/build_micropython.sh "$(MPY32F_PREFIX)" "$(MPY_VERSION)" "$(CACHE_DIR)" 32-frozen
	@ls -1dt "$(CACHE_DIR)"/micropython32-frozen-* | tail -n +5 | xargs -r rm -rf

# `make size` (mk/deploy.mk) also reports heap figures, measured on the unix ports (about 70 s;
# SIZE_HEAP=0 skips them): tools/size.py reads SIZE_HEAP from its environment. Only here
# (unless SIZE_HEAP=0) is the frozen 32-bit port built, or rebuilt after lib/ or firmware/
# changed.
size: micropython $(MPY32_SETUP) $(if $(filter 0,$(SIZE_HEAP)),,$(MPY32F_SIZE))
size: export SIZE_HEAP ?= 1

umqtt: $(UMQTT_FILES) ## micropython-lib umqtt.simple 1.3.4 (sha256-checked) in build/umqtt

$(UMQTT_FILES) &: tools/setup/fetch_umqtt.py | $(VENV)/bin/python
	$(PYTHON) tools/setup/fetch_umqtt.py --cache-dir "$(CACHE_DIR)" --dest build/umqtt \
		--pip-python $(VENV)/bin/python

mip: $(VENV_STAMP) ## Rebuild mip/ (the library as .mpy for `mip install github:OWNER/REPO/mip/package.json`)
	$(VENV)/bin/python tools/build_mip.py

mpy: $(VENV_STAMP) ## Precompile lib/mqtt and lib/mqttc to .mpy in build/mpy (what the unix port and a device load)
	$(VENV)/bin/python tools/build_mpy.py

# The unix port looks in ~/.micropython/lib by default (unless MICROPYPATH is set); CPython
# users `pip install .` instead (pyproject.toml).
MICROPY_LIB ?= $(HOME)/.micropython/lib

install: mpy ## unix port: the library and mqttc, precompiled, into ~/.micropython/lib (MICROPY_LIB=dir)
	mkdir -p "$(MICROPY_LIB)"
	rm -rf "$(MICROPY_LIB)/mqtt" "$(MICROPY_LIB)/mqttc"
	cp -r build/mpy/mqtt build/mpy/mqttc "$(MICROPY_LIB)/"
	@echo "installed in $(MICROPY_LIB): micropython -m mqttc --help; import mqtt"

test: setup mpy ## Run the host test suite
	$(VENV)/bin/python -m pytest -q host_tests

run: setup ## The sensor firmware on the unix port against a local Mosquitto (RUN_SECONDS=N stops after N s)
	tools/run_firmware.sh

demo: setup mpy ## mqttc round trip at QoS 0, 1 and 2 on the unix port against a local Mosquitto
	tools/run_demo.sh

clean: ## Remove build/
	rm -rf build

distclean: clean ## Remove build/ and .venv (the cache in CACHE_DIR stays)
	rm -rf $(VENV)

include mk/deploy.mk
