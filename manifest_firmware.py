# Freeze the MQTT library AND the sensor firmware into a custom MicroPython image: what a
# production board should run (docs/flash-and-deploy.md). Frozen bytecode and strings stay in
# flash; loaded from .mpy files they are copied into the heap. Build with FROZEN_MANIFEST:
#     include("$(PORT_DIR)/boards/manifest.py")
#     include("/path/to/this/repository/manifest_firmware.py")
# Relative paths here are resolved against this file's directory, wherever it is included from.

# lib/mqtt -> the package `mqtt` (manifest.py).
include("manifest.py")

# firmware/*.py -> top-level modules (import app, import board, ...): all of them but boot.py
# and main.py, which MicroPython runs by name from the file system, and the host board layer
# (hostboard.py, hostsim.py) and the host's command line (options.py), which tools/deploy.py
# leaves out on an ESP32 too.
for _name in ("app", "bme280", "board", "config", "device", "devtls", "esp32board",
              "hwsensors", "jsoncheck", "runtime", "sensors", "startup", "validate"):
    module(_name + ".py", base_path="firmware")
