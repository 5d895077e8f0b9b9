"""Real local servers for the transport tests: a scriptable HTTP(S) stub that records what it
receives, a TLS front for the real rollout server, and certificates made on the spot.

Standard library plus ``cryptography`` (already an agent dependency), so the agent-only venv
runs these tests too.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "host"}

# -- certificates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA and a server certificate it signed (for 127.0.0.1, ::1 and localhost)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    pin: str  # base64 sha256 of the server key's SubjectPublicKeyInfo

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name,
             key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def make_pki(directory: Path, label: str = "test", hosts: tuple[str, ...] = ("127.0.0.1", "::1", "localhost"),
             ) -> Pki:
    """A fresh CA and server certificate in ``directory`` (PEM files), valid for a day."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"edgeship {label} CA")
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    ca_cert = (
        _builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        _builder(_name(f"edgeship {label} server"), ca_name, key)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / f"{label}-ca.pem", directory / f"{label}-server.pem",
                                    directory / f"{label}-server.key")
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return Pki(ca_file, cert_file, key_file, base64.b64encode(hashlib.sha256(spki).digest()).decode())


# -- a scriptable stub server --------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the stub received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Stub:
    """A ThreadingHTTPServer on 127.0.0.1 (TLS when given a context) that answers with
    ``respond(seen) -> (status, headers, body)`` and records every request in ``seen``."""

    respond: Callable[[Seen], Reply]
    context: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = ThreadingHTTPServer((self.host, 0), _stub_handler(self))
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, client_address: None  # refused handshakes: quiet
        if self.context is not None:  # handshake in the handler thread, not in accept()
            self.server.socket = self.context.wrap_socket(self.server.socket, server_side=True,
                                                          do_handshake_on_connect=False)
        scheme = "https" if self.context is not None else "http"
        self.url = f"{scheme}://{self.host}:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def __enter__(self) -> Stub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


def redirect(location: str, status: int = 302) -> Reply:
    return status, {"Location": location}, b""


def _stub_handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.settimeout(10)
                try:
                    self.request.do_handshake()
                except (ssl.SSLError, OSError):
                    self.request.close()
                    raise
            super().setup()

        def handle(self) -> None:
            with contextlib.suppress(ssl.SSLError, ConnectionError):  # a client refused our certificate
                super().handle()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Seen(self.command, self.path, dict(self.headers.items()), body)
            stub.seen.append(seen)
            status, headers, payload = stub.respond(seen)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_HEAD = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


# -- a TLS (or plain) front for the real rollout server ------------------------------------------


class Front:
    """Forwards every request to ``upstream`` (the rollout server), optionally over TLS, and may
    answer some paths itself instead (``intercept(seen)`` returning a reply, or None to forward).
    ``seen`` records what the agent sent."""

    def __init__(self, upstream: str, context: ssl.SSLContext | None = None,
                 intercept: Callable[[Seen], Reply | None] | None = None, host: str = "127.0.0.1") -> None:
        self.upstream = upstream.rstrip("/")
        self.intercept = intercept or (lambda seen: None)
        self.stub = Stub(self._respond, context=context, host=host)
        self.url = self.stub.url
        self.seen = self.stub.seen

    def _respond(self, seen: Seen) -> Reply:
        answer = self.intercept(seen)
        if answer is not None:
            return answer
        return forward(self.upstream, seen)

    def __enter__(self) -> Front:
        self.stub.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stub.__exit__(*exc)


def forward(upstream: str, seen: Seen, headers: dict[str, str] | None = None) -> Reply:
    """``seen`` sent on to ``upstream`` with plain urllib (no redirects followed); its answer."""
    send = {k: v for k, v in seen.headers.items() if k.lower() not in HOP_HEADERS}
    if headers is not None:
        send = {**{k: v for k, v in send.items() if k.lower() not in {h.lower() for h in headers}}, **headers}
    request = urllib.request.Request(upstream + seen.path, data=seen.body or None, method=seen.method,
                                     headers=send)
    try:
        response = urllib.request.build_opener(_NoRedirect).open(request, timeout=30)
    except urllib.error.HTTPError as err:
        response = err
    with response:
        body = response.read()
        dropped = HOP_HEADERS | {"content-length"}
        kept = {k: v for k, v in response.headers.items() if k.lower() not in dropped}
        return response.status if hasattr(response, "status") else response.code, kept, body


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
