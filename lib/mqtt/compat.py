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


_quickack = [True]  # cleared once the stack refuses TCP_QUICKACK (not Linux)


def ack_now(s):
    """Ask the TCP stack to acknowledge received data now.  A broker that leaves Nagle
    on (Mosquitto) holds back its next PUBACK until our ACK arrives, and a delayed ACK
    (~40 ms on Linux) would stall the end of every burst.  Linux only; a no-op elsewhere."""
    if _quickack[0]:
        try:
            s.setsockopt(6, 12, 1)  # IPPROTO_TCP, TCP_QUICKACK
        except (OSError, AttributeError):
            _quickack[0] = False


def wrap_tls(s, server, params, timeout_ms):
    """Wrap a connected socket in TLS and return it non-blocking (the handshake runs
    blocking, bounded by timeout_ms).  params (umqtt's ssl_params, extended):
      cafile / cadata  - CA to verify the broker with (hostname included)
      server_hostname  - name to verify and send as SNI (default: server)
      certfile/keyfile or cert/key - client certificate
      cert_reqs        - ssl.CERT_NONE to skip verification
      context          - an SSLContext to use as it is
    Without a CA the link is encrypted but the broker is not authenticated."""
    ctx = tls_context(params)
    s.setblocking(True)
    s.settimeout(timeout_ms / 1000)
    try:
        t = ctx.wrap_socket(s, server_hostname=params.get("server_hostname", server))
    except ValueError as e:
        # MicroPython reports a failed verification as ValueError; make it an OSError
        # like CPython's SSLCertVerificationError, so callers catch one kind.
        raise OSError("TLS handshake failed: %s" % e)
    t.setblocking(False)
    return t


def tls_context(params):
    """The SSLContext for params (see wrap_tls)."""
    import ssl

    ctx = params.get("context")
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca = params.get("cafile")
        cadata = params.get("cadata")
        if not (ca or cadata) or params.get("cert_reqs", ssl.CERT_REQUIRED) == ssl.CERT_NONE:
            if not MICROPYTHON:
                ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.verify_mode = ssl.CERT_REQUIRED
            if ca:
                ctx.load_verify_locations(cafile=ca)
            else:
                ctx.load_verify_locations(cadata=cadata)
        cert = params.get("certfile") or params.get("cert")
        if cert:
            ctx.load_cert_chain(cert, params.get("keyfile") or params.get("key"))
    return ctx


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
