"""An ASGI app that runs a WSGI app (Flask) only on fully received requests.

Usage (``rollout_server/serve.py`` does this under uvicorn)::

    bridge = WsgiBridge(flask_app, route_limit=flask_route_limits(flask_app, flask_app.config),
                        policy=BodyPolicy(grace_seconds=20, min_bytes_per_second=500), threads=8)

Why: a WSGI worker thread reads the body as it arrives, so a client that sends it slowly holds
a thread; a handful of such clients stalled the old server. Here the event loop receives the body
(:func:`rollout_server.request_body.receive_body`: the route's limit counted as it arrives, a
deadline, memory then disk), and only then does a thread of a bounded pool run the app, with
``wsgi.input`` set to the received body. The answer is streamed back in batches, each produced
in the pool, so a large download never sits whole in memory and a slow reader holds no thread.

Large bodies (routes whose limit is above what stays in memory: publishing a release) are
received only for a request the app would accept. The app first sees the request with a body
stream that stops it at its first read (a probe, like ``Expect: 100-continue``): if it answers
without reading (401, 403, ...), that answer is sent and the body is never received; once it
starts reading, the probe is dropped and the app runs again on the received body. So what runs
before such a view first reads its body must have no side effects (an authentication check).

A refused body (413 over the limit, 408 late) is answered with ``Connection: close`` instead of
reading the rest of it. Only a body that is small and already on its way (at most
:data:`DISCARD_MAX_BYTES`, within :data:`DISCARD_SECONDS`) is read and thrown away first, as
nginx's lingering close does: closing a socket with unread data resets the connection, and the
reset can destroy the answer before the client (or a proxy in front, which then says 502) reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from werkzeug.wsgi import FileWrapper

from rollout_server.request_body import (
    BodyPolicy,
    BodyRefused,
    Receive,
    Spool,
    receive_body,
    too_large_detail,
)

log = logging.getLogger(__name__)
#: a streamed answer goes out in batches of about this size (one trip to the pool each).
BATCH_BYTES = 256 * 1024
#: routes whose limit is above this get the probe (their bodies would go to disk).
PROBE_ABOVE_BYTES = 1024 * 1024

Send = Callable[[dict[str, Any]], Any]
#: :meth:`WsgiBridge._receive`'s word for "the request was answered (or the client left)".
ANSWERED = object()
#: a refused request's body is read and discarded before the answer when it is at most this
#: large and arrives within DISCARD_SECONDS (see the module docstring); larger ones are not read.
DISCARD_MAX_BYTES = 8 * 1024 * 1024
DISCARD_SECONDS = 2.0
RouteLimit = Callable[[str, str], int]


class BodyNotReadYet(BaseException):
    """Raised by the probe's body stream at the app's first read (a BaseException, so the app's
    own error handlers let it through instead of answering 500)."""


class _ProbeInput:
    def read(self, *_: Any) -> bytes:
        raise BodyNotReadYet

    readline = read1 = readinto = read

    def __iter__(self) -> Iterator[bytes]:
        raise BodyNotReadYet


def _file_wrapper(file: IO[bytes], buffer_size: int = 8192) -> FileWrapper:
    """``wsgi.file_wrapper``: files are read in batch-sized blocks, not werkzeug's 8 KiB."""
    return FileWrapper(file, max(buffer_size, BATCH_BYTES))


@dataclass
class _Answer:
    """What the app answered: status, headers, the batch in hand and the rest of its body."""

    status: int = 500
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    iterable: Iterable[bytes] | None = None
    iterator: Iterator[bytes] = field(default_factory=lambda: iter(()))
    written: list[bytes] = field(default_factory=list)
    finished: bool = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
                       ) -> Callable[[bytes], None]:
        self.status = int(status.split(" ", 1)[0])
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return self.written.append  # the legacy write() callable

    def next_batch(self) -> bytes:
        """In the pool: up to about :data:`BATCH_BYTES` of the body (sets ``finished`` after the last)."""
        parts, size = self.written, sum(map(len, self.written))
        self.written = []
        for chunk in self.iterator:
            if chunk:
                parts.append(chunk)
                size += len(chunk)
            if size >= BATCH_BYTES:
                return b"".join(parts)
        self.finished = True
        return b"".join(parts)

    def close(self) -> None:
        close, self.iterable = getattr(self.iterable, "close", None), None
        if close is not None:
            close()


