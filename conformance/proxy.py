"""A recording, fault-injecting HTTP proxy between one device and the rollout server.

Every device the kit starts talks to the server through its own proxy, so the kit judges what
the device did on the wire (which requests, with which ``If-None-Match``, ``Range`` and
credential, how long after which answer) without trusting anything the device says. Armed
faults stand for what networks and servers do to devices: an answer of 429 / 503 with
``Retry-After``, a download cut in the middle or stalled, bytes that are not the artifact,
an answer lost after the server acted on the request, an extra header.

    proxy = FaultProxy(server.url).start()
    proxy.arm(Fault.cut(path=f"/v1/artifacts/{sha}", after_bytes=40_000))
    ...
    [e.request_headers.get("range") for e in proxy.exchanges("GET", f"/v1/artifacts/{sha}")]
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "host", "te", "upgrade"}
RECORDED_BODY_BYTES = 64 * 1024  # answers up to this size are kept (JSON); artifacts are not
STALL_SECONDS = 60.0  # a stalled transfer hangs this long at most (the kit kills the device sooner)


@dataclass
class Exchange:
    """One request as the proxy saw it; times are this process' ``time.monotonic()``."""

    method: str
    path: str
    request_headers: dict[str, str]  # lower-case names
    started: float
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    bytes_sent: int = 0
    answered: float | None = None  # the last byte was written (None: no answer, or not yet)
    fault: str | None = None

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def credential(self) -> str | None:
        value = self.request_headers.get("authorization", "")
        return value.split(None, 1)[1].strip() if " " in value else None

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Fault:
    """What to do to the next ``times`` requests that ``matches`` (method, path without query)."""

    kind: str
    matches: Callable[[str, str], bool]
    times: int = 1
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    after_bytes: int = 0
    served: threading.Event = field(default_factory=threading.Event)  # set once it was applied (answered)

    @staticmethod
    def _match(method: str | None, path: str | None, prefix: str | None) -> Callable[[str, str], bool]:
        def matches(m: str, p: str) -> bool:
            return ((method is None or m == method) and (path is None or p == path)
                    and (prefix is None or p.startswith(prefix)))
        return matches

    @classmethod
    def reply(cls, status: int, retry_after: str | None = None, method: str | None = None,
              path: str | None = None, prefix: str | None = None, times: int = 1) -> Fault:
        """Answer ``status`` (JSON error body) without asking the server."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls("reply", cls._match(method, path, prefix), times, status=status, headers=headers)

    @classmethod
    def cut(cls, path: str, after_bytes: int, times: int = 1) -> Fault:
        """Forward; send the headers and ``after_bytes`` of the body, then close the connection."""
        return cls("cut", cls._match("GET", path, None), times, after_bytes=after_bytes)

    @classmethod
    def stall(cls, path: str, after_bytes: int, times: int = 1) -> Fault:
        """Forward; send ``after_bytes`` of the body, then hang (until the proxy stops)."""
        return cls("stall", cls._match("GET", path, None), times, after_bytes=after_bytes)

    @classmethod
    def tamper(cls, path: str, times: int = 1) -> Fault:
        """Forward; flip one byte in the middle of the body (same size)."""
        return cls("tamper", cls._match("GET", path, None), times)

    @classmethod
    def pad(cls, path: str, extra_bytes: int = 16, times: int = 1) -> Fault:
        """Forward; append ``extra_bytes`` zero bytes (and say so in ``Content-Length``)."""
        return cls("pad", cls._match("GET", path, None), times, after_bytes=extra_bytes)

    @classmethod
    def truncate(cls, path: str, missing_bytes: int = 16, times: int = 1) -> Fault:
        """Forward; leave out the last ``missing_bytes`` (a complete answer of the wrong size)."""
        return cls("truncate", cls._match("GET", path, None), times, after_bytes=missing_bytes)

    @classmethod
    def drop_answer(cls, method: str, path: str, times: int = 1) -> Fault:
        """Forward (the server acts on it), then close the connection without answering."""
        return cls("drop_answer", cls._match(method, path, None), times)

    @classmethod
    def add_header(cls, name: str, value: str, method: str | None = None, path: str | None = None,
                   prefix: str | None = None, times: int = 1) -> Fault:
        """Forward; add a header to the server's answer."""
        return cls("add_header", cls._match(method, path, prefix), times, headers={name: value})


