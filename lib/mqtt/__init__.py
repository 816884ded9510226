# MQTT 3.1.1 client for MicroPython and CPython: QoS 0/1/2 both ways, an in-flight
# window, and a store that keeps unacknowledged messages (in RAM or a flash ring).
from .codec import MQTTException, ProtocolError, MalformedPacket, TopicError
from .session import ConnectRefused, ConnectionLost, PacketTooLarge
from .store import StoreFull
from .client import MQTTClient
from .compat import TLSError

__version__ = "1.0.0"
