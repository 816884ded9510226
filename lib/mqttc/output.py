# mosquitto_sub's -F output format for mqttc sub: only loaded when -F is given.
import sys
import time


def _b(s):
    return s.encode() if isinstance(s, str) else s


def formatted(fmt, topic, msg, qos, retained):
    """One message in mosquitto_sub's -F format (MQTT 5 fields print nothing)."""
    out = []
    i = 0
    n = len(fmt)
    now = None
    while i < n:
        ch = fmt[i]
        i += 1
        if ch == "%" and i < n:
            left = fmt[i] == "-"
            if left:
                i += 1
            pad = " "
            if i < n and fmt[i] == "0":
                pad = "0"
                i += 1
            width = 0
            while i < n and fmt[i].isdigit():
                width = width * 10 + int(fmt[i])
                i += 1
            if i < n and fmt[i] == ".":
                i += 1
                while i < n and fmt[i].isdigit():
                    i += 1
            if i >= n:
                break
            ch = fmt[i]
            i += 1
            v = b""
            if ch == "%":
                v = b"%"
            elif ch == "t":
                v = topic
            elif ch == "p":
                v = msg
            elif ch == "l":
                v = b"%d" % len(msg)
            elif ch == "m":
                v = b"0"  # the packet id is not passed to the callback (see README)
            elif ch == "q":
                v = b"%d" % qos
            elif ch == "r":
                v = b"1" if retained else b"0"
            elif ch in "xX":
                v = _b("".join(("%02x" if ch == "x" else "%02X") % c for c in msg))
            elif ch in "UIjJ":
                now = now or clock()
                if ch == "U":
                    v = b"%d.%09d" % (now[0], now[1])
                elif ch == "I":
                    v = _b(iso(now[0]))
                else:
                    v = json_message(ch, topic, msg, qos, retained, now)
            if width and len(v) < width:
                fill = _b(pad) * (width - len(v))
                v = v + fill if left else fill + v
            out.append(v)
        elif ch == "@" and i < n:
            ch = fmt[i]
            i += 1
            now = now or clock()
            t = localtime(now[0])
            k = "YmdHMS".find(ch)
            if ch == "@":
                out.append(b"@")
            elif k >= 0:
                out.append(_b(("%04d", "%02d", "%02d", "%02d", "%02d", "%02d")[k] % t[k]))
        elif ch == "\\" and i < n:
            ch = fmt[i]
            i += 1
            k = "\\0aenrtv".find(ch)
            if k >= 0:
                out.append(b"\\\x00\x07\x1b\n\r\t\x0b"[k:k + 1])
        else:
            out.append(_b(ch))
    return b"".join(out)


def clock():
    ns = time.time_ns()
    return ns // 1000000000, ns % 1000000000


def localtime(s):
    return time.localtime(s)


def iso(s, micro=None):
    """2016-08-10T09:47:38+0100 (mosquitto's %I); with micro the %j timestamp form."""
    t = time.localtime(s)
    g = time.gmtime(s)
    off = (time.mktime(t) - time.mktime(g)) // 60
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    frac = "" if micro is None else ".%06dZ" % micro
    return "%04d-%02d-%02dT%02d:%02d:%02d%s%s%02d%02d" % (t[0], t[1], t[2], t[3], t[4], t[5], frac,
                                                         sign, off // 60, off % 60)


def json_message(kind, topic, msg, qos, retained, now):
    """%j (payload as a JSON string) and %J (payload as JSON, when it is)."""
    import json

    d = '{"tst":%s,"topic":%s,"qos":%d,"retain":%d,"payloadlen":%d' % (
        json.dumps(iso(now[0], now[1] // 1000)), json.dumps(topic.decode()), qos, retained, len(msg))
    if qos:
        d += ',"mid":0'
    if kind == "J":
        try:
            p = json.dumps(json.loads(msg), separators=(",", ":"))
        except ValueError:
            sys.stderr.write("mqttc: the payload on %s is not valid JSON (%%J)\n" % topic.decode())
            p = "null"
    else:
        try:
            p = json.dumps(msg.decode())
        except UnicodeError:
            p = json.dumps("".join("\\x%02x" % c for c in msg))
    return _b(d + ',"payload":' + p + "}")
