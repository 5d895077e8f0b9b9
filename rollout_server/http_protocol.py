"""uvicorn's HTTP/1.1 protocol (httptools) with a deadline for request headers and a bound on
requests per connection.

Why a header deadline: uvicorn has none. Its keep-alive timeout runs only between requests and
is reset by every byte received, so a client that trickles a header byte every few seconds
holds its connection for ever (Slowloris). Here the headers of a request must be complete
``header_timeout_seconds`` after the connection opened or after the request's first byte
(whichever started the wait), and within :data:`MAX_HEADER_BYTES`; else the server answers
408 (431) and closes. The body has its own deadline, in :mod:`rollout_server.request_body`.

Why a bound on requests (``keepalive_requests``): a worker keeps the connections it accepted, so
a few long-lived clients (a proxy's keep-alive pool, a load generator) may all sit on one worker
while others idle. The bound's last request is answered with ``Connection: close``, and the
client reconnects to whichever worker accepts first (nginx's ``keepalive_requests``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

#: the most bytes a request line and headers may take (nginx: 4 x 8 KiB; Node: 16 KiB).
MAX_HEADER_BYTES = 64 * 1024
HEADERS_LATE = (408, "Request Timeout", "request_timeout", "the request headers did not arrive in time")
HEADERS_TOO_LARGE = (431, "Request Header Fields Too Large", "headers_too_large",
                     f"the request line and headers are over {MAX_HEADER_BYTES} bytes")


class ServerConfig(uvicorn.Config):
    """uvicorn's settings plus this protocol's two (they travel with it to worker processes)."""

    def __init__(self, *args: Any, header_timeout_seconds: float = 20.0, keepalive_requests: int = 100,
                 **kwargs: Any) -> None:
        super().__init__(*args, http=GuardedHttpProtocol, **kwargs)
        self.header_timeout_seconds = header_timeout_seconds
        self.keepalive_requests = keepalive_requests


class GuardedHttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with the header deadline and the keep-alive request bound."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout_seconds = float(getattr(config, "header_timeout_seconds", 20.0))
        self.keepalive_requests = int(getattr(config, "keepalive_requests", 100))
        self.requests_on_connection = 0
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        # No request in progress: these bytes start the next one (or are the CRLFs some clients
        # send between requests, which must not keep a connection alive for ever either).
        if self.cycle is None or self.cycle.response_complete:
            self._arm_header_deadline()
        super().data_received(data)
        if self._header_deadline is not None:  # all of it went into headers still incomplete
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(HEADERS_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:
            self.requests_on_connection += 1
            if self.requests_on_connection >= self.keepalive_requests:
                self.cycle.keep_alive = False  # answered with Connection: close, then closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None and self.header_timeout_seconds > 0:
            self._header_bytes = 0
            self._header_deadline = self.loop.call_later(self.header_timeout_seconds, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered (pipelined bytes armed the deadline): not late
        self._refuse(HEADERS_LATE)

    def _refuse(self, answer: tuple[int, str, str, str]) -> None:
        """Answer ``answer`` (status, reason, error, detail) as JSON and close the connection."""
        self._disarm_header_deadline()
        if self.transport is None or self.transport.is_closing():
            return
        status, reason, error, detail = answer
        log.info("%s: %s; closing the connection", self.client or "client", detail)
        body = json.dumps({"error": error, "detail": detail}).encode()
        self.transport.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                             f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        self.transport.close()
