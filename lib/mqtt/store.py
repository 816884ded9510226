# In-flight store: the single source of truth for what the MQTT session still
# owes the broker or the broker still owes us [MQTT-3.1.2-4]:
#   - outgoing QoS 1/2 messages not yet complete, in the order they were accepted,
#     each in state AWAIT_PUBACK, AWAIT_PUBREC or AWAIT_PUBCOMP (PUBREL owed);
#   - inbound QoS 2 packet ids that got PUBREC and wait for PUBREL;
#   - the packet-id counter.
# MemoryStore is the index: it keeps that state in RAM in fixed slot arrays (no
# allocation per message: a slot references the caller's topic/msg objects).  With a
# journal (the flash ring, ring.py) every change is also written to the medium before
# the index takes it, and the journal rebuilds the index at start-up.

from .compat import const

AWAIT_PUBACK = const(1)   # QoS 1 PUBLISH sent or owed
AWAIT_PUBREC = const(2)   # QoS 2 PUBLISH sent or owed
AWAIT_PUBCOMP = const(3)  # QoS 2 PUBREL sent or owed (the PUBLISH must never be resent)


class StoreFull(Exception):
    """The store has no room for another message; nothing already accepted was dropped."""


class MemoryStore:
    def __init__(self, capacity=16, journal=None):
        """journal: None (RAM only) or a ring.Ring that records every change durably."""
        self.capacity = capacity
        self.journal = journal
        self.persistent = journal is not None
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
        # Held (quarantined) messages: set aside, never sent until released.
        # order -> [qos, retain, topic, msg] (topic/msg None: on the medium only)
        self.held = {}
        if journal:
            journal.attach(self)  # replays what the medium holds into the index

    def grow(self, n):
        """Room for n more slots (recovery found more messages than the capacity)."""
        self.capacity += n
        for a in (self.pid, self.state, self.qos, self.seq, self.sent_at, self.tries):
            a.extend([0] * n)
        for a in (self.retain, self.sent, self.dup):
            a.extend([False] * n)
        self.topic.extend([None] * n)
        self.msg.extend([None] * n)

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
        j = self.journal
        # the journal writes first (it may raise): the index only holds what is recorded
        if j and not j.put(i, pid, qos, retain, topic, msg, self._seq + 1):
            topic = msg = None  # not cached: read back from the medium when sent (load)
        return self.put(i, pid, qos, retain, topic, msg, self._seq + 1,
                        AWAIT_PUBACK if qos == 1 else AWAIT_PUBREC)

    def put(self, i, pid, qos, retain, topic, msg, seq, state):
        """Fill slot i (index only, nothing journaled: also used by recovery)."""
        self.pid[i] = pid
        self.state[i] = state
        self.qos[i] = qos
        self.retain[i] = retain
        self.topic[i] = topic
        self.msg[i] = msg
        if seq > self._seq:
            self._seq = seq
        self.seq[i] = seq
        self.sent[i] = self.dup[i] = False
        self.tries[i] = 0
        self.count += 1
        return i

    def load(self, i):
        """Slot i's payload, read back from the journal when not kept in RAM."""
        return self.journal.load(i)

    def set_state(self, i, state):
        if self.journal:
            self.journal.state(i, self.state[i], state)
        self.state[i] = state

    def remove(self, i):
        if self.journal:
            self.journal.done(i)
        self.drop(i)

    def drop(self, i):
        """Free slot i (index only)."""
        self.pid[i] = 0
        self.topic[i] = self.msg[i] = None
        self.sent[i] = False
        self.count -= 1

    def ordered(self):
        """Occupied slots in acceptance order (used on reconnect, not per message)."""
        return sorted([i for i in range(self.capacity) if self.pid[i]], key=lambda i: self.seq[i])

    def outbox(self):
        """[(order, pid, qos, state, topic, payload)] of the pending messages, oldest
        first (payloads are read back from the medium where needed)."""
        out = []
        for i in self.ordered():
            if self.msg[i] is None:
                self.load(i)
            out.append((self.seq[i], self.pid[i], self.qos[i], self.state[i], self.topic[i], self.msg[i]))
        return out

    def discard(self, order):
        """Give up the pending or held message with this acceptance order (outbox() and
        held list them); recorded like an acknowledgement.  False when there is none."""
        if order in self.held:
            self._unhold(order)
            return True
        for i in range(self.capacity):
            if self.pid[i] and self.seq[i] == order:
                self.remove(i)
                self.commit()
                return True
        return False

    # -- quarantine ------------------------------------------------------------
    def hold(self, i):
        """Set message i aside: kept (durably with a journal) but out of the queue and
        never sent until release() - for a poison message the broker drops the link
        over each time it gets it (see session.py)."""
        if self.journal:
            self.journal.hold(i)
        self.held[self.seq[i]] = [self.qos[i], self.retain[i], self.topic[i], self.msg[i]]
        self.drop(i)

    def release(self, order):
        """Put a held message back at the end of the queue (a new packet id).  False
        when no message with this order is held.  Raises StoreFull like add()."""
        h = self.held.get(order)
        if h is None:
            return False
        if h[3] is None:
            self.journal.load_held(order, h)
        # the copy first: a power cut between the two keeps both, never neither
        self.add(self.next_pid(), h[0], h[1], h[2], h[3])
        self._unhold(order)
        return True

    def _unhold(self, order):
        if self.journal:
            self.journal.unhold(order)
            self.journal.commit()
        del self.held[order]

    def oldest_unsent(self):
        best = -1
        for i in range(self.capacity):
            if self.pid[i] and not self.sent[i] and (best < 0 or self.seq[i] < self.seq[best]):
                best = i
        return best

    # -- inbound QoS 2 ---------------------------------------------------------
    def in_room(self):
        """Can another inbound QoS 2 id be recorded?  (RAM: always.)"""
        return self.journal.in_room() if self.journal else True

    def in_add(self, pid):
        if self.journal:
            self.journal.in_add(pid)
        self.inbound.append(pid)

    def in_remove(self, pid):
        if self.journal:
            self.journal.in_del(pid)
        self.inbound.remove(pid)

    # -- session ---------------------------------------------------------------
    def clear(self):
        """Discard the whole session, messages included."""
        if self.journal:
            self.journal.clear()
        for i in range(self.capacity):
            if self.pid[i]:
                self.drop(i)
        self.inbound = []
        self.held = {}

    def discard_session(self):
        """clean_session=1 [MQTT-3.1.2-6]: the broker forgets our ids.  In RAM the
        session goes whole; a persistent store never discards accepted messages - they
        are re-sent after the CONNACK as new publications - only the inbound ids go."""
        if self.journal:
            self.clear_inbound()
        else:
            self.clear()

    def clear_inbound(self):
        for pid in self.inbound[:]:
            self.in_remove(pid)

    def commit(self):
        """Make every change so far durable (group commit)."""
        if self.journal:
            self.journal.commit()

    def close(self):
        if self.journal:
            self.journal.close()

    def stats(self):
        d = {"messages": self.count, "capacity": self.capacity, "inbound": len(self.inbound),
             "held": len(self.held)}
        if self.journal:
            d.update(self.journal.stats())
        return d


def open_store(store, window, ring_size, ring_capacity, sync_every, log, medium):
    """store: None (RAM, `window` slots); a path or a block device with the
    esp32.Partition protocol (the flash ring, ring.RingStore); or a store object."""
    if store is None:
        return MemoryStore(window)
    if isinstance(store, str) or hasattr(store, "readblocks"):
        from .ring import RingStore  # only loaded when a flash store is asked for

        return RingStore(store, ring_size, ring_capacity, sync_every, log=log, medium=medium)
    return store
