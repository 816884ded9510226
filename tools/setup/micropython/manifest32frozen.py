# Frozen-module manifest for the 32-bit unix port with the library and the firmware frozen
# (build_micropython.sh with BITS=32-frozen; `make micropython32-frozen`): asyncio as in the
# 32-bit port, plus lib/mqtt and the firmware modules exactly as manifest_firmware.py freezes
# them for a production ESP32 image. Heap figures on this port (`make size`) are those of a
# board running the frozen image.
include("manifest32.py")
include("../../../manifest_firmware.py")
