"""``edgeship server --workers K``: the real gunicorn command over real HTTP."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("gunicorn")

from rollout_server.serve import KEEPALIVE_REQUESTS
from tests.processes import stop_processes
from tests.rollout_server.postgres import free_port


@pytest.fixture()
def gunicorn_server(tmp_path):
    """``edgeship server --workers 2`` on SQLite in ``tmp_path``, ready; its port."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "EDGESHIP_CONTROLLER_INTERVAL_SECONDS": "3600"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgeship.cli", "server", "--port", str(port), "--workers", "2",
             "--data-dir", str(tmp_path / "server")], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                connection.close()
            assert time.monotonic() < deadline, f"server did not become ready: {log.read_text()}"
            time.sleep(0.2)
        yield port
    finally:
        stop_processes(process)


def test_a_keepalive_connection_is_closed_after_its_hundredth_request(gunicorn_server):
    """Long-lived clients must not stay on one worker for ever: the server answers the
    ``KEEPALIVE_REQUESTS``-th request of a connection with ``Connection: close`` and closes it,
    and keeps every earlier one open."""
    connection = http.client.HTTPConnection("127.0.0.1", gunicorn_server, timeout=10)
    sockets, closing = set(), []
    try:
        for number in range(1, KEEPALIVE_REQUESTS + 1):
            if number == KEEPALIVE_REQUESTS:
                last = connection.sock.dup()  # still ours after http.client drops its socket
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            closing.append((response.getheader("Connection") or "").lower() == "close")
            if connection.sock is not None:
                sockets.add(connection.sock)
        assert closing == [False] * (KEEPALIVE_REQUESTS - 1) + [True]
        assert len(sockets) == 1  # the first KEEPALIVE_REQUESTS - 1 requests shared one connection
        last.settimeout(5)
        assert last.recv(1) == b""  # the server closed its end
        last.close()
        connection.request("GET", "/healthz")  # a client simply connects again
        assert connection.getresponse().status == 200
    finally:
        connection.close()
