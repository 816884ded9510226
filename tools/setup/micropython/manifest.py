# Frozen-module manifest for the MicroPython unix port that tools/setup/build_micropython.sh
# builds (passed as FROZEN_MANIFEST). Debian's "+ds" source has no lib/micropython-lib, so the
# port's own manifest (mip, unix-ffi, micropython-lib's ssl) cannot be used.

# asyncio from the source tree itself (task.py is provided by the C module _asyncio).
include("$(MPY_DIR)/extmod/asyncio")

# Our CPython-style ssl module over the built-in tls module.
module("ssl.py", opt=3)
