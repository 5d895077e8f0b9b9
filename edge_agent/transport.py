"""How the agent reaches its rollout server: TLS verification, key pinning, plain-HTTP policy and
redirects. Every request the agent makes (assignment, registration, reports, artifact downloads)
goes through one :class:`Transport`.

The rules (docs/edge-agent.md, "Transport security"):

* **https** is verified: the certificate chain against the system CA store, or against
  ``ca_file`` alone when one is given, and the host name. With ``pins`` the server's public key
  must also be one of them: the sha256 of the leaf certificate's SubjectPublicKeyInfo (DER),
  written in base64 as HPKP and ``curl --pinnedpubkey`` do. The pin is checked right after the
  handshake, before one byte of the request (and so the credential) is sent.
* **http://** goes only to this machine (127.0.0.0/8, ::1, ``localhost``) unless
  ``allow_insecure_http``; the same rule holds for every redirect target.
* **Redirects**: within the server's origin (scheme, host, port) they are followed with every
  header; a GET to another origin (a presigned download URL, say) without ``Authorization`` or
  ``Cookie``; never from https to http, never to a scheme other than http(s). A POST is followed
  only on 307/308 (same method and body) and only within the origin: its body may hold a secret
  (registration sends the enrollment token in it). 301/302/303 would turn it into a body-less
  GET, so they are refused too and the caller retries later. ``ca_file`` and ``pins`` describe
  the rollout server: another origin is verified against the system store plus ``ca_file``,
  without pins.

Standard library only; ``cryptography`` (an agent dependency anyway, for manifest signatures)
is imported only when a pin has to be checked.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import http.client
import ipaddress
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("edgeship.agent")

DEFAULT_PORTS = {"http": 80, "https": 443}
_PRIVATE_HEADERS = {"authorization", "cookie"}
_CONTENT_HEADERS = {"content-length", "content-type"}


class InsecureUrl(ValueError):
    """A URL the agent will not use: plain HTTP to another machine, or not http(s) at all."""


class TransportRefused(urllib.error.URLError):
    """A request or redirect refused before anything was sent (see the module docstring)."""


class PinMismatch(ssl.SSLCertVerificationError):
    """The server's certificate verified, but its public key is not one of the pinned ones."""


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine: 127.0.0.0/8, ::1 (also IPv4-mapped) or ``localhost``."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def check_url(url: str, allow_insecure_http: bool = False) -> None:
    """Raise :class:`InsecureUrl` for a URL the agent must not talk to (see the module docstring)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InsecureUrl(f"{_shown(url)} is not an http(s) URL with a host")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback(parts.hostname):
        raise InsecureUrl(
            f"{_shown(url)} is plain HTTP to another machine: the device's credential, its assignments "
            "and reports would cross the network unencrypted and unauthenticated. Use https:// (with "
            "ca_file for a private CA), or set allow_insecure_http = true if you accept that")


def origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` with the default port filled in: two URLs with the same origin
    may share the device's credential."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower().rstrip("."), port or DEFAULT_PORTS.get(scheme)


def parse_pin(text: str) -> bytes:
    """A pin as configured (base64 of a sha256, optionally prefixed ``sha256//`` as curl writes
    it) → the 32-byte digest.

    Raises:
        ValueError: not the base64 of 32 bytes.
    """
    value = text.strip().removeprefix("sha256//").removeprefix("sha256/")
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 32:
        raise ValueError(f"server pin {text!r} is not the base64 sha256 of a public key (44 characters "
                         "ending in '=')")
    return digest


def spki_sha256(certificate_der: bytes) -> bytes:
    """sha256 of the SubjectPublicKeyInfo (DER) of a certificate given in DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_der_x509_certificate(certificate_der).public_key()
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


def pin_of(certificate_pem: bytes) -> str:
    """The pin (base64) of a PEM certificate's public key: what ``server_pin_sha256`` takes."""
    der = ssl.PEM_cert_to_DER_cert(certificate_pem.decode("ascii"))
    return base64.b64encode(spki_sha256(der)).decode("ascii")


