# Freeze the MQTT library into a custom MicroPython firmware (see docs/flash-and-deploy.md).
# Include it from your own manifest, after the port's, and build with FROZEN_MANIFEST:
#     include("$(PORT_DIR)/boards/manifest.py")
#     include("/path/to/this/repository/manifest.py")
# Relative paths here are resolved against this file's directory, wherever it is included from.
metadata(
    description="MQTT 3.1.1 client for MicroPython: QoS 0/1/2, in-flight window, flash ring store",
    version="1.0.0",
)

# lib/mqtt/**/*.py -> frozen as the package `mqtt` (import mqtt, from mqtt import MQTTClient).
package("mqtt", base_path="lib")