class WsgiBridge:
    """The ASGI app: receive the whole body in the loop, run ``wsgi_app`` in ``threads`` threads.

    Args:
        wsgi_app: the WSGI callable.
        route_limit: ``(method, path) -> bytes`` a request's body may have.
        policy: how long a body may take to arrive.
        threads: the pool that runs the app and produces streamed answers.
    """

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], route_limit: RouteLimit,
                 policy: BodyPolicy, threads: int) -> None:
        self.wsgi_app = wsgi_app
        self.route_limit = route_limit
        self.policy = policy
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgeship-app")

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"unsupported ASGI scope {scope['type']!r}")
        headers = _header_values(scope)
        spool = await self._receive(scope, headers, receive, send)
        if spool is ANSWERED:
            return
        try:
            environ = wsgi_environ(scope, headers, spool.file if spool else None,
                                   spool.size_bytes if spool else None)
            await self._answer(environ, scope, receive, send)
        finally:
            if spool is not None:
                spool.close()

    async def _receive(self, scope: dict[str, Any], headers: dict[str, str], receive: Receive,
                       send: Send) -> Spool | object | None:
        """The request's whole body (None: it has none), or :data:`ANSWERED` when it was refused
        (413, 408, the app's answer to the headers alone) or the client left."""
        declared = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not chunked and (declared is None or declared == "0"):
            return None
        if not chunked and not declared.isdigit():
            await _send_error(send, 400, "bad_request", "Content-Length is not a number")
            return ANSWERED
        limit = self.route_limit(scope["method"], scope["path"])
        if not chunked and int(declared) > limit:
            if int(declared) <= DISCARD_MAX_BYTES:
                await _discard_body(receive)
            await _send_error(send, 413, "payload_too_large", too_large_detail(limit))
            return ANSWERED
        if limit > PROBE_ABOVE_BYTES:
            probe = await self._probe(scope, headers, chunked)
            if probe is not None:  # the app answered on the headers alone: the body is not wanted
                if chunked or int(declared) <= DISCARD_MAX_BYTES:
                    await _discard_body(receive)
                await self._send_answer(probe, send, close=True)
                return ANSWERED
        try:
            return await receive_body(receive, limit, self.policy)
        except BodyRefused as refused:
            if refused.status is not None:
                error = "payload_too_large" if refused.status == 413 else "request_timeout"
                await _send_error(send, refused.status, error, refused.detail)
            return ANSWERED

    async def _answer(self, environ: dict[str, Any], scope: dict[str, Any], receive: Receive,
                      send: Send) -> None:
        """Run the app in the pool and stream its answer (stopping if the client leaves)."""
        disconnected = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            try:
                answer = await self._run(self._call_app, environ)
            except Exception:  # the app answers its own errors: this is a bug
                log.exception("the app failed on %s %s", scope["method"], scope["path"])
                await _send_error(send, 500, "internal_error", "the server failed; see its log")
                return
            await self._send_answer(answer, send, disconnected=disconnected)
        finally:
            disconnected.cancel()

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    def _call_app(self, environ: dict[str, Any]) -> _Answer:
        """In the pool: the app's status, headers and first batch (``written``)."""
        answer = _Answer()
        answer.iterable = self.wsgi_app(environ, answer.start_response)
        answer.iterator = iter(answer.iterable)
        try:
            answer.written = [answer.next_batch()]  # start_response may come with the first piece
        except BaseException:
            answer.close()
            raise
        if answer.finished:  # the whole answer is here: close now, not in another trip to the pool
            answer.close()
        return answer

    async def _probe(self, scope: dict[str, Any], headers: dict[str, str], chunked: bool) -> _Answer | None:
        environ = wsgi_environ(scope, headers, _ProbeInput(),
                               None if chunked else int(headers["content-length"]))
        if chunked:
            environ["wsgi.input_terminated"] = True  # so the app reads (and stops) instead of seeing no body
        try:
            return await self._run(self._call_app, environ)
        except BodyNotReadYet:
            return None

    async def _send_answer(self, answer: _Answer, send: Send, close: bool = False,
                           disconnected: asyncio.Future | None = None) -> None:
        headers = answer.headers + ([(b"connection", b"close")] if close else [])
        try:
            await send({"type": "http.response.start", "status": answer.status, "headers": headers})
            batch, answer.written = b"".join(answer.written), []
            while True:
                finished = answer.finished
                await send({"type": "http.response.body", "body": batch, "more_body": not finished})
                if finished or (disconnected is not None and disconnected.done()):
                    return
                batch = await self._run(answer.next_batch)
        finally:
            if answer.iterable is not None:
                await self._run(answer.close)