def tls_context(ca_file: Path | None = None, with_system_store: bool = False) -> ssl.SSLContext:
    """A verifying client context: ``ca_file`` only, the system store only, or both."""
    if ca_file is None:
        context = ssl.create_default_context()
    else:
        context = ssl.create_default_context(cafile=str(ca_file))
        if with_system_store:
            context.load_default_certs()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Transport:
    """Opens requests to one rollout server (and wherever its redirects lead) by the rules above.

    Args:
        server_url: the rollout server's base URL; its origin is the one ``ca_file``, the pins
            and the device's credential belong to.
        ca_file: PEM bundle that replaces the system store for the server (``None``: system).
        pins: accepted server key pins (:func:`parse_pin` forms); empty: no pinning.
        allow_insecure_http: allow ``http://`` to other machines.

    Raises:
        ValueError: a malformed pin; ``ssl.SSLError`` / ``OSError``: an unreadable ``ca_file``.
    """

    def __init__(self, server_url: str, ca_file: Path | str | None = None, pins: Iterable[str] = (),
                 allow_insecure_http: bool = False) -> None:
        self.server_url = server_url
        self.server_origin = origin(server_url)
        self.ca_file = Path(ca_file) if ca_file else None
        self.pins = frozenset(parse_pin(p) for p in pins)
        self.allow_insecure_http = allow_insecure_http
        self._server_context = tls_context(self.ca_file)
        self._other_context = tls_context(self.ca_file, with_system_store=True) if self.ca_file else \
            self._server_context
        self._opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                        urllib.request.HTTPHandler(), _HTTPSHandler(self),
                        urllib.request.HTTPDefaultErrorHandler(), _RedirectHandler(self),
                        urllib.request.HTTPErrorProcessor(), _PlainHttpGuard(self)):
            self._opener.add_handler(handler)

    def same_origin(self, url: str) -> bool:
        """Whether ``url`` is on the rollout server's origin (so it may carry the credential)."""
        return origin(url) == self.server_origin

    def open(self, request: urllib.request.Request | str, timeout: float) -> http.client.HTTPResponse:
        """``urllib.request.urlopen`` under the rules of this module.

        Raises:
            urllib.error.HTTPError: an HTTP error status (also a redirect that is not followed).
            urllib.error.URLError: no connection, a certificate or pin that does not verify
                (``reason`` is the ``ssl`` error), or :class:`TransportRefused`.
        """
        return self._opener.open(request, timeout=timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Checks the server's key against the pins right after the handshake, before sending."""

    def __init__(self, *args: Any, pins: frozenset[bytes] = frozenset(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pins = pins

    def connect(self) -> None:
        super().connect()
        if not self._pins:
            return
        der = self.sock.getpeercert(binary_form=True)
        if der is None or spki_sha256(der) not in self._pins:
            got = base64.b64encode(spki_sha256(der)).decode() if der else "no certificate"
            self.sock.close()
            self.sock = None
            raise PinMismatch(f"the server's public key (sha256 {got}) is not a pinned one "
                              "(server_pin_sha256)")


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, transport: Transport) -> None:
        super().__init__()
        self._transport = transport

    def https_open(self, request: urllib.request.Request) -> http.client.HTTPResponse:
        transport = self._transport
        if transport.same_origin(request.full_url):
            connection = functools.partial(_PinnedHTTPSConnection, pins=transport.pins)
            return self.do_open(connection, request, context=transport._server_context)
        return self.do_open(http.client.HTTPSConnection, request, context=transport._other_context)


class _PlainHttpGuard(urllib.request.BaseHandler):
    """Refuses, before connecting, plain HTTP to another machine (the first request included)."""

    handler_order = 100

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        try:
            check_url(request.full_url, self._transport.allow_insecure_http)
        except InsecureUrl as err:
            raise TransportRefused(str(err)) from None
        return request


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("Location") or headers.get("URI")
        if location:
            scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, location)).scheme.lower()
            if scheme not in ("http", "https"):  # urllib itself would allow ftp
                self._refuse(fp, req, code, location, f"to a {scheme or 'schemeless'} URL")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        method = req.get_method()
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if old.scheme == "https" and new.scheme != "https":
            self._refuse(fp, req, code, newurl, "from https to http (a downgrade)")
        try:
            check_url(newurl, self._transport.allow_insecure_http)
        except InsecureUrl as err:
            self._refuse(fp, req, code, newurl, str(err))
        crossing = origin(newurl) != origin(req.full_url)
        if method not in ("GET", "HEAD") and crossing:
            self._refuse(fp, req, code, newurl, f"a {method} is not sent on to another origin (its body "
                         "may hold a secret, such as the enrollment token)")
        if code in (307, 308):
            data, keep_body = req.data, True
        elif method in ("GET", "HEAD"):
            data, keep_body = None, False
        else:  # 301/302/303 to a POST: urllib would resend it as a GET without its body
            raise urllib.error.HTTPError(
                req.full_url, code, f"redirect {code} of a {method} not followed (it would lose the body; "
                f"point the agent at the final URL)", headers, fp)
        kept = {k: v for k, v in req.headers.items()
                if keep_body or k.lower() not in _CONTENT_HEADERS}
        if crossing:
            kept = {k: v for k, v in kept.items() if k.lower() not in _PRIVATE_HEADERS}
        log.debug("following %d redirect%s to %s://%s", code, " (credential dropped)" if crossing else "",
                  new.scheme, new.netloc)
        return urllib.request.Request(newurl.replace(" ", "%20"), data=data, headers=kept,
                                      method=method if keep_body else ("HEAD" if method == "HEAD" else "GET"),
                                      origin_req_host=req.origin_req_host, unverifiable=True)

    @staticmethod
    def _refuse(fp: Any, req: urllib.request.Request, code: int, target: str, why: str) -> None:
        fp.close()
        raise TransportRefused(f"redirect {code} from {_shown(req.full_url)} to {_shown(target)} not "
                               f"followed: {why}")


def _shown(url: str) -> str:
    """A URL for a log line: scheme, host and path, never a query (presigned URLs hold secrets)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
