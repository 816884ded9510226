# TLS on the device, loaded by device.py only when the board file has mqtt.tls: the client's
# ssl_params, and the clock that certificate checks need.  Since MicroPython 1.22 the ESP32
# build has mbedTLS check certificate dates against the RTC, which reads 2000-01-01 after
# power-on: a verified TLS connect fails until the clock is set, so it is set by SNTP
# (RFC 4330) first.  One query per server, each bounded by timeout_ms and fed to the watchdog
# in 1 s slices.  (DNS is blocking on every port: an IP address in time.ntp_servers avoids it.)
import socket
import select
import struct

from mqtt.compat import ticks_ms, ticks_diff, ticks_add

_NTP_1970 = 2208988800    # NTP seconds (from 1900) at the Unix epoch
_MIN_NTP = 3913056000     # 2024-01-01: anything earlier is the era after 2036 (as ntptime)
_state = [None, False]    # the next attempt (ticks) while unset; the error line was logged


def params(t, log):
    """MQTTClient's ssl_params from the board file's mqtt.tls."""
    p = {}
    if t.get("insecure"):  # validation allows no CA only with insecure: true
        p["cert_reqs"] = 0  # ssl.CERT_NONE
        log("mqtt: warning: TLS without checking the broker's certificate (mqtt.tls.insecure):"
            " anyone on the network path can pose as the broker")
    else:
        p["cafile"] = t["ca"]
    for k, n in (("cert", "certfile"), ("key", "keyfile"), ("server_hostname", "server_hostname")):
        if k in t:
            p[n] = t[k]
    return p


def _text(board):
    return "%04d-%02d-%02d %02d:%02d:%02d" % tuple(board.clock_tuple()[:6])


def query(server, timeout_ms, feed):
    """Unix seconds from one SNTP server ("host" or "host:port"); raises OSError."""
    host, _, port = server.partition(":")
    addr = socket.getaddrinfo(host, int(port or 123), 0, socket.SOCK_DGRAM)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        q = bytearray(48)
        q[0] = 0x23  # LI 0, version 4, mode 3 (client)
        s.sendto(q, addr)
        p = select.poll()
        p.register(s, select.POLLIN)
        start = ticks_ms()
        while True:
            left = timeout_ms - ticks_diff(ticks_ms(), start)
            if left <= 0:
                raise OSError("no answer within %d ms" % timeout_ms)
            if p.poll(min(left, 1000)):
                break
            feed()
        msg = s.recv(48)
    finally:
        s.close()
    if len(msg) < 48 or msg[0] & 7 not in (4, 5) or not msg[1]:
        raise OSError("not an NTP server answer")  # mode server/broadcast, stratum not 0
    secs = struct.unpack("!I", msg[40:44])[0]  # transmit timestamp, whole seconds
    if secs < _MIN_NTP:
        secs += 0x100000000
    return secs - _NTP_1970


def sync(tcfg, board, feed, log):
    """Set the board's clock from the first of tcfg["ntp_servers"] that answers within
    tcfg["timeout_s"]; None when set, else why not (one line)."""
    why = []
    for server in tcfg["ntp_servers"]:
        feed()
        try:
            t = query(server, int(tcfg["timeout_s"] * 1000), feed)
        except OSError as e:
            why.append("%s: %s" % (server, e.args[-1] if e.args else e))
            continue
        board.set_clock(t)
        log("time: clock set by NTP from %s: %s UTC" % (server, _text(board)))
        return None
    return "; ".join(why)


def ready(tcfg, board, feed, log):
    """True once the clock is set (an unset RTC reads a year before 2024); else tries NTP when
    an attempt is due (every tcfg["retry_s"]) and logs, once, why the device does not connect."""
    if board.clock_tuple()[0] >= 2024:
        return True
    if _state[0] is not None and ticks_diff(ticks_ms(), _state[0]) < 0:
        return False
    why = sync(tcfg, board, feed, log)
    if why is None:
        return True
    _state[0] = ticks_add(ticks_ms(), int(tcfg["retry_s"] * 1000))
    if not _state[1]:
        _state[1] = True
        log("time: error: clock not set (it reads %s UTC) and NTP failed (%s): TLS cannot check the"
            " broker's certificate, so the device does not connect; readings go to the ring, NTP is"
            " tried again every %s s" % (_text(board), why, tcfg["retry_s"]))
    return False
