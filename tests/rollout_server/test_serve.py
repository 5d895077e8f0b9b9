"""``edgeship server``, the real command over real HTTP and HTTPS, in both modes (one process;
``--workers 2``): TLS with certificates made here, the refusal of unusable TLS settings, and the
keep-alive bound."""

from __future__ import annotations

import http.client
import subprocess
import sys

import pytest

pytest.importorskip("uvicorn")

from rollout_server.serve import KEEPALIVE_REQUESTS
from tests.edge_agent.nettools import Pki, make_pki
from tests.rollout_server.served import ROOT, Served, edgeship_server

MODES = {"one worker": (), "two workers": ("--workers", "2")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=list(MODES))
def tls_server(request, tmp_path_factory, pki):
    """``edgeship server --tls-cert --tls-key`` in each mode."""
    with edgeship_server(tmp_path_factory.mktemp("tls"), *MODES[request.param], pki=pki) as served:
        yield served


def test_the_server_answers_over_tls_and_says_so(tls_server: Served):
    status, _, body = tls_server.get("/healthz")
    assert (status, body) == (200, b'{"status":"ok"}\n')
    assert f"edgeship server on https://127.0.0.1:{tls_server.port}" in tls_server.log_text()


def test_plain_http_to_the_tls_port_gets_no_answer(tls_server: Served):
    connection = http.client.HTTPConnection("127.0.0.1", tls_server.port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            connection.request("GET", "/healthz")
            connection.getresponse().read()
    finally:
        connection.close()
    assert tls_server.get("/healthz")[0] == 200  # and the server is none the worse


def test_a_client_that_does_not_trust_the_ca_is_refused_by_its_own_check(tls_server: Served):
    import ssl

    connection = http.client.HTTPSConnection("127.0.0.1", tls_server.port, timeout=10,
                                             context=ssl.create_default_context())
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            connection.request("GET", "/healthz")
    finally:
        connection.close()


def run_server_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeship.cli", "server", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_tls_settings_that_cannot_work_refuse_to_start(tmp_path, pki):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    other = make_pki(tmp_path / "other", label="other")
    for args, reason in [
        (["--tls-cert", str(pki.cert_file)], "--tls-cert and --tls-key go together"),
        (["--tls-key", str(pki.key_file)], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pki.key_file)], "No such file"),
        (["--tls-cert", str(pki.cert_file), "--tls-key", str(junk)], "cannot use --tls-cert"),
        (["--tls-cert", str(pki.cert_file), "--tls-key", str(other.key_file)], "cannot use --tls-cert"),
    ]:
        done = run_server_command("--data-dir", str(tmp_path / "data"), "--port", "1", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert reason in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("edgeship server: error:")
    assert not (tmp_path / "data").exists()  # refused before anything was created


@pytest.mark.parametrize("mode", list(MODES))
def test_a_keepalive_connection_is_closed_after_its_hundredth_request(tmp_path, mode):
    """Long-lived clients must not stay on one worker for ever: the server answers the
    ``KEEPALIVE_REQUESTS``-th request of a connection with ``Connection: close`` and closes it,
    and keeps every earlier one open."""
    with edgeship_server(tmp_path, *MODES[mode]) as served:
        connection = served.connection()
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
