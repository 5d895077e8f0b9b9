"""The documented deployment behind nginx (rollout_server/deploy/edgeship-nginx.conf, docs/deploy.md):
real nginx from the system's packages terminates TLS with a certificate made here, in front of a
real ``edgeship server``, and a whole agent enrolls, is assigned, downloads and reports through
it. The server honours the ``X-Forwarded-For`` of that one proxy (``TRUSTED_PROXY_COUNT=1``).

nginx runs unprivileged and self-contained: its own prefix, configuration, pid file, logs and
temporary directories under ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from tests.edge_agent.conftest import MODEL, wait_until
from tests.edge_agent.harness import ROOT, ServerProcess, free_port
from tests.edge_agent.nettools import Pki, make_pki
from tests.skip_policy import missing

CONFIG = ROOT / "rollout_server" / "deploy" / "edgeship-nginx.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if found is None:
        missing("nginx is not installed (Debian: apt-get install nginx; `make test` installs it)")
    return found


def render_site(upstream_port: int, port: int, pki: Pki) -> str:
    """The repository's site config with this test's addresses and certificate."""
    text = CONFIG.read_text()
    for old, new in [("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};"),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
                     ("/etc/edgeship/tls/server.pem", str(pki.cert_file)),
                     ("/etc/edgeship/tls/server.key", str(pki.key_file))]:
        assert text.count(old) == 1, f"{CONFIG.name} no longer has exactly one {old!r}"
        text = text.replace(old, new)
    return text


@contextlib.contextmanager
def nginx(tmp_path: Path, upstream_port: int, pki: Pki) -> Iterator[int]:
    """nginx with the site config in front of ``127.0.0.1:upstream_port``; yields its TLS port."""
    binary = nginx_binary()
    prefix = tmp_path / "nginx"
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "temp" / name).mkdir(parents=True)
    port = free_port()
    (prefix / "edgeship.conf").write_text(render_site(upstream_port, port, pki))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers keep our user, so they can use tmp_path
    (prefix / "nginx.conf").write_text(f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {prefix}/edgeship.conf;
}}
""")
    command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, f"nginx -t refused the config: {checked.stderr}"
    process = subprocess.Popen([*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while get(port, pki, "/healthz")[0] != 200:
            assert process.poll() is None, (prefix / "error.log").read_text()
            assert time.monotonic() < deadline, f"nginx not serving: {(prefix / 'error.log').read_text()}"
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def get(port: int, pki: Pki, path: str, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """A request to nginx over TLS (trusting the test CA) from ``source``; (0, b"") if unreachable."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context,
                                             source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        connection.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def proxied(tmp_path_factory, releases, pki) -> Iterator[tuple[ServerProcess, int, Path]]:
    """A server with v1 and v2 published (v1 stable) trusting one proxy, allowing one
    registration per client a minute, behind nginx: (server, nginx's port, nginx's prefix)."""
    work = tmp_path_factory.mktemp("proxied")
    server = ServerProcess(work / "server", releases["keys"]["public"])
    server.env.update(EDGESHIP_TRUSTED_PROXY_COUNT="1", EDGESHIP_REGISTER_BURST="1",
                      EDGESHIP_REGISTER_RATE_PER_MINUTE="1")
    server.start()
    try:
        server.publish(releases["releases"]["1"])
        server.publish(releases["releases"]["2"])
        server.set_stable(MODEL, "1")
        with nginx(work, server.port, pki) as port:
            yield server, port, work / "nginx"
    finally:
        server.stop()


def test_an_agent_works_through_nginx_over_tls(tmp_path, proxied, releases, pki):
    server, port, prefix = proxied
    agent = Agent(AgentConfig(
        server=f"https://127.0.0.1:{port}", ca_file=pki.ca_file, model=MODEL, state_dir=tmp_path / "agent",
        enroll_token=server.enroll, trusted_keys=[Path(releases["keys"]["public"])],
        device_class="linux-x86_64", check_interval_seconds=0.5, report_interval_seconds=1.0,
        backoff_initial_seconds=0.2, backoff_max_seconds=1.0, threads=1)).start()
    try:
        wait_until(lambda: agent.current is not None and agent.current.version == "1",
                   what="v1 through nginx")
        with np.load(releases["eval"]) as npz:
            agent.predict({"image": npz["image"][:1]}, label=npz["labels"][:1])
        agent.close_window()
        wait_until(agent.deliver, what="reports delivered through nginx")
    finally:
        agent.stop()
    requests = (prefix / "access.log").read_text()
    for path in ("POST /v1/devices/register", "/assignment?model=", "GET /v1/artifacts/", "POST /v1/reports"):
        assert path in requests, f"{path} did not go through nginx:\n{requests}"
    assert sum(r["inferences"] for r in server.reports()) == 1


def test_nginx_refuses_large_bodies_except_for_publishing(proxied, pki):
    _, port, _ = proxied
    big = b"x" * (300 * 1024)
    assert get(port, pki, "/v1/reports", "POST", big)[0] == 413  # nginx's own limit
    status, body = get(port, pki, "/v1/releases", "POST", big, {"Content-Type": "multipart/form-data"})
    assert status == 401, body  # through to the server, which wants a publisher's token


def test_the_server_counts_clients_by_the_address_nginx_saw(proxied, pki):
    """With ``TRUSTED_PROXY_COUNT=1`` a registration limit of one per client holds per client
    behind nginx: a second client (another loopback address) is not limited by the first, and a
    client cannot pass for another by sending its own ``X-Forwarded-For``."""
    _, port, _ = proxied

    def register(source: str, forwarded: str | None = None) -> int:
        headers = {"Content-Type": "application/json"}
        if forwarded:
            headers["X-Forwarded-For"] = forwarded
        return get(port, pki, "/v1/devices/register", "POST", json.dumps({}).encode(), headers,
                   source=source)[0]

    assert register("127.0.0.2") == 400  # a bad registration, but it took this client's one
    assert register("127.0.0.2", forwarded="198.51.100.7") == 429  # its own header changes nothing
    assert register("127.0.0.3") == 400  # another client behind the same proxy is not limited