class FaultProxy:
    """Forwards to ``upstream`` (``http://host:port``) and records every :class:`Exchange`."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self._exchanges: list[Exchange] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.changed = threading.Condition(self._lock)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def arm(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def exchanges(self, method: str | None = None, route: str | None = None,
                  prefix: str | None = None) -> list[Exchange]:
        """The requests so far, oldest first, optionally of one method and path (query left out)."""
        with self._lock:
            return [e for e in self._exchanges if (method is None or e.method == method)
                    and (route is None or e.route == route)
                    and (prefix is None or e.route.startswith(prefix))]

    def wait_for(self, condition: Callable[[list[Exchange]], object], timeout: float, what: str) -> object:
        """Block until ``condition(all exchanges)`` is truthy (re-checked at every change)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (result := condition(list(self._exchanges))):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                self.changed.wait(left)
        return result

    def _take_fault(self, method: str, route: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.matches(method, route):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, exchange: Exchange, **changes: object) -> None:
        with self.changed:
            for name, value in changes.items():
                setattr(exchange, name, value)
            self.changed.notify_all()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            exchange = Exchange(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                time.monotonic())
            fault = proxy._take_fault(self.command, exchange.route)
            with proxy.changed:
                exchange.fault = fault.kind if fault else None
                proxy._exchanges.append(exchange)
                proxy.changed.notify_all()
            self.close_connection = True
            try:
                if fault is not None and fault.kind == "reply":
                    self._reply(exchange, fault)
                else:
                    self._forward(exchange, body, fault)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the device went away mid-answer (killed: some scenarios do that)
            finally:
                if fault is not None:
                    fault.served.set()

        def _reply(self, exchange: Exchange, fault: Fault) -> None:
            payload = json.dumps({"error": {429: "rate_limited"}.get(fault.status, "unavailable"),
                                  "detail": "injected by the conformance kit's proxy"}).encode()
            headers = {"Content-Type": "application/json", "Content-Length": str(len(payload)),
                       **fault.headers}
            self._send_head(exchange, fault.status, headers)
            self.wfile.write(payload)
            self.wfile.flush()
            proxy._record(exchange, body=payload, bytes_sent=len(payload), answered=time.monotonic())

        def _forward(self, exchange: Exchange, body: bytes | None, fault: Fault | None) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
            except OSError:
                upstream.close()
                payload = b"bad gateway: the server does not answer"
                self._send_head(exchange, 502, {"Content-Type": "text/plain",
                                                "Content-Length": str(len(payload))})
                self.wfile.write(payload)
                proxy._record(exchange, body=payload, bytes_sent=len(payload), answered=time.monotonic())
                return
            with contextlib.closing(upstream):
                out = {k: v for k, v in response.getheaders() if k.lower() not in HOP_HEADERS}
                kind = fault.kind if fault else None
                if kind == "drop_answer":
                    response.read()  # the server did the work; the device never hears of it
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if kind == "add_header":
                    out.update(fault.headers)
                if kind in ("tamper", "pad", "truncate"):
                    self._send_whole(exchange, response.status, out, _transform(kind, response.read(), fault))
                    return
                self._send_head(exchange, response.status, out)
                self._stream(exchange, response, fault)

        def _send_whole(self, exchange: Exchange, status: int, headers: dict[str, str], data: bytes) -> None:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
            self._send_head(exchange, status, {**headers, "Content-Length": str(len(data))})
            self.wfile.write(data)
            self.wfile.flush()
            proxy._record(exchange, bytes_sent=len(data), answered=time.monotonic())

        def _stream(self, exchange: Exchange, response: http.client.HTTPResponse,
                    fault: Fault | None) -> None:
            limit = fault.after_bytes if fault is not None and fault.kind in ("cut", "stall") else None
            keep = not exchange.route.startswith("/v1/artifacts/")
            sent, kept = 0, bytearray()
            while data := response.read1(1 << 16):
                if limit is not None:
                    data = data[: max(0, limit - sent)]
                self.wfile.write(data)
                self.wfile.flush()
                sent += len(data)
                if keep and len(kept) < RECORDED_BODY_BYTES:
                    kept += data
                proxy._record(exchange, bytes_sent=sent)
                if limit is not None and sent >= limit:
                    break
            if limit is not None:  # the device has what was sent; now the connection dies
                if fault.kind == "stall":
                    proxy._stopping.wait(STALL_SECONDS)
                else:
                    time.sleep(0.2)  # let the device read the part before the cut
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                proxy._record(exchange, body=bytes(kept))
                return
            proxy._record(exchange, body=bytes(kept), answered=time.monotonic())

        def _send_head(self, exchange: Exchange, status: int, headers: dict[str, str]) -> None:
            # recorded before the head leaves: an answer without a body (a 304) is complete for the
            # device at end_headers(), and the kit may look at the exchange as soon as it heard back
            proxy._record(exchange, status=status,
                          response_headers={k.lower(): v for k, v in headers.items()})
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _transform(kind: str, data: bytes, fault: Fault) -> bytes:
    if kind == "tamper":
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:] if data else data
    if kind == "pad":
        return data + bytes(fault.after_bytes)
    return data[: max(0, len(data) - fault.after_bytes)]
