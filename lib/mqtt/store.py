# In-flight store: the single source of truth for what the MQTT session still
# owes the broker or the broker still owes us [MQTT-3.1.2-4]:
#   - outgoing QoS 1/2 messages not yet complete, in the order they were accepted,
#     each in state AWAIT_PUBACK, AWAIT_PUBREC or AWAIT_PUBCOMP (PUBREL owed);
#   - inbound QoS 2 packet ids that got PUBREC and wait for PUBREL;
#   - the packet-id counter.
# MemoryStore keeps it in RAM in fixed slot arrays (no allocation per message:
# a slot references the caller's topic/msg objects).  The flash ring store keeps
# the same arrays and also journals every change to a file.

from .compat import const

AWAIT_PUBACK = const(1)   # QoS 1 PUBLISH sent or owed
AWAIT_PUBREC = const(2)   # QoS 2 PUBLISH sent or owed
AWAIT_PUBCOMP = const(3)  # QoS 2 PUBREL sent or owed (the PUBLISH must never be resent)


class StoreFull(Exception):
    """The store has no room for another message; nothing already accepted was dropped."""


class MemoryStore:
    persistent = False

    def __init__(self, capacity=16):
        self.capacity = capacity
        # Slot arrays; pid 0 marks a free slot ([MQTT-2.3.1-1]: ids are non-zero).
        self.pid = [0] * capacity
        self.state = [0] * capacity
        self.qos = [0] * capacity
        self.retain = [False] * capacity
        self.topic = [None] * capacity
        self.msg = [None] * capacity
        self.seq = [0] * capacity   # acceptance order, for resends in order [MQTT-4.6.0-1]
        # Bookkeeping for the session (not persistent state):
        self.sent = [False] * capacity  # sent on the current connection
        self.dup = [False] * capacity   # next PUBLISH of it is a re-delivery [MQTT-3.3.1-1]
        self.sent_at = [0] * capacity   # when its PUBLISH/PUBREL last went out (ms)
        self.tries = [0] * capacity     # in-session resends of the current step
        self.count = self._seq = self._last_pid = 0
        self.inbound = []  # QoS 2 ids awaiting PUBREL [MQTT-4.3.3-2]

    # -- packet ids ------------------------------------------------------------
    def next_pid(self, busy=()):
        """A non-zero id not held by any stored message nor in busy [MQTT-2.3.1-2]."""
        pid = self._last_pid
        for _ in range(65535):
            pid = pid % 65535 + 1
            if pid not in busy and pid not in self.pid:
                self._last_pid = pid
                return pid
        raise StoreFull("no free packet id")

    # -- outgoing --------------------------------------------------------------
    def find(self, pid):
        p = self.pid
        return p.index(pid) if pid in p else -1  # both scans run in C

    def add(self, pid, qos, retain, topic, msg):
        """Record an accepted QoS 1/2 message; returns its slot.  Raises StoreFull."""
        if self.count >= self.capacity:
            raise StoreFull("store full (%d messages)" % self.capacity)
        i = self.find(0)
        self.pid[i] = pid
        self.state[i] = AWAIT_PUBACK if qos == 1 else AWAIT_PUBREC
        self.qos[i] = qos
        self.retain[i] = retain
        self.topic[i] = topic
        self.msg[i] = msg
        self._seq += 1
        self.seq[i] = self._seq
        self.sent[i] = self.dup[i] = False
        self.tries[i] = 0
        self.count += 1
        return i

    def set_state(self, i, state):
        self.state[i] = state

    def remove(self, i):
        self.pid[i] = 0
        self.topic[i] = self.msg[i] = None
        self.sent[i] = False
        self.count -= 1

    def ordered(self):
        """Occupied slots in acceptance order (used on reconnect, not per message)."""
        return sorted([i for i in range(self.capacity) if self.pid[i]], key=lambda i: self.seq[i])

    def oldest_unsent(self):
        best = -1
        for i in range(self.capacity):
            if self.pid[i] and not self.sent[i] and (best < 0 or self.seq[i] < self.seq[best]):
                best = i
        return best

    # -- inbound QoS 2 ---------------------------------------------------------
    def in_room(self):
        """Can another inbound QoS 2 id be recorded?  (RAM: always.)"""
        return True

    def in_add(self, pid):
        self.inbound.append(pid)

    def in_remove(self, pid):
        self.inbound.remove(pid)

    # -- session ---------------------------------------------------------------
    def clear(self):
        """Discard the whole session, clean_session=1 [MQTT-3.1.2-6]."""
        for i in range(self.capacity):
            if self.pid[i]:
                self.remove(i)
        self.inbound = []

    def discard_session(self):
        """clean_session=1: the whole session goes [MQTT-3.1.2-6]."""
        self.clear()

    def clear_inbound(self):
        self.inbound = []

    def commit(self):
        pass

    def close(self):
        pass
