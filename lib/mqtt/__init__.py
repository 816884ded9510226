# MQTT 3.1.1 client for MicroPython and CPython: QoS 0/1/2 both ways, an in-flight
# window, and a store that keeps unacknowledged messages (in RAM or a flash ring).
from .codec import MQTTException, ProtocolError, MalformedPacket, TopicError
from .session import ConnectRefused, ConnectionLost, PacketTooLarge
from .store import StoreFull
from .compat import TLSError

__version__ = "1.0.0"


def __getattr__(name):
    # `from mqtt import MQTTClient` loads the blocking client on first use, so that an
    # asyncio application (mqtt.aio) never holds its code in RAM.  Any other name is a
    # submodule: MicroPython's `from . import x` asks this hook for one not loaded yet.
    if name == "MQTTClient":
        from .client import MQTTClient

        globals()[name] = MQTTClient
        return MQTTClient
    try:
        __import__("mqtt." + name)
    except ImportError:
        raise AttributeError(name)
    return globals()[name]
