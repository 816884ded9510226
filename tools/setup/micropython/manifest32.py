# Frozen-module manifest for the 32-bit MicroPython unix port (build_micropython.sh with
# BITS=32, for ESP32-like memory figures). It has no `tls` module, so no ssl.py over it:
# only asyncio, from the source tree itself (task.py is provided by the C module _asyncio).
include("$(MPY_DIR)/extmod/asyncio")
