# mqttc's TLS set-up, only loaded when TLS is asked for: the files are checked before
# connecting, --insecure checks the certificate chain but not the host name, and on
# MicroPython a certificate that names the IP address given with -h is accepted as
# CPython accepts it.
from . import Failure, EXIT_TLS, os_text, _b


def tls_files(o):
    """Each TLS file must be there and hold what it should, before connecting."""
    for opt, path, marker in (("--cafile", o["cafile"], "CERTIFICATE"), ("--cert", o["cert"], "CERTIFICATE"),
                              ("--key", o["key"], "PRIVATE KEY")):
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise Failure(EXIT_TLS, "cannot read %s %s: %s" % (opt, path, os_text(e)))
        if not (b"-----BEGIN " in data and _b(marker) in data) and data[:1] != b"\x30":
            raise Failure(EXIT_TLS, "%s %s holds no %s (PEM expected)" % (opt, path, marker.lower()))
    if o["capath"]:
        import os

        try:
            names = sorted(os.listdir(o["capath"]))
        except OSError as e:
            raise Failure(EXIT_TLS, "cannot read --capath %s: %s" % (o["capath"], os_text(e)))
        data = b""
        for n in names:
            try:
                with open(o["capath"] + "/" + n, "rb") as f:
                    d = f.read()
            except OSError:
                continue  # a subdirectory or an unreadable file: not a CA certificate
            if b"-----BEGIN CERTIFICATE-----" in d:
                data += d + b"\n"
        if not data:
            raise Failure(EXIT_TLS, "--capath %s holds no PEM certificates" % o["capath"])
        o["cadata"] = data


def insecure_context(o):
    """CPython --insecure: the certificate chain is checked, the host name is not."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if o["cafile"]:
        ctx.load_verify_locations(cafile=o["cafile"])
    else:
        ctx.load_verify_locations(cadata=o["cadata"].decode())
    if o["cert"]:
        ctx.load_cert_chain(o["cert"], o["key"])
    return ctx


def name_mismatch(e):
    """The handshake failed on the host name and nothing else (mbedTLS says one
    problem a line)."""
    why = [w for w in str(e).split("\n") if w.startswith("The ")]
    return bool(why) and all("expected CN" in w for w in why)


def ip_address(host):
    """host as 4 bytes if it is an IPv4 address, else None."""
    parts = host.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
        return None
    return bytes(int(p) for p in parts)


def certificate_name(o):
    """MicroPython: a name the broker's certificate holds, for mbedTLS to check it with.
    mbedTLS matches only DNS names (never an IP address in the certificate) and cannot
    check the chain without a name, so one more handshake fetches the certificate; the
    chain is still checked on the real connection.  Used for --insecure, and when -h is
    an IP address that the certificate lists.  Raises Failure otherwise."""
    import socket
    import tls

    leaf = []
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    if o["cafile"]:
        with open(o["cafile"], "rb") as f:
            ctx.load_verify_locations(f.read())
    else:
        ctx.load_verify_locations(o["cadata"])
    ctx.verify_callback = lambda cert, depth: leaf.append(bytes(cert)) or 0 if depth == 0 else 0
    s = socket.socket()
    try:
        s.connect(socket.getaddrinfo(o["host"], o["port"])[0][-1])
        try:
            ctx.wrap_socket(s, server_hostname=o["host"]).close()
            return o["host"]
        except ValueError as e:
            if not name_mismatch(e) or not leaf:
                raise
    finally:
        s.close()
    dns, ips, cn = cert_names(leaf[-1])
    name = dns[0] if dns else cn
    ip = ip_address(o["host"])
    if name and (o["insecure"] or (ip and ip in ips)):
        return name
    raise Failure(EXIT_TLS, "TLS: the broker's certificate is not for host %r: connect with the name "
                  "it was issued for (-h), or skip the name check with --insecure" % o["host"])


def _tl(b, p):
    """(start, end) of the contents of the DER element whose tag is at b[p]."""
    n = b[p + 1]
    p += 2
    if n & 0x80:
        k = n & 0x7F
        n = 0
        for i in range(k):
            n = n << 8 | b[p + i]
        p += k
    return p, p + n


def cert_names(der):
    """(DNS names, IPv4 addresses as bytes, common name) of a certificate in DER, found
    by their object ids (subjectAltName 2.5.29.17, commonName 2.5.4.3)."""
    dns, ips, cn = [], [], None
    k = der.find(b"\x06\x03\x55\x1d\x11")
    if k >= 0:
        p = k + 5
        if der[p] == 0x01:  # critical: BOOLEAN
            p += 3
        p = _tl(der, p)[0]  # OCTET STRING
        p, end = _tl(der, p)  # SEQUENCE OF GeneralName
        while p < end:
            q, e = _tl(der, p)
            if der[p] == 0x82:
                dns.append(der[q:e].decode())
            elif der[p] == 0x87 and e - q == 4:
                ips.append(der[q:e])
            p = e
    k = der.rfind(b"\x06\x03\x55\x04\x03")  # the subject's (the issuer's comes first)
    if k >= 0:
        q, e = _tl(der, k + 5)
        cn = der[q:e].decode()
    return dns, ips, cn
