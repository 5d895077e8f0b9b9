"""Slow and stalled clients against the real ``edgeship server`` in both modes: they hold sockets,
never the server (issue 19: 8-12 slow-header sockets used to stall ``/healthz``); headers and
bodies that arrive too slowly are cut off at their deadlines, oversized headers refused.

How fast ``/healthz`` answers during an attack is a benchmark's figure
(``python -m benchmarks.slow_clients``); here it only has to answer.
"""

from __future__ import annotations

import selectors
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("uvicorn")

from rollout_server.http_protocol import MAX_HEADER_BYTES
from tests.rollout_server.served import Served, closed_by_server, edgeship_server, read_answer

MODES = {"one worker": (), "two workers": ("--workers", "2")}
SLOW_HEADERS, SLOW_BODIES = 50, 10
#: short deadlines for the tests of the deadlines themselves.
STRICT = {"EDGESHIP_HEADER_TIMEOUT_SECONDS": "1", "EDGESHIP_BODY_TIMEOUT_SECONDS": "1",
          "EDGESHIP_BODY_MIN_BYTES_PER_SECOND": "1000"}


@pytest.fixture(scope="module", params=list(MODES))
def server(request, tmp_path_factory) -> Served:
    """The server with its default deadlines (20 s), in each mode."""
    with edgeship_server(tmp_path_factory.mktemp("patient"), *MODES[request.param]) as served:
        yield served


@pytest.fixture(scope="module", params=list(MODES))
def strict_server(request, tmp_path_factory) -> Served:
    """The server with 1-s header and body deadlines, in each mode."""
    with edgeship_server(tmp_path_factory.mktemp("strict"), *MODES[request.param], **STRICT) as served:
        yield served


def open_sockets(served: Served, count: int, payload: bytes) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = served.raw_socket()
        sock.sendall(payload)
        sockets.append(sock)
    return sockets


def still_open(sock: socket.socket) -> bool:
    """The server has neither answered nor closed ``sock``."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""  # data would be an answer: not expected either
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def test_healthz_answers_while_slow_clients_hold_sockets(server: Served):
    half_headers = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    half_body = (b"POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer es_not-a-credential\r\nContent-Length: 4000\r\n\r\n{\"reports\": [")
    slow = open_sockets(server, SLOW_HEADERS, half_headers) + open_sockets(server, SLOW_BODIES, half_body)
    try:
        time.sleep(0.5)  # let every worker see its sockets
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: server.get("/healthz", timeout=5)[0], range(40)))
        assert answers == [200] * 40
        assert all(map(still_open, slow))  # the attack was still on while /healthz answered
    finally:
        for sock in slow:
            sock.close()


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has something to read (or was closed) within ``timeout`` seconds. A
    selector, not ``select.select``: after the rest of the suite this process may hold
    descriptors above 1,023, which ``select`` cannot watch."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))


def trickle(sock: socket.socket, piece: bytes, every_seconds: float, max_seconds: float = 20) -> float | None:
    """Send ``piece`` every ``every_seconds`` until the server answers or closes; how long that
    took (None: it never did within ``max_seconds``)."""
    started = time.monotonic()
    while time.monotonic() - started < max_seconds:
        if readable(sock, every_seconds):
            return time.monotonic() - started
        try:
            sock.sendall(piece)
        except OSError:
            return time.monotonic() - started
    return None


def answer_then_close(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body the server sent before closing (it must close right after)."""
    sock.settimeout(5)
    status, _, body = read_answer(sock)
    assert closed_by_server(sock, within_seconds=5)
    return status, body


def test_headers_that_trickle_in_are_cut_off_at_the_deadline(strict_server: Served):
    """A byte every 0.2 s keeps uvicorn's own keep-alive timer from ever firing; the header
    deadline (1 s here) still answers 408 and closes the connection."""
    with strict_server.raw_socket() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        took = trickle(sock, b"X", 0.2)
        assert took is not None and 0.5 < took < 10
        status, body = answer_then_close(sock)
        assert status == 408 and b"request_timeout" in body


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(strict_server: Served):
    with strict_server.raw_socket() as sock:
        assert readable(sock, 10)
        assert answer_then_close(sock)[0] == 408


def test_a_body_that_trickles_in_is_cut_off(strict_server: Served):
    """1 s of grace plus 1 s per 1,000 bytes: ten bytes every 0.2 s (50 bytes/s) falls behind."""
    with strict_server.raw_socket() as sock:
        sock.sendall(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 60000\r\n\r\n")
        took = trickle(sock, b" " * 10, 0.2)
        assert took is not None and 0.5 < took < 10
        status, body = answer_then_close(sock)
        assert status == 408 and b"request_timeout" in body


def test_headers_over_the_size_bound_are_refused(strict_server: Served):
    with strict_server.raw_socket() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        filler = b"X-Filler: " + b"a" * 990 + b"\r\n"
        took = trickle(sock, filler, 0.001, max_seconds=MAX_HEADER_BYTES / 1000 * 0.01 + 5)
        assert took is not None, "the server took every header it was sent"
        try:
            status, body = answer_then_close(sock)
            assert status == 431 and b"headers_too_large" in body
        except ConnectionResetError:
            pass  # closed with our last lines unread: refused all the same
    assert strict_server.get("/healthz")[0] == 200
