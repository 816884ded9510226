# The one place where CPython and MicroPython differ. Everything else in lib/
# imports what it needs from here, so no other module tries imports or sniffs
# the implementation.
import sys
import errno
import socket
import select
from os import urandom  # noqa: F401

MICROPYTHON = sys.implementation.name == "micropython"
# A microcontroller port (esp32, rp2, ...): its file system is littlefs, not a host's.
ON_BOARD = sys.platform not in ("linux", "darwin", "win32")

if MICROPYTHON:
    # const(): the compiler folds `_NAME = const(int)` into every use and stores nothing
    from micropython import const  # noqa: F401
    from time import ticks_ms, ticks_diff, ticks_add, sleep_ms  # noqa: F401

else:
    import time

    def const(x):
        return x

    def ticks_ms():
        return time.monotonic_ns() // 1000000

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b

    def sleep_ms(ms):
        time.sleep(ms / 1000)


def is_reset(e):
    """The peer closed or reset the connection (an OSError from a socket call)."""
    return (e.errno if hasattr(e, "errno") else e.args[0]) in (errno.ECONNRESET, getattr(errno, "EPIPE", 32))


def unload(name):
    """Forget a module that ran once (the ring's recovery at boot), so that on a small
    heap its code is garbage once nothing else refers to it.  CPython: nothing to gain."""
    if MICROPYTHON:
        sys.modules.pop(name, None)
        pkg, _, attr = name.rpartition(".")
        try:
            delattr(sys.modules[pkg], attr)
        except (KeyError, AttributeError):
            pass


_TICKS = (ticks_ms, ticks_diff, ticks_add)  # the platform's (MicroPython: time's)


def set_clock(ms, diff, add):
    """Replace the tick source: ticks_ms, ticks_diff and ticks_add (tests: a 30-bit clock
    started just before it wraps, as an ESP32's does every 2^30 ms).  Rebinds them here and
    in every loaded module that imported them by name from here or from MicroPython's time;
    modules imported later take the new ones from here."""
    g = globals()
    for i, name, new in ((0, "ticks_ms", ms), (1, "ticks_diff", diff), (2, "ticks_add", add)):
        old = g[name]
        for m in list(sys.modules.values()):
            try:
                f = getattr(m, name, None)
                if f is old or f is _TICKS[i]:
                    setattr(m, name, new)
            except Exception:  # a built-in module (MicroPython's time) cannot be changed
                pass
        g[name] = new


# errno names, never numbers: a socket timeout is EAGAIN on the unix port and
# ETIMEDOUT on ESP32; CPython raises BlockingIOError (EAGAIN/EWOULDBLOCK).  Every
# exception has .errno on MicroPython (it is args[0]).
_WOULD_BLOCK = (errno.EAGAIN, getattr(errno, "EWOULDBLOCK", errno.EAGAIN), errno.ETIMEDOUT)
_CONNECTING = _WOULD_BLOCK + (errno.EINPROGRESS, getattr(errno, "EALREADY", errno.EINPROGRESS))


def poller(sock, out=False):
    """A poll object for the socket becoming readable (or writable: out=True)."""
    p = select.poll()
    p.register(sock, select.POLLOUT if out else select.POLLIN)
    return p


def wait(p, timeout_ms):
    """True when the polled socket is ready (or in error, so the next call reports it)."""
    if MICROPYTHON:
        for _ in p.ipoll(timeout_ms):  # ipoll: no list allocated per call
            return True
        return False
    return bool(p.poll(timeout_ms))


def open_tcp(host, port):
    """A non-blocking TCP socket with TCP_NODELAY set where the port has it, its
    connect started: it is connected once poller(s, True) reports it writable (then
    call check_connected).  DNS (getaddrinfo) is blocking on every port; a numeric
    address never touches the resolver.
    """
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
    try:
        # Without TCP_NODELAY, Nagle + delayed ACK stall every small packet ~40 ms.
        # IPPROTO_TCP and TCP_NODELAY are 6 and 1 on Linux, BSD, Windows and lwIP (the
        # unix port lacks the names).
        try:
            s.setsockopt(6, 1, 1)
        except OSError:
            pass  # some ports refuse it; only latency suffers
        s.setblocking(False)
        try:
            s.connect(ai[-1])
        except OSError as e:
            if e.errno not in _CONNECTING:
                raise
        return s
    except BaseException:
        s.close()
        raise


def check_connected(s):
    """Raise if the connect of a socket that polled writable failed.  (MicroPython has
    no SO_ERROR: there the first send or receive reports it.)"""
    if not MICROPYTHON:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, "connect failed")


# TCP_QUICKACK is Linux's alone.  lwIP (ESP32) does not raise for an option it lacks: it
# prints "Warning: lwip.setsockopt() option not implemented" on every call
# (ports/esp32/modsocket.c), so elsewhere it is never even tried.
_quickack = [sys.platform == "linux"]  # cleared if a Linux kernel refuses it too


def ack_now(s):
    """Ask the TCP stack to acknowledge received data now.  A broker that leaves Nagle
    on (Mosquitto) holds back its next PUBACK until our ACK arrives, and a delayed ACK
    (~40 ms on Linux) would stall the end of every burst.  Linux only; a no-op elsewhere."""
    if _quickack[0]:
        try:
            s.setsockopt(6, 12, 1)  # IPPROTO_TCP, TCP_QUICKACK
        except (OSError, AttributeError):
            _quickack[0] = False


class TLSError(OSError):
    """TLS cannot start: a CA, client certificate or key file is missing or not a valid
    certificate/key, or the broker's certificate failed the check.  An OSError, so code
    that handles unreachable brokers (and reconnect=True) handles it too; str(e) is the
    same sentence on CPython and MicroPython."""


def wrap_tls(s, server, params, timeout_ms):
    """TLS over a connected socket: see tls.py (loaded only by a client that uses TLS)."""
    from .tls import wrap

    return wrap(s, server, params, timeout_ms)


def tls_context(params):
    """The SSLContext for ssl_params (mqtt.aio hands it to asyncio): see tls.py."""
    from .tls import context

    return context(params)


if MICROPYTHON:

    def send(s, buf, off, n):
        """Write up to n bytes of buf from off; return the count written (0 if it would block)."""
        try:
            return s.write(buf, off, n) or 0  # stream write(buf, off, max): no slice allocated
        except OSError as e:
            if e.errno in _WOULD_BLOCK:
                return 0
            raise

    def recv_into(s, mv):
        """Read into memoryview mv; return bytes read, -1 if it would block, 0 at EOF."""
        try:
            r = s.readinto(mv)
        except OSError as e:
            if e.errno in _WOULD_BLOCK:
                return -1
            raise
        return -1 if r is None else r

else:
    import ssl as _ssl

    _SSL_WANT = (BlockingIOError, InterruptedError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError)

    def send(s, buf, off, n):
        try:
            return s.send(memoryview(buf)[off : off + n])
        except _SSL_WANT:
            return 0

    def recv_into(s, mv):
        try:
            return s.recv_into(mv)
        except _SSL_WANT:
            return -1


def random_hex(n):
    return ("%02x" * n) % tuple(urandom(n))
