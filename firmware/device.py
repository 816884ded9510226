# The device runtime: Wi-Fi, the MQTT client on the flash ring, the sensor schedule,
# telemetry, birth/will status, commands and health, always-on or deep-sleep.
# Hardware only through board.py; started by app.main() once the config is valid.
import json

import board
import sensors
from runtime import log, uptime_ms, dumps as _dumps, VERSION
from mqtt import MQTTClient, MQTTException, StoreFull
import mqtt.ring  # noqa: F401  (now, while the heap is in one piece: the client needs it)
import mqtt.watchdog  # noqa: F401
from mqtt.compat import ticks_ms, ticks_diff, ticks_add, sleep_ms

MAX_QUEUED_CMDS = 8


def _expand(template, uid, board_name):
    return template.replace("{uid}", uid).replace("{board}", board_name)


def _sensors(cfg):
    """The configured sensors, in name order; hwsensors.py only when the board has hardware."""
    out = []
    for name in sorted(cfg["sensors"]):
        s = cfg["sensors"][name]
        if s["kind"] == "sim":
            out.append(sensors.Sim(name, s, board))
        else:
            import hwsensors

            out.append(hwsensors.DRIVERS[s["kind"]](name, s, board))
    return out


class Device:
    def __init__(self, cfg, state, trace=False):
        self.cfg = cfg
        self.state = state
        self.trace = trace
        self.uid = cfg.get("uid") or board.uid()
        m = cfg["mqtt"]
        self.client_id = _expand(m["client_id"], self.uid, cfg["board"])
        self.prefix = _expand(m["topic_prefix"], self.uid, cfg["board"])
        self.t_status = self.prefix + "/status"
        self.t_health = self.prefix + "/health"
        self.t_cmd = self.prefix + "/cmd"
        self.t_reply = self.prefix + "/reply"
        self.sensors = _sensors(cfg)
        del cfg["sensors"]  # all in the sensor objects now: RAM
        for s in self.sensors:
            s.topic = self.prefix + "/" + _expand(s.topic, self.uid, cfg["board"])
        self.deep_sleep = cfg["power"]["mode"] == "deep-sleep"
        wdt = cfg["watchdog"]["timeout_ms"]
        # Every blocking step (connect, TLS, a full window, an ack) is bounded by a
        # quarter of the watchdog period; the watchdog is fed only while the protocol
        # made progress within half of it.
        self.step_ms = max(250, wdt // 4)
        self.progress_ms = max(500, wdt // 2)
        self.wdt_ms = wdt
        self.wdt = None
        self.client = None
        self.linked = False  # connect() called: the client runs (and re-connects) from then on
        self.cmds = []
        self.was_up = False
        self.last_why = None   # the last link failure, and how often it repeated in a row
        self.repeats = 0
        self.subscribed = False
        self.reboot = False
        self.accepted = 0      # QoS 1/2 messages accepted into the ring this boot
        self.sent0 = 0         # QoS 0 messages written to the socket
        self.refused = 0       # readings dropped because the ring was full
        self.errors = 0        # failed sensor reads
        self.at_boot = 0       # messages the ring held at boot
        self.health_ms = int(cfg["health"]["period_s"] * 1000)

    # ---- set-up -------------------------------------------------------------------
    def start(self):
        self.wdt = board.watchdog(self.wdt_ms)
        if "wifi" in self.cfg and not board.HOST:
            if not board.wifi_connect(self.cfg["wifi"], self.wdt.feed, log):
                log("wifi: not connected; readings go to the ring and wait for the link")
        m = self.cfg["mqtt"]
        r = self.cfg["ring"]
        # the raw partition ring.partition when the board has it, else the file ring.path
        store = board.ring_store(r, log)
        if isinstance(store, str):
            where, ring_size = store, r["size"]
        else:
            ring_size = board.partition_bytes(store)
            where = "partition %s (%d bytes)" % (r["partition"], ring_size)
        params = {}
        if "tls" in m:
            import devtls  # TLS only: its parameters, and the clock it needs

            params = devtls.params(m["tls"], log)
        c = self.client = MQTTClient(
            self.client_id, m["broker"], m["port"], user=m.get("user"), password=m.get("password"),
            keepalive=m["keepalive"], ssl="tls" in m, ssl_params=params, store=store,
            ring_size=ring_size, ring_capacity=r["capacity"], reconnect=True,
            # A window larger than the ring's capacity would make publish() raise StoreFull
            # while connected instead of waiting for acks.
            window=min(16, r["capacity"]), max_packet=m["max_packet"],
            timeout_ms=self.step_ms, ack_timeout_ms=self.step_ms, retries=1, backoff_ms=250,
            backoff_cap_ms=min(m["backoff_max_ms"], self.step_ms),
            trace=(lambda line: log("mqtt: " + line)) if self.trace else None,
            log=lambda line: log("mqtt: " + line))  # rare events: oversize skipped, held, ...
        c.set_callback(self.on_message)
        c.set_last_will(self.t_status, b"offline", True, 1)
        self.at_boot = c.in_flight()
        log("device %s: client id %s, topics %s/..., broker %s:%d%s, ring %s (%d unsent)" % (
            self.uid, self.client_id, self.prefix, m["broker"], m["port"], " (TLS)" if "tls" in m else "",
            where, self.at_boot))
        self.link()
        self.wdt.feed()

    def link(self):
        """Connect - with TLS once the clock is set (devtls.py) - after which the client
        re-connects by itself."""
        if "tls" in self.cfg["mqtt"]:
            import devtls

            if not devtls.ready(self.cfg["time"], board, self.wdt.feed, log):
                return
        self.linked = True
        try:
            sp = self.client.connect(clean_session=False)
            log("mqtt: connected (session present: %s)" % bool(sp))
        except (OSError, MQTTException) as e:
            log("mqtt: broker not reachable (%s); retrying in the background" % e)

    def on_message(self, topic, msg):
        if topic == self.t_cmd.encode() or topic == self.t_cmd:
            if len(self.cmds) >= MAX_QUEUED_CMDS:
                self.cmds.pop(0)
            self.cmds.append(msg)

    def check_link(self):
        """Birth message and subscription after each (re)connection."""
        up = self.client.is_connected()
        if up and not self.was_up:
            self.was_up = True
            self.on_up()
        elif not up and self.was_up:
            self.was_up = False
            why = str(self.client.last_error)
            # the same failure on every connection is reported once, then with a count
            # at 2, 4, 8, ... repeats: a storm must not flood the log (or the flash)
            self.repeats = self.repeats + 1 if why == self.last_why else 0
            self.last_why = why
            n = self.repeats
            if not n:
                log("mqtt: link lost (%s); readings go to the ring" % why)
            elif not n & (n - 1):
                log("mqtt: link lost again, the same way, %d times in a row (%s)" % (n + 1, why))

    def on_up(self):
        c = self.client
        if c.reconnects and not self.repeats:
            log("mqtt: re-connected (%d so far), %d unsent in the ring" % (c.reconnects, c.in_flight()))
        try:
            self.publish(self.t_status, "online", 1, retain=True)
        except StoreFull as e:
            log("status not published: %s" % e)
        if not self.subscribed and c.is_connected():
            try:
                c.subscribe(self.t_cmd, 2)  # the client restores it after a lost session
                self.subscribed = True
            except MQTTException as e:
                log("mqtt: cannot subscribe to %s: %s" % (self.t_cmd, e))
                self.subscribed = "not connected" not in str(e)  # refused: do not insist
        if self.state.crashes:
            self.state.crashes = 0  # the app works: leave the crash-loop guard
            self.state.save()
        if not self.deep_sleep:
            self.publish_health()

    # ---- publishing ------------------------------------------------------------------
    def publish(self, topic, payload, qos, retain=False):
        """Publish; raises StoreFull (nothing accepted is lost) when the ring is full."""
        c = self.client
        if qos and not c.is_connected() and c.room() <= 0:
            # The client would wait timeout_ms for the link before raising StoreFull; a
            # sensor loop would rather drop this reading now and keep its schedule.
            raise StoreFull("ring full (%d messages) and no connection" % c.in_flight())
        c.publish(topic, payload, retain, qos)
        if qos:
            self.accepted += 1
        elif c.is_connected():
            self.sent0 += 1

    def sample(self, s):
        seq = self.state.seq
        try:
            body = {"seq": seq, "v": s.read(seq)}
        except Exception as e:  # a failed read is reported, never fatal
            self.errors += 1
            body = {"seq": seq, "err": str(e) or type(e).__name__}
            log("sensor %s: %s" % (s.name, body["err"]))
        try:
            self.publish(s.topic, _dumps(body), s.qos)
        except StoreFull as e:
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                log("ring full: reading dropped (%d so far): %s" % (self.refused, e))
        except ValueError as e:  # e.g. a message larger than a ring record
            self.errors += 1
            log("sensor %s: cannot publish: %s" % (s.name, e))
        # The sequence number is consumed even when the reading was dropped: the gap
        # tells the consumer. It is saved after the message is in the ring, so a reset
        # in between can only repeat a number, never skip an accepted reading.
        self.state.seq = seq + 1
        self.state.save()

    def acked(self):
        return self.at_boot + self.accepted - self.client.in_flight()

    def health(self):
        c = self.client
        h = {"uptime_s": uptime_ms() // 1000, "heap_free": board.mem_free(),
             "reconnects": c.reconnects, "accepted": self.accepted, "acked": self.acked(),
             "sent_qos0": self.sent0, "dropped": c.dropped + self.refused,
             "sensor_errors": self.errors, "seq": self.state.seq, "boots": self.state.boots,
             "reset_cause": board.reset_cause(), "version": VERSION}
        st = c.stats()
        h["ring_messages"] = st["messages"]
        h["ring_capacity"] = st["capacity"]
        size = st.get("size") or 0
        free = st.get("free_bytes", 0)
        h["ring_fill_pct"] = (100 * (size - free)) // size if size else 0
        h["ring_free_bytes"] = free
        h["ring_skipped"] = st.get("skipped", 0)
        h["ring_erases"] = st.get("erases", 0)
        return h

    def publish_health(self):
        try:
            self.publish(self.t_health, _dumps(self.health()), self.cfg["health"]["qos"])
        except StoreFull:
            pass

    # ---- commands ----------------------------------------------------------------------
    def handle(self, raw):
        reply = {"ok": False}
        try:
            text = raw.decode() if isinstance(raw, (bytes, bytearray)) else raw
            text = text.strip()
            if text.startswith("{"):
                try:
                    # (MicroPython's parser reads a truncated '{"cmd": "ping"' as complete)
                    req = json.loads(text) if text.endswith("}") else None
                except ValueError:
                    req = None
                if req is None:
                    raise ValueError("not valid JSON")
                if type(req) is not dict:
                    raise ValueError("expected a JSON object")
            else:
                words = text.split()
                req = {"cmd": words[0] if words else ""}
                if len(words) == 2:
                    req["period_s"] = words[1]
                elif len(words) == 3:
                    req["sensor"], req["period_s"] = words[1], words[2]
            cmd = req.get("cmd")
            reply["cmd"] = cmd
            if "id" in req:
                reply["id"] = req["id"]
            if cmd == "ping":
                reply["uptime_s"] = uptime_ms() // 1000
                reply["seq"] = self.state.seq
            elif cmd == "health":
                h = self.health()
                reply["health"] = h
                self.publish_health()
            elif cmd == "interval":
                self.set_interval(req, reply)
            elif cmd == "reboot":
                self.reboot = True
            else:
                raise ValueError("unknown command %s (ping, health, interval, reboot)" % _dumps(cmd))
            reply["ok"] = True
        except Exception as e:  # a bad command never stops the device
            reply["error"] = str(e) or type(e).__name__
        log("command %s -> %s" % (raw, "ok" if reply["ok"] else reply.get("error")))
        try:
            self.publish(self.t_reply, _dumps(reply), 1)
        except StoreFull:
            pass

    def set_interval(self, req, reply):
        p = req.get("period_s")
        if type(p) is str:
            try:
                p = float(p)
            except ValueError:
                pass
        if not (type(p) is int or type(p) is float) or not 0.1 <= p <= 86400:
            raise ValueError("period_s must be a number of seconds 0.1..86400")
        if self.deep_sleep:
            self.state.wake_s = p
            self.state.save()
            reply["wake_period_s"] = p
            return
        name = req.get("sensor")
        chosen = [s for s in self.sensors if name is None or s.name == name]
        if not chosen:
            raise ValueError("no sensor named %s" % _dumps(name))
        now = ticks_ms()
        for s in chosen:
            s.period_ms = int(p * 1000)
            s.due = ticks_add(now, s.period_ms)
        reply["period_s"] = p
        reply["sensors"] = [s.name for s in chosen]

    # ---- running -----------------------------------------------------------------------
    def idle(self, ms):
        """Wait up to ms for traffic and handle it, with timers and a due re-connection
        (wait_msg(ms) is bounded by ms also while the broker is unreachable)."""
        if self.linked:
            self.client.wait_msg(ms)
        elif ms > 0:
            sleep_ms(min(ms, 100))  # waiting for the clock (TLS): the loop retries link()

    def feed(self):
        # not linked (waiting for the clock): no client to stall; the loop itself is the progress
        if not self.linked or self.client.progress_within(self.progress_ms):
            self.wdt.feed()

    def drain_commands(self):
        while self.cmds:
            self.handle(self.cmds.pop(0))

    def run(self):
        self.start()
        if self.deep_sleep:
            self.run_once_and_sleep()
        else:
            self.run_always_on()

    def run_always_on(self):
        c = self.client
        now = ticks_ms()
        for s in self.sensors:
            s.due = now
        health_due = ticks_add(now, self.health_ms)
        while True:
            self.check_link()
            now = ticks_ms()
            for s in self.sensors:
                if ticks_diff(now, s.due) >= 0:
                    self.sample(s)
                    self.feed()  # a slow driver (DS18B20: 750 ms) x several sensors
                    s.due = ticks_add(s.due, s.period_ms)
                    if ticks_diff(now, s.due) >= 0:  # fell behind: skip, do not burst
                        s.due = ticks_add(now, s.period_ms)
            if ticks_diff(now, health_due) >= 0:
                self.publish_health()
                health_due = ticks_add(now, self.health_ms)
            self.drain_commands()
            if not self.linked:
                self.link()
            if self.reboot:
                self.shutdown("offline")
                log("rebooting (command)")
                board.reset()
            # wait for traffic until the next job, at most 1 s
            nxt = health_due
            for s in self.sensors:
                if ticks_diff(s.due, nxt) < 0:
                    nxt = s.due
            self.idle(min(1000, max(0, ticks_diff(nxt, ticks_ms()))))
            self.feed()
            if not board.HOST:
                board.wifi_tick(self.cfg["wifi"], log)

    def flush_until(self, deadline):
        """Drive I/O (acks, re-connection, commands) until nothing is in flight or the
        deadline; in watchdog-sized slices.  True when everything went out."""
        c = self.client
        if not self.linked:
            return False  # no clock for TLS yet: nothing can be sent
        while True:
            self.drain_commands()
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                return False
            done = c.flush(min(left, self.step_ms))
            self.check_link()
            self.feed()
            if done and not self.cmds:
                c.check_msg()  # commands queued for us by the broker while we slept
                if not self.cmds:
                    return True

    def run_once_and_sleep(self):
        c = self.client
        self.check_link()
        for s in self.sensors:
            self.sample(s)
            self.feed()
        self.publish_health()
        budget = self.cfg["power"]["flush_budget_ms"]
        deadline = ticks_add(ticks_ms(), budget)
        done = self.flush_until(deadline)
        if self.reboot:
            self.shutdown("offline")
            board.reset()
        if c.is_connected():
            try:
                self.publish(self.t_status, "sleeping", 1, retain=True)
            except StoreFull:
                pass
            done = self.flush_until(deadline)
        left = max(0, ticks_diff(deadline, ticks_ms()))
        c.disconnect(left, close_store=True)  # the ring synced and let go before the power goes
        wake_s = self.state.wake_s or self.cfg["power"]["wake_period_s"]
        ms = max(100, int(wake_s * 1000) - uptime_ms())
        self.state.save()
        log("deep sleep for %d ms: %s, %d unsent kept in the ring" % (
            ms, "all sent" if done else "flush budget (%d ms) used up" % budget, c.in_flight()))
        self.wdt.feed()
        board.deepsleep(ms)

    def shutdown(self, status):
        c = self.client
        if c.is_connected():
            try:
                self.publish(self.t_status, status, 1, retain=True)
            except StoreFull:
                pass
            self.flush_until(ticks_add(ticks_ms(), self.step_ms))
        c.disconnect(self.step_ms, close_store=True)
        self.state.save()
