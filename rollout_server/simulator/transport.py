"""One keep-alive HTTP/1.1 connection per worker thread, to a checked loopback target.

``http.client`` rather than ``requests``: a worker sends thousands of small requests a minute
for many devices over one connection, and the per-request overhead of a session (hooks,
cookie jar, adapters) would be most of the simulator's CPU on a 2-core machine.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any

from rollout_server.simulator.safety import Target

#: status recorded for a request that got no response (refused, reset, timed out).
NO_RESPONSE = 0


@dataclass(frozen=True)
class Answer:
    """One response.

    Attributes:
        status: HTTP status, or :data:`NO_RESPONSE`.
        etag: the ``ETag`` header, if any.
        body: the raw body.
        seconds: wall time from sending to the last byte read.
        error: the exception's class name when there was no response.
    """

    status: int
    etag: str | None
    body: bytes
    seconds: float
    error: str = ""

    def json(self) -> Any:
        """The body as JSON (``None`` when empty or not JSON)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


class Connection:
    """A persistent connection to ``target``; not thread-safe (one per worker).

    Args:
        target: checked by :func:`~rollout_server.simulator.safety.loopback_target`.
        timeout_seconds: connect and read timeout of each request.
    """

    def __init__(self, target: Target, timeout_seconds: float = 10.0) -> None:
        self.target = target
        self.timeout_seconds = timeout_seconds
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        """Send one request and read the whole answer (so the connection can be reused).

        A request on a reused connection that the server had closed meanwhile (keep-alive
        timeout) is sent once more on a fresh one; timeouts are not retried.
        """
        sent_headers = {"Host": self.target.host_header, **(headers or {})}
        if body is not None:
            sent_headers.setdefault("Content-Type", "application/json")
        url = self.target.base_path + path
        while True:
            fresh = self._conn is None
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.target.address, self.target.port,
                                                        timeout=self.timeout_seconds)
            started = time.perf_counter()
            try:
                self._conn.request(method, url, body=body, headers=sent_headers)
                response = self._conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as err:
                self.close()
                if fresh or isinstance(err, TimeoutError):
                    return Answer(NO_RESPONSE, None, b"", time.perf_counter() - started, type(err).__name__)
                continue  # a stale keep-alive connection: once more on a new one
            seconds = time.perf_counter() - started
            if response.will_close:
                self.close()
            return Answer(response.status, response.getheader("ETag"), data, seconds)

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
