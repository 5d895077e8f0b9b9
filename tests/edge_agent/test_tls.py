"""TLS on the agent (issue 19): certificates verified (system store or ``ca_file``), an optional
pin of the server's public key, and no plain HTTP to another machine unless allowed.

Real TLS servers on 127.0.0.1 with certificates made here (``cryptography``): a stub that records
what reached it, and a TLS front for the real rollout server for the whole agent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.download import TransferError, fetch
from edge_agent.server_api import ServerApi, ServerUnavailable
from edge_agent.transport import Transport, is_loopback, parse_pin, pin_of
from tests.edge_agent.conftest import MODEL, wait_until
from tests.edge_agent.harness import ROOT
from tests.edge_agent.nettools import Front, Pki, Stub, json_reply, make_pki

CREDENTIAL = "es_device-credential-for-the-tls-tests"
ASSIGNMENT = {"model": MODEL, "version": "1"}
BLOB = os.urandom(30_000)
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA and a certificate for the same names: what a man in the middle would present."""
    return make_pki(tmp_path_factory.mktemp("rogue"), label="rogue")


def client(url: str, **transport: object) -> ServerApi:
    api = ServerApi(url, 5, transport=Transport(url, **transport))
    api.credential = CREDENTIAL
    return api


def serve_assignment(seen):
    if seen.path.startswith("/v1/artifacts/"):
        return 200, {}, BLOB
    return json_reply(200, ASSIGNMENT)


# -- verification ---------------------------------------------------------------------------------


def test_a_certificate_from_the_configured_ca_is_accepted(pki):
    with Stub(serve_assignment, context=pki.server_context()) as server:
        body, _ = client(server.url, ca_file=pki.ca_file).assignment("dev-1", MODEL, None)
    assert body == ASSIGNMENT
    assert server.seen[0].header("Authorization") == f"Bearer {CREDENTIAL}"


