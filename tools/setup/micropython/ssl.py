# ssl -- the CPython-style TLS API of MicroPython's docs (docs/library/ssl.rst), as a thin layer
# over the built-in `tls` module (mbedTLS). Written for this project: Debian's MicroPython source
# strips micropython-lib, whose ssl.py is what firmware builds normally freeze.
#
# Behaviour matches the ssl module that MicroPython firmware (e.g. ESP32) ships, so that code
# tested on the unix port behaves the same on a device:
# - SSLContext(PROTOCOL_TLS_CLIENT) starts with verify_mode == CERT_NONE: a client that wants
#   the server checked must set verify_mode = CERT_REQUIRED and pass server_hostname.
# - A failed certificate check raises ValueError (with mbedTLS's reason); other TLS errors
#   raise OSError. There is no SSLError.
# - Certificates, keys and CA data may be PEM or DER. One DER blob holds one certificate; a PEM
#   blob may hold several.

import tls
from tls import CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED, PROTOCOL_TLS_CLIENT, PROTOCOL_TLS_SERVER

try:
    from tls import MBEDTLS_VERSION
except ImportError:
    pass
try:
    from tls import PROTOCOL_DTLS_CLIENT, PROTOCOL_DTLS_SERVER
except ImportError:
    pass


def _data(blob):
    # tls hands the object's buffer straight to mbedTLS, which parses PEM only when the length
    # it gets covers a terminating NUL. tls adds that byte itself for PEM and relies on the
    # NUL that MicroPython keeps after the data of every bytes/str object, so pass exactly
    # bytes or str: bytearray and memoryview (no guaranteed NUL; tls rejects them) are copied.
    if isinstance(blob, (bytearray, memoryview)):
        return bytes(blob)
    return blob


def _read_file(path):
    with open(path, "rb") as f:
        return f.read()


class SSLContext:
    def __init__(self, protocol):
        self._ctx = tls.SSLContext(protocol)
        self._ctx.verify_mode = CERT_NONE

    @property
    def verify_mode(self):
        return self._ctx.verify_mode

    @verify_mode.setter
    def verify_mode(self, mode):
        self._ctx.verify_mode = mode

    def load_cert_chain(self, certfile, keyfile):
        # A str is a file path (as in CPython); bytes are the data itself (MicroPython).
        if isinstance(certfile, str):
            certfile = _read_file(certfile)
        if isinstance(keyfile, str):
            keyfile = _read_file(keyfile)
        self._ctx.load_cert_chain(_data(certfile), _data(keyfile))

    def load_verify_locations(self, cafile=None, cadata=None):
        # Each call adds to the CA chain; cafile is a path, cadata the certificate(s) itself.
        if cafile is None and cadata is None:
            raise ValueError("cafile or cadata required")
        if cafile is not None:
            self._ctx.load_verify_locations(_read_file(cafile))
        if cadata is not None:
            self._ctx.load_verify_locations(_data(cadata))

    def get_ciphers(self):
        return self._ctx.get_ciphers()

    def set_ciphers(self, ciphers):
        self._ctx.set_ciphers(ciphers)

    def wrap_socket(self, sock, *, server_side=False, do_handshake_on_connect=True,
                    server_hostname=None):
        return self._ctx.wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            server_hostname=server_hostname,
        )


def wrap_socket(sock, server_side=False, key=None, cert=None, cert_reqs=CERT_NONE, cadata=None,
                server_hostname=None, do_handshake=True):
    ctx = SSLContext(PROTOCOL_TLS_SERVER if server_side else PROTOCOL_TLS_CLIENT)
    if key is not None or cert is not None:
        # Here key and cert are the data itself, never paths (MicroPython's documented API).
        ctx._ctx.load_cert_chain(_data(cert), _data(key))
    if cadata is not None:
        ctx.load_verify_locations(cadata=cadata)
    ctx.verify_mode = cert_reqs
    return ctx.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=do_handshake,
                           server_hostname=server_hostname)
