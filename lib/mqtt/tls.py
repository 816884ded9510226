# TLS set-up for MQTTClient(ssl=True), loaded only then (compat.wrap_tls): the CA, the client
# certificate and key, one clear error (TLSError) for whatever is missing or bad, with the same
# text on CPython and MicroPython, and a word about the clock when a certificate is "not valid
# yet" - what an ESP32 whose RTC still reads 2000-01-01 sees.
import sys

from .compat import MICROPYTHON, TLSError

_told = [False]  # the "nobody is authenticated" warning is printed once per process


def _readable(path, what):
    """Fail early, with one message for both runtimes, when a file cannot be read."""
    if isinstance(path, str):
        try:
            open(path, "rb").close()
        except OSError:
            raise TLSError("TLS: cannot read the %s file %s" % (what, path))


def wrap(s, server, params, timeout_ms):
    """Wrap a connected socket in TLS and return it non-blocking (the handshake runs
    blocking, bounded by timeout_ms).  params (umqtt's ssl_params, extended):
      cafile / cadata  - CA to verify the broker with (hostname included)
      server_hostname  - name to verify and send as SNI (default: server)
      certfile/keyfile or cert/key - client certificate and its key: paths (MicroPython
                         also takes the data as bytes); without a key the certificate
                         file must hold the private key too
      cert_reqs        - ssl.CERT_NONE to skip verification
      context          - an SSLContext to use as it is
    Without a CA the link is encrypted but the broker is not authenticated (umqtt's
    behaviour): a warning says so once.  Raises TLSError (an OSError) for a missing or
    bad certificate or key and for a broker that fails the check."""
    ctx = context(params)
    s.setblocking(True)
    s.settimeout(timeout_ms / 1000)
    try:
        t = ctx.wrap_socket(s, server_hostname=params.get("server_hostname", server))
    except (OSError, ValueError) as e:
        # MicroPython reports a failed verification as ValueError; make it an OSError
        # like CPython's SSLCertVerificationError, so callers catch one kind.
        why = str(e)
        if "not yet valid" in why or "in the future" in why:  # OpenSSL's / mbedTLS's words
            # An ESP32's RTC reads 2000-01-01 after power-on: every certificate is "future".
            import time

            raise TLSError("TLS: the broker's certificate is not valid yet by this device's clock"
                           " (%04d-%02d-%02d %02d:%02d UTC): is the clock set (NTP)?" % time.gmtime()[:5])
        if isinstance(e, ValueError):
            raise TLSError("TLS handshake failed: %s" % why)
        raise
    t.setblocking(False)
    return t


def context(params):
    """The SSLContext for ssl_params (see wrap; mqtt.aio hands it to asyncio)."""
    import ssl

    ctx = params.get("context")
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca = params.get("cafile")
        cadata = params.get("cadata")
        none = params.get("cert_reqs", ssl.CERT_REQUIRED) == ssl.CERT_NONE
        if not (ca or cadata) or none:
            if not MICROPYTHON:
                ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            if not (none or _told[0]):  # an explicit CERT_NONE is a choice, not an oversight
                _told[0] = True
                sys.stderr.write("mqtt: warning: TLS without a CA (ssl_params cafile/cadata):"
                                 " the broker is not authenticated\n")
        else:
            ctx.verify_mode = ssl.CERT_REQUIRED
            _readable(ca, "CA")
            try:
                if ca:
                    ctx.load_verify_locations(cafile=ca)
                else:
                    ctx.load_verify_locations(cadata=cadata)
            except (OSError, ValueError):  # ssl.SSLError is an OSError
                raise TLSError("TLS: the CA %s holds no valid certificate" % (ca or "data"))
        cert = params.get("certfile") or params.get("cert")
        if cert:
            # MicroPython's load_cert_chain needs the key (None is a TypeError there);
            # CPython reads it from the certificate file when it is None - do that on both.
            key = params.get("keyfile") or params.get("key") or cert
            _readable(cert, "client certificate")
            _readable(key, "client key")
            try:
                ctx.load_cert_chain(cert, key)
            except (OSError, ValueError):
                raise TLSError("TLS: cannot load the client certificate %s with its key %s"
                               " (not a PEM/DER certificate and its private key?)" % (
                                   cert if isinstance(cert, str) else "data",
                                   ("(in the certificate file)" if key is cert else
                                    key if isinstance(key, str) else "data")))
    return ctx
