#!/usr/bin/env python3
"""Fetch micropython-lib's umqtt.simple (PyPI: micropython-umqtt.simple) for the tests.

`pip download` cannot fetch it (its sdist has no setup.py), so this script asks the package
index that pip is configured with for the sdist, checks its sha256, keeps it in the cache and
extracts umqtt/simple.py into DEST. It also writes DEST/ussl.py (`from ssl import *`): umqtt's
TLS path does `import ussl`, which current MicroPython lacks.

Index: $PIP_INDEX_URL if set, else `pip config get global.index-url`, else PyPI. The index is
read with the PEP 691 JSON simple API (an HTML PEP 503 answer is understood too).
Standard library only, so that it runs with the system python3 of a fresh machine.

usage: fetch_umqtt.py --cache-dir DIR --dest DIR [--pip-python PYTHON]
"""

import argparse
import ast
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser

PROJECT = "micropython-umqtt.simple"
VERSION = "1.3.4"
SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
SDIST = "%s-%s.tar.gz" % (PROJECT, VERSION)
MEMBER = "umqtt/simple.py"
# pip's own default: pip._internal.models.index.PyPI.simple_url
PYPI_SIMPLE_URL = "https://pypi.org/simple"
TIMEOUT = 60


def log(msg):
    print("fetch_umqtt: " + msg, flush=True)


def index_url(pip_python):
    """The index pip would install from: (url, where it came from)."""
    url = os.environ.get("PIP_INDEX_URL", "").strip()
    if url:
        return url.split()[0], "PIP_INDEX_URL"
    # `pip config get global.index-url` misses values from $PIP_CONFIG_FILE (pip 23), so read
    # the merged `pip config list` instead; [install] overrides [global] for `pip install`.
    for python in [pip_python, sys.executable]:
        if not python:
            continue
        try:
            out = subprocess.run([python, "-m", "pip", "config", "list"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.returncode != 0:
            continue  # no pip in this python
        config = {}
        for line in out.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                try:
                    config[key] = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    config[key] = value
        for key in ("install.index-url", "global.index-url"):
            if str(config.get(key, "")).strip():
                return str(config[key]).split()[0], "pip config %s (%s)" % (key, python)
        break  # pip answered: nothing configured
    return PYPI_SIMPLE_URL, "pip's default"


def split_auth(url):
    """Return (url without user:password@, Authorization header or None)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.hostname or ""
    if parts.port:
        netloc += ":%d" % parts.port
    creds = "%s:%s" % (urllib.parse.unquote(parts.username),
                       urllib.parse.unquote(parts.password or ""))
    header = "Basic " + base64.b64encode(creds.encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), header


def fetch(url, auth, accept=None):
    """GET url; return (final url, content type, body)."""
    if url.startswith("file:") and url.endswith("/"):
        url += "index.html"  # a file:// index is a directory tree of index.html files
    req = urllib.request.Request(url)
    if accept:
        req.add_header("Accept", accept)
    if auth and not url.startswith("file:"):
        req.add_header("Authorization", auth)
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        return resp.geturl(), resp.headers.get("Content-Type", ""), resp.read()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []  # (filename, href)
        self._href = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def find_sdist_url(index):
    base, auth = split_auth(index)
    page = base.rstrip("/") + "/micropython-umqtt-simple/"  # PEP 503-normalised name
    page, ctype, body = fetch(
        page, auth,
        "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
    )
    candidates = []  # (filename, url, sha256 or None)
    if "json" in ctype:
        for f in json.loads(body)["files"]:
            candidates.append((f["filename"], f["url"], f.get("hashes", {}).get("sha256")))
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", "replace"))
        for name, href in parser.links:
            href, _, frag = href.partition("#")
            digest = frag[len("sha256="):] if frag.startswith("sha256=") else None
            candidates.append((name, href, digest))
    for name, url, digest in candidates:
        if name == SDIST or (digest is not None and digest.lower() == SHA256):
            return urllib.parse.urljoin(page, url), auth
    raise SystemExit("fetch_umqtt: %s not found at %s" % (SDIST, page))


def sha256_of(data):
    return hashlib.sha256(data).hexdigest()


def write_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def get_sdist(cache_dir, pip_python):
    cached = os.path.join(cache_dir, "downloads", SDIST)
    if os.path.exists(cached):
        with open(cached, "rb") as f:
            data = f.read()
        if sha256_of(data) == SHA256:
            log("using cached " + cached)
            return data
        log("cached %s has the wrong sha256; fetching again" % cached)
    index, source = index_url(pip_python)
    shown = split_auth(index)[0]
    log("looking up %s %s at %s (from %s)" % (PROJECT, VERSION, shown, source))
    try:
        url, auth = find_sdist_url(index)
        log("downloading " + split_auth(url)[0])
        host = urllib.parse.urlsplit(url).netloc
        same_host = host == urllib.parse.urlsplit(shown).netloc
        _, _, data = fetch(url, auth if same_host else None)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SystemExit("fetch_umqtt: cannot fetch %s from the index %s: %s" % (SDIST, shown, e))
    digest = sha256_of(data)
    if digest != SHA256:
        raise SystemExit("fetch_umqtt: sha256 mismatch for %s: got %s, want %s"
                         % (url, digest, SHA256))
    write_atomic(cached, data)
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--dest", required=True)
    ap.add_argument("--pip-python", help="python whose pip config names the index")
    args = ap.parse_args()

    data = get_sdist(args.cache_dir, args.pip_python)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.split("/", 1)[-1] == MEMBER]
        if len(members) != 1:
            raise SystemExit("fetch_umqtt: %s not found in %s" % (MEMBER, SDIST))
        source = tar.extractfile(members[0]).read()
    write_atomic(os.path.join(args.dest, "umqtt", "simple.py"), source)
    write_atomic(os.path.join(args.dest, "ussl.py"), b"from ssl import *\n")
    log("umqtt.simple %s in %s" % (VERSION, os.path.join(args.dest, "umqtt")))


if __name__ == "__main__":
    main()
