# Runs first on every boot (MicroPython on the ESP32).  Deliberately tiny: nothing here
# can fail, so a broken app or board file never stops the REPL from coming up.
# main.py does the rest (config, safe mode, watchdog, the app).
import gc

gc.collect()