def wsgi_environ(scope: dict[str, Any], headers: dict[str, str], body: Any, size_bytes: int | None
                 ) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP ``scope`` (``headers``: :func:`_header_values`) whose body
    is ``body``, ``size_bytes`` long (a chunked body arrives with its length known, so
    ``CONTENT_LENGTH`` is always set for one)."""
    root = scope.get("root_path", "")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    path = urllib.parse.unquote_to_bytes(raw_path).decode("latin-1")[len(root):]
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root.encode().decode("latin-1"),
        "PATH_INFO": path,
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] or 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body if body is not None else _EMPTY,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": _file_wrapper,
    }
    if size_bytes is not None:
        environ["CONTENT_LENGTH"] = str(size_bytes)
    for name, value in headers.items():
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name not in ("content-length", "transfer-encoding"):
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


class _Empty:
    def read(self, *_: Any) -> bytes:
        return b""

    readline = read


_EMPTY = _Empty()


def _header_values(scope: dict[str, Any]) -> dict[str, str]:
    """Request headers by lowercase name, repeated ones joined with commas. A name with ``_`` is
    dropped (as nginx does): in the environ it would pass for the same name with ``-``."""
    values: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        if "_" in name:
            continue
        value = raw_value.decode("latin-1")
        values[name] = f"{values[name]},{value}" if name in values else value
    return values


async def _discard_body(receive: Receive) -> None:
    """Read and drop the body of a refused request while it comes fast and stays small (at most
    :data:`DISCARD_MAX_BYTES` within :data:`DISCARD_SECONDS`), so that closing the connection
    after the answer does not reset it under the client; then give up, whatever is left."""
    loop = asyncio.get_running_loop()
    deadline, received = loop.time() + DISCARD_SECONDS, 0
    while received <= DISCARD_MAX_BYTES:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_error(send: Send, status: int, error: str, detail: str) -> None:
    """A JSON error as the app writes them, on a connection that closes after it."""
    body = json.dumps({"error": error, "detail": detail}, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def flask_route_limits(app: Any, settings: Mapping[str, Any]) -> RouteLimit:
    """``(method, path) -> limit`` from a Flask app's routes and the body-limit ``settings``
    (:data:`rollout_server.body_limits.ROUTE_LIMITS`), so the bridge and the app agree."""
    from werkzeug.exceptions import HTTPException
    from werkzeug.routing import RequestRedirect

    from rollout_server.body_limits import DEFAULT_LIMIT, ROUTE_LIMITS

    adapter = app.url_map.bind("localhost")
    limits = {endpoint: int(settings[key]) for endpoint, key in ROUTE_LIMITS.items()}
    default = int(settings[DEFAULT_LIMIT])

    def limit(method: str, path: str) -> int:
        with contextlib.suppress(HTTPException, RequestRedirect):
            endpoint, _ = adapter.match(path, method=method)
            return limits.get(endpoint, default)
        return default

    return limit
