# Device entry point (MicroPython runs /main.py after /boot.py), and the host one:
#   MICROPYPATH=.frozen:lib:firmware build/bin/micropython -X heapsize=128K firmware/main.py \
#       --board boards/unix.json [--port N] [--ring PATH] ...     (see app.USAGE)
#   PYTHONPATH=lib:firmware python3 firmware/main.py --board boards/unix.json ...
# A bad configuration or safe mode returns to the REPL on a device (exit 2 / 3 on the host);
# it never reboots in a loop.
import app

app.main()
