# Device targets: flash MicroPython, deploy the app, report the footprint.
# Included by the main Makefile (`include mk/deploy.mk`), which defines VENV and `venv`.
# Walk-through: docs/flash-and-deploy.md.
#
#   make partitions BOARD=<name>
#   make flash  BOARD=<name> PORT=<serial> FIRMWARE=<micropython .bin> [DRY_RUN=1]
#   make deploy BOARD=<name> PORT=<serial> [DRY_RUN=1] [FROZEN=1]
#   make size   [MAX_TOTAL=<bytes>] [SIZE_HEAP=0]
#
# BOARD names boards/<name>.json. DRY_RUN=1 checks everything and prints the plan and the exact
# commands without touching a device. FROZEN=1 deploys to a board whose image has the library and
# the firmware frozen (manifest_firmware.py): only boot.py, main.py, the config and the
# certificates are copied, after checking the image, and copies of the frozen modules that an
# earlier deploy left are removed. PARTITIONS_ARGS / FLASH_ARGS / DEPLOY_ARGS / SIZE_ARGS pass
# extra options (e.g. DEPLOY_ARGS=--force, PARTITIONS_ARGS="--output t.bin"; see
# `.venv/bin/python tools/deploy.py --help`).

BOARD ?=
PORT ?=
FIRMWARE ?=
DRY_RUN ?=
FROZEN ?=
MAX_TOTAL ?=
PARTITIONS_ARGS ?=
FLASH_ARGS ?=
DEPLOY_ARGS ?=
SIZE_ARGS ?=

# DRY_RUN=1 (or yes/true) -> --dry-run; empty or 0 -> a real run.
DEVICE_DRY_RUN := $(if $(filter-out 0 no false,$(DRY_RUN)),--dry-run)
# FROZEN=1 (or yes/true) -> --frozen; empty or 0 -> the library and the firmware as .mpy.
DEVICE_FROZEN := $(if $(filter-out 0 no false,$(FROZEN)),--frozen)

DEVICE_BOARD_PORT = $(if $(BOARD),--board "$(BOARD)") $(if $(PORT),--port "$(PORT)")

.PHONY: partitions flash deploy size

partitions: venv ## The board's partition table (MicroPython's layout + the ring's partition): BOARD=name
	$(strip $(VENV)/bin/python tools/partitions.py $(if $(BOARD),--board "$(BOARD)") $(PARTITIONS_ARGS))

flash: venv ## Flash MicroPython (+ the board's partition table): BOARD=name PORT=/dev/ttyUSB0 FIRMWARE=file.bin [DRY_RUN=1]
	$(strip $(VENV)/bin/python tools/flash.py $(DEVICE_BOARD_PORT) \
		$(if $(FIRMWARE),--firmware "$(FIRMWARE)") $(DEVICE_DRY_RUN) $(FLASH_ARGS))

deploy: venv ## Copy lib/, firmware/ (.mpy) and the board config: BOARD=name PORT=/dev/ttyUSB0 [DRY_RUN=1] [FROZEN=1: frozen image]
	$(strip $(VENV)/bin/python tools/deploy.py $(DEVICE_BOARD_PORT) $(DEVICE_DRY_RUN) $(DEVICE_FROZEN) \
		$(DEPLOY_ARGS))

size: venv ## .mpy bytes of each library module for the ESP32 and the total; heap on the unix ports, .mpy and frozen [MAX_TOTAL=bytes]
	$(strip $(VENV)/bin/python tools/size.py --arch xtensawin \
		$(if $(MAX_TOTAL),--max-total $(MAX_TOTAL)) $(SIZE_ARGS))
