# The one place where CPython and MicroPython differ. Everything else in lib/
# imports what it needs from here, so no other module tries imports or sniffs
# the implementation.
import sys
import errno
import socket
import select

MICROPYTHON = sys.implementation.name == "micropython"

# errno names, never numbers: a socket timeout is EAGAIN on the unix port and
# ETIMEDOUT on ESP32; CPython raises BlockingIOError (EAGAIN/EWOULDBLOCK).
_WOULD_BLOCK = (errno.EAGAIN, getattr(errno, "EWOULDBLOCK", errno.EAGAIN), errno.ETIMEDOUT)
_IN_PROGRESS = (errno.EINPROGRESS, getattr(errno, "EALREADY", errno.EINPROGRESS))

if MICROPYTHON:
    from time import ticks_ms, ticks_diff, ticks_add, sleep_ms  # noqa: F401
    from os import urandom  # noqa: F401

    def _err(e):
        return e.errno if hasattr(e, "errno") else e.args[0]

else:
    import time
    from os import urandom  # noqa: F401

    def ticks_ms():
        return time.monotonic_ns() // 1000000

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b

    def sleep_ms(ms):
        time.sleep(ms / 1000)

    def _err(e):
        return e.errno


def would_block(e):
    return _err(e) in _WOULD_BLOCK


POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
POLLERR = select.POLLERR | select.POLLHUP


def poller(sock, mask):
    p = select.poll()
    p.register(sock, mask)
    return p


def wait(p, timeout_ms):
    """True when the polled socket is ready (or in error, so the next call reports it)."""
    if MICROPYTHON:
        for _ in p.ipoll(timeout_ms):  # ipoll: no list allocated per call
            return True
        return False
    return bool(p.poll(timeout_ms))


def open_tcp(host, port, timeout_ms):
    """A connected non-blocking TCP socket with TCP_NODELAY set where the port has it.

    The connect is non-blocking and bounded by timeout_ms.  DNS (getaddrinfo) is
    blocking on every port; a numeric address never touches the resolver.
    """
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
    try:
        # Without TCP_NODELAY, Nagle + delayed ACK stall every small packet ~40 ms.
        # The unix port lacks the constants: Linux and lwIP both use 6 and 1.
        try:
            s.setsockopt(getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1), 1)
        except OSError:
            pass  # some ports refuse it; only latency suffers
        s.setblocking(False)
        try:
            s.connect(ai[-1])
        except OSError as e:
            if _err(e) not in _IN_PROGRESS and not would_block(e):
                raise
        if not wait(poller(s, POLLOUT), timeout_ms):
            raise OSError(errno.ETIMEDOUT, "connect timed out")
        if not MICROPYTHON:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, "connect failed")
        return s
    except BaseException:
        s.close()
        raise


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
    import ssl

    ctx = params.get("context")
    hostname = params.get("server_hostname", server)
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca = params.get("cafile") or params.get("cadata")
        if not ca or params.get("cert_reqs", ssl.CERT_REQUIRED) == ssl.CERT_NONE:
            if not MICROPYTHON:
                ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.verify_mode = ssl.CERT_REQUIRED
            if params.get("cafile"):
                ctx.load_verify_locations(cafile=params["cafile"])
            else:
                ctx.load_verify_locations(cadata=params["cadata"])
        cert = params.get("certfile") or params.get("cert")
        if cert:
            ctx.load_cert_chain(cert, params.get("keyfile") or params.get("key"))
    s.setblocking(True)
    s.settimeout(timeout_ms / 1000)
    try:
        t = ctx.wrap_socket(s, server_hostname=hostname)
    except ValueError as e:
        # MicroPython reports a failed verification as ValueError; make it an OSError
        # like CPython's SSLCertVerificationError, so callers catch one kind.
        raise OSError("TLS handshake failed: %s" % e)
    t.setblocking(False)
    return t


if MICROPYTHON:

    def send(s, buf, off, n):
        """Write up to n bytes of buf from off; return the count written (0 if it would block)."""
        try:
            r = s.write(buf, off, n)  # stream write(buf, off, max): no slice allocated
        except OSError as e:
            if would_block(e):
                return 0
            raise
        return r or 0

    def recv_into(s, mv):
        """Read into memoryview mv; return bytes read, -1 if it would block, 0 at EOF."""
        try:
            r = s.readinto(mv)
        except OSError as e:
            if would_block(e):
                return -1
            raise
        return -1 if r is None else r

else:
    import ssl as _ssl

    _SSL_WANT = (_ssl.SSLWantReadError, _ssl.SSLWantWriteError)

    def send(s, buf, off, n):
        try:
            return s.send(memoryview(buf)[off : off + n])
        except (BlockingIOError, InterruptedError) + _SSL_WANT:
            return 0

    def recv_into(s, mv):
        try:
            return s.recv_into(mv)
        except (BlockingIOError, InterruptedError) + _SSL_WANT:
            return -1


def random_hex(n):
    return "".join("%02x" % b for b in urandom(n))
