"""``edgeship server`` as a real process for the serving tests: started, waited for, stopped.

Over HTTP, or HTTPS with a test CA's certificate (:func:`tests.edge_agent.nettools.make_pki`).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.edge_agent.nettools import Pki
from tests.processes import stop_processes
from tests.rollout_server.postgres import free_port

ROOT = Path(__file__).resolve().parents[2]
READY_SECONDS = 60


@dataclass
class Served:
    """A running ``edgeship server``: where it listens and how to reach it."""

    process: subprocess.Popen
    port: int
    log: Path
    data_dir: Path
    pki: Pki | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://127.0.0.1:{self.port}"

    def context(self) -> ssl.SSLContext | None:
        """A client context that trusts the test CA (None over plain HTTP)."""
        return ssl.create_default_context(cafile=str(self.pki.ca_file)) if self.pki else None

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        if self.pki:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                               context=self.context())
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def raw_socket(self, timeout: float = 10) -> socket.socket:
        """A connected socket (TLS-wrapped over HTTPS) for writing requests byte by byte."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.pki:
            return self.context().wrap_socket(sock, server_hostname="127.0.0.1")
        return sock

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 10
            ) -> tuple[int, dict[str, str], bytes]:
        connection = self.connection(timeout)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def tokens(self) -> dict[str, str]:
        text = (self.data_dir / "first-start-tokens.txt").read_text()
        return dict(line.split("=", 1) for line in text.split())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def edgeship_server(tmp_path: Path, *args: str, pki: Pki | None = None, **env: str) -> Iterator[Served]:
    """``edgeship server *args`` on SQLite in ``tmp_path`` (TLS with ``pki``), ready; stopped after.
    ``env`` adds ``EDGESHIP_*`` settings (the controller waits an hour unless told otherwise)."""
    port = free_port()
    data_dir = tmp_path / "server"
    log = tmp_path / f"server-{port}.log"
    tls = ["--tls-cert", str(pki.cert_file), "--tls-key", str(pki.key_file)] if pki else []
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "EDGESHIP_CONTROLLER_INTERVAL_SECONDS": "3600",
                   **env}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgeship.cli", "server", "--port", str(port), "--data-dir", str(data_dir),
             *tls, *args], env=environment, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    served = Served(process, port, log, data_dir, pki)
    try:
        wait_ready(served)
        yield served
    finally:
        stop_processes(process)


def wait_ready(served: Served) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while True:
        assert served.process.poll() is None, served.log_text()
        with contextlib.suppress(OSError, http.client.HTTPException):
            if served.get("/readyz", timeout=2)[0] == 200:
                return
        assert time.monotonic() < deadline, f"server did not become ready: {served.log_text()}"
        time.sleep(0.2)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer from a raw socket (status, lowercase headers, body by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket, within_seconds: float = 10) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within_seconds``, sending
    nothing more."""
    sock.settimeout(within_seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
