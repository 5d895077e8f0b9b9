"""A forwarding HTTP proxy in front of the rollout server that can throttle artifact downloads.

Tests put it between an agent and the server to make a download slow enough to kill the agent
in the middle of it, and to see which Range the agent asks for when it resumes.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "host"}


class ThrottlingProxy:
    """Forwards every request to ``upstream``; artifact bodies go out at ``bytes_per_second``.

    Attributes:
        downloads: one ``(sha256, range_header, bytes_sent)`` per artifact request, updated live.
    """

    def __init__(self, upstream: str, bytes_per_second: float | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.bytes_per_second = bytes_per_second
        self.downloads: list[list] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ThrottlingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sent(self, sha256: str) -> int:
        with self._lock:
            return sum(d[2] for d in self.downloads if d[0] == sha256)

    def requests_for(self, sha256: str) -> list[str | None]:
        with self._lock:
            return [d[1] for d in self.downloads if d[0] == sha256]


def _handler(proxy: ThrottlingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._forward()

        def do_POST(self) -> None:
            self._forward()

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            request = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command,
                                             headers=headers)
            try:
                response = urllib.request.urlopen(request, timeout=30)
            except urllib.error.HTTPError as err:
                response = err
            except OSError:
                self.send_error(502)
                return
            with response:
                self.send_response(response.status if hasattr(response, "status") else response.code)
                for key, value in response.headers.items():
                    if key.lower() not in HOP_HEADERS:
                        self.send_header(key, value)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                record = None
                if self.path.startswith("/v1/artifacts/"):
                    record = [self.path.rsplit("/", 1)[-1], self.headers.get("Range"), 0]
                    with proxy._lock:
                        proxy.downloads.append(record)
                self._stream(response, record)

        def _stream(self, response, record: list | None) -> None:
            chunk = 4096 if record is not None and proxy.bytes_per_second else 1 << 16
            try:
                while data := response.read(chunk):
                    self.wfile.write(data)
                    if record is not None:
                        with proxy._lock:
                            record[2] += len(data)
                        if proxy.bytes_per_second:
                            time.sleep(len(data) / proxy.bytes_per_second)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent went away mid-transfer (that is the point of some tests)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