def test_without_the_ca_file_the_system_store_refuses_a_private_ca(pki):
    with Stub(serve_assignment, context=pki.server_context()) as server, \
            pytest.raises(ServerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        client(server.url).assignment("dev-1", MODEL, None)
    assert server.seen == []  # no request, no credential, reached the server


def test_a_certificate_from_another_ca_is_refused(pki, rogue):
    with Stub(serve_assignment, context=rogue.server_context()) as server, \
            pytest.raises(ServerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        client(server.url, ca_file=pki.ca_file).assignment("dev-1", MODEL, None)
    assert server.seen == []


def test_a_certificate_for_another_name_is_refused(tmp_path, pki):
    elsewhere = make_pki(tmp_path / "other-name", label="other", hosts=("rollout.example.com",))
    with Stub(serve_assignment, context=elsewhere.server_context()) as server, \
            pytest.raises(ServerUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        client(server.url, ca_file=elsewhere.ca_file).assignment("dev-1", MODEL, None)
    assert server.seen == []


# -- pinning --------------------------------------------------------------------------------------


def test_the_right_pin_is_accepted(pki):
    assert pin_of(pki.cert_file.read_bytes()) == pki.pin
    with Stub(serve_assignment, context=pki.server_context()) as server:
        body, _ = client(server.url, ca_file=pki.ca_file, pins=[pki.pin]).assignment("dev-1", MODEL, None)
        also, _ = client(server.url, ca_file=pki.ca_file,
                         pins=["sha256//" + pki.pin]).assignment("dev-1", MODEL, None)  # curl's spelling
    assert body == also == ASSIGNMENT


def test_a_wrong_pin_is_refused_before_the_credential_is_sent(pki, rogue):
    """The chain verifies (the CA is trusted) but the key is not the pinned one: refused right
    after the handshake, so the server never sees a request, let alone the credential."""
    with Stub(serve_assignment, context=pki.server_context()) as server, \
            pytest.raises(ServerUnavailable, match="not a pinned one"):
        client(server.url, ca_file=pki.ca_file, pins=[rogue.pin]).assignment("dev-1", MODEL, None)
    assert server.seen == []


def test_one_of_several_pins_is_enough(pki, rogue):
    with Stub(serve_assignment, context=pki.server_context()) as server:
        body, _ = client(server.url, ca_file=pki.ca_file, pins=[rogue.pin, pki.pin]).assignment(
            "dev-1", MODEL, None)
    assert body == ASSIGNMENT


def test_pin_and_ca_file_hold_for_downloads_too(tmp_path, pki, rogue):
    with Stub(serve_assignment, context=pki.server_context()) as server:
        url = f"{server.url}/v1/artifacts/{SHA}"
        with pytest.raises(TransferError, match="not a pinned one"):
            fetch(url, tmp_path / "a", SHA, len(BLOB), headers={"Authorization": f"Bearer {CREDENTIAL}"},
                  transport=Transport(server.url, ca_file=pki.ca_file, pins=[rogue.pin]))
        with pytest.raises(TransferError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch(url, tmp_path / "b", SHA, len(BLOB))
        assert server.seen == []
        fetch(url, tmp_path / "c", SHA, len(BLOB), headers={"Authorization": f"Bearer {CREDENTIAL}"},
              transport=Transport(server.url, ca_file=pki.ca_file, pins=[pki.pin]))
    assert (tmp_path / "c").read_bytes() == BLOB


def test_the_pin_belongs_to_the_server_not_to_where_it_redirects(tmp_path, pki, rogue):
    """A presigned URL on object storage has its own certificate: verified (here its CA is in
    ca_file), not held to the server's pin, and sent no credential."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca_file.read_bytes() + rogue.ca_file.read_bytes())
    with Stub(lambda seen: (200, {}, BLOB), context=rogue.server_context(), host="localhost") as storage, \
            Stub(lambda seen: (307, {"Location": f"{storage.url}/bucket/{SHA}"}, b""),
                 context=pki.server_context()) as server:
        fetch(f"{server.url}/v1/artifacts/{SHA}", tmp_path / "blob", SHA, len(BLOB),
              headers={"Authorization": f"Bearer {CREDENTIAL}"},
              transport=Transport(server.url, ca_file=bundle, pins=[pki.pin]))
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert storage.seen[0].header("Authorization") is None


def test_pins_are_base64_sha256():
    assert len(parse_pin("A" * 43 + "=")) == 32
    for bad in ("", "abc", "A" * 44, hashlib.sha256(b"x").hexdigest(), "sha256//" + "A" * 40 + "==="):
        with pytest.raises(ValueError, match="base64 sha256"):
            parse_pin(bad)


# -- plain HTTP: loopback only, unless allowed -----------------------------------------------------


def base_config(tmp_path: Path, **values: object) -> AgentConfig:
    key = tmp_path / "publisher.pub"
    key.write_text("not read by check()")
    return AgentConfig(**{"server": "https://rollout.example.com", "model": MODEL,
                          "state_dir": tmp_path / "s", "trusted_keys": [key], **values})


@pytest.mark.parametrize("server", ["http://127.0.0.1:8080", "http://127.3.4.5", "http://localhost:8080/",
                                    "http://[::1]:8080", "http://LOCALHOST", "https://rollout.example.com",
                                    "https://10.0.0.5:8443"])
def test_loopback_http_and_any_https_are_accepted(tmp_path, server):
    base_config(tmp_path, server=server).check()


@pytest.mark.parametrize("server", ["http://rollout.example.com", "http://10.0.0.5:8080", "http://[::2]:80",
                                    "http://localhost.example.com", "http://128.0.0.1"])
def test_plain_http_to_another_machine_is_refused_at_start(tmp_path, server):
    with pytest.raises(ConfigError, match=r"plain HTTP to another machine.*allow_insecure_http"):
        base_config(tmp_path, server=server).check()
    base_config(tmp_path, server=server, allow_insecure_http=True).check()


def test_the_refusal_holds_below_the_config_too(tmp_path):
    """A Transport refuses plain HTTP off this machine before connecting (TEST-NET address)."""
    api = ServerApi("http://192.0.2.10:8080", 5)
    api.credential = CREDENTIAL
    with pytest.raises(ServerUnavailable, match="plain HTTP to another machine"):
        api.assignment("dev-1", MODEL, None)
    with pytest.raises(TransferError, match="plain HTTP to another machine"):
        fetch(f"http://192.0.2.10:8080/v1/artifacts/{SHA}", tmp_path / "x", SHA, 10)


def test_loopback_detection():
    assert all(map(is_loopback, ["127.0.0.1", "127.255.0.9", "::1", "[::1]", "localhost", "localhost.",
                                 "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["", None, "10.0.0.1", "0.0.0.0", "::", "example.com", "localhost.evil",
                                     "127.0.0.1.nip.io"]))


def test_tls_settings_are_checked_at_start(tmp_path, pki):
    base_config(tmp_path, ca_file=pki.ca_file, server_pin_sha256=[pki.pin]).check()
    with pytest.raises(ConfigError, match=r"ca_file .* does not exist"):
        base_config(tmp_path, ca_file=tmp_path / "missing.pem").check()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="no usable PEM certificate"):
        base_config(tmp_path, ca_file=junk).check()
    with pytest.raises(ConfigError, match="server_pin_sha256"):
        base_config(tmp_path, server_pin_sha256=["deadbeef"]).check()
    with pytest.raises(ConfigError, match="need an https:// server"):
        base_config(tmp_path, server="http://127.0.0.1:8080", server_pin_sha256=[pki.pin]).check()


def test_tls_settings_come_from_file_environment_and_flags(tmp_path, pki):
    path = tmp_path / "agent.toml"
    path.write_text(f'server = "https://rollout.example.com"\nca_file = "{pki.ca_file}"\n'
                    f'server_pin_sha256 = ["{pki.pin}"]\nallow_insecure_http = true\n')
    config = load_config(path, env={})
    assert (config.ca_file, config.server_pin_sha256, config.allow_insecure_http) == (
        pki.ca_file, [pki.pin], True)
    config = load_config(None, env={"EDGESHIP_AGENT_SERVER_PIN_SHA256": f"{pki.pin}, sha256//{pki.pin}",
                                    "EDGESHIP_AGENT_ALLOW_INSECURE_HTTP": "false"})
    assert config.server_pin_sha256 == [pki.pin, f"sha256//{pki.pin}"] and config.allow_insecure_http is False
    with pytest.raises(ConfigError, match="allow_insecure_http"):
        load_config(None, env={"EDGESHIP_AGENT_ALLOW_INSECURE_HTTP": "maybe"})


def test_the_cli_refuses_plain_http_to_another_machine_with_one_line(tmp_path):
    key = tmp_path / "publisher.pub"
    key.write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "edgeship.cli", "agent", "--server", "http://rollout.example.com",
         "--model", MODEL, "--trusted-key", str(key), "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "plain HTTP to another machine" in errors[0], done.stderr
    assert "allow_insecure_http" in errors[0] and "Traceback" not in done.stderr


# -- the whole agent over TLS, real rollout server behind a TLS front ------------------------------


def test_the_agent_runs_over_tls_with_ca_file_and_pin(tmp_path, server, agent_config, releases, pki, rogue,
                                                      caplog):
    caplog.set_level(logging.WARNING, logger="edgeship.agent")
    with Front(server.url, context=pki.server_context()) as front:
        for name, settings, reason in [
            ("no-ca", {}, "CERTIFICATE_VERIFY_FAILED"),  # the system store does not know the test CA
            ("wrong-pin", {"ca_file": pki.ca_file, "server_pin_sha256": [rogue.pin]}, "not a pinned one"),
        ]:
            caplog.clear()
            refused = Agent(agent_config(server=front.url, state_dir=tmp_path / name, **settings)).start()
            try:
                wait_until(lambda reason=reason: caplog.text.count(reason) >= 2, what=f"refused: {reason}")
            finally:
                refused.stop(flush_timeout_seconds=0)
            assert refused.identity.device_id is None
            assert front.seen == []  # nothing reached the server: no token, no request

        config = agent_config(server=front.url, ca_file=pki.ca_file, server_pin_sha256=[pki.pin])
        agent = Agent(config).start()
        try:
            wait_until(lambda: agent.current is not None and agent.current.version == "1", what="v1 over TLS")
            with np.load(releases["eval"]) as npz:
                agent.predict({"image": npz["image"][:1]}, label=npz["labels"][:1])
            agent.close_window()
            wait_until(agent.deliver, what="reports delivered over TLS")
        finally:
            agent.stop()
    paths = [seen.path.split("?")[0] for seen in front.seen]
    assert "/v1/devices/register" in paths and "/v1/reports" in paths
    assert any(p.startswith("/v1/artifacts/") for p in paths)
    assert sum(r["inferences"] for r in server.reports()) == 1
