"""The agent under device admission (issue 19), against a real server: a device waiting for an
operator keeps its identity and asks again slowly instead of registering again; accepted, it
runs; rejected, it stops like a revoked one. Told its credential is old, it rotates it and keeps
running. The enrollment token may come from a file or the environment."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.identity import Identity
from edge_agent.outbox import Outbox
from tests.edge_agent.conftest import MODEL, wait_until
from tests.edge_agent.harness import ServerProcess
from tests.edge_agent.nettools import Seen, Stub, json_reply
from tests.edge_agent.test_agent_process import AgentProcess
from tests.edge_agent.test_revocation import raw


def start_server(data_dir: Path, releases: dict[str, Any], **settings: str) -> ServerProcess:
    process = ServerProcess(data_dir, releases["keys"]["public"])
    process.env.update({f"EDGESHIP_{key}": value for key, value in settings.items()})
    process.start()
    process.publish(releases["releases"]["1"])
    process.set_stable(MODEL, "1")
    return process


@pytest.fixture
def server(tmp_path, releases) -> Iterator[ServerProcess]:
    """A server that tells pending devices to ask again after 1 s (default 60)."""
    process = start_server(tmp_path / "server", releases, PENDING_RETRY_SECONDS="1")
    try:
        yield process
    finally:
        process.stop()


def devices(server: ServerProcess) -> list[tuple[str, str, int]]:
    with sqlite3.connect(server.data_dir / "edgeship.db") as db:
        return list(db.execute("SELECT id, admission, revoked FROM devices ORDER BY created_at"))


def manual_token(server: ServerProcess) -> str:
    return server.api("POST", "/v1/tokens", {"name": f"manual-{uuid.uuid4().hex[:6]}", "role": "enroll",
                                             "admission": "manual"})["token"]


def config_for(server: ServerProcess, releases: dict[str, Any], state_dir: Path,
               **overrides: Any) -> AgentConfig:
    values: dict[str, Any] = dict(
        server=server.url, model=MODEL, state_dir=state_dir, enroll_token=server.enroll,
        trusted_keys=[Path(releases["keys"]["public"])], device_class="linux-x86_64",
        check_interval_seconds=0.3, report_interval_seconds=1.0, backoff_initial_seconds=0.2,
        backoff_max_seconds=1.0, threads=1)
    values.update(overrides)
    return AgentConfig(**values)


def test_a_pending_agent_keeps_its_identity_waits_and_runs_once_accepted(tmp_path, server, releases, caplog):
    caplog.set_level(logging.INFO, logger="edgeship.agent")
    config = config_for(server, releases, tmp_path / "agent", enroll_token=manual_token(server))
    agent = Agent(config).start()
    try:
        wait_until(lambda: agent.pending, what="the server to say the device is pending")
        device_id = agent.identity.device_id
        time.sleep(3.0)  # ten check intervals: room for any (wrong) re-registration or fast polling
        assert agent.pending and agent.current is None and not agent.revoked
        assert agent.identity.device_id == device_id
        assert Identity(config.state_dir / "identity.json").device_id == device_id
        assert devices(server) == [(device_id, "pending", 0)]  # one device: it did not register again
        assert "waiting for an operator to accept this device" in caplog.text
        server.api("POST", f"/v1/devices/{device_id}/accept")
        wait_until(lambda: agent.current is not None and agent.current.version == "1", timeout=60,
                   what="v1 installed after the acceptance")
        assert not agent.pending and f"an operator accepted device {device_id}" in caplog.text
    finally:
        agent.stop(flush_timeout_seconds=1)
    assert devices(server) == [(device_id, "accepted", 0)]


def test_a_rejected_agent_process_stops_with_exit_3_and_stays_out(tmp_path, server, releases):
    token = manual_token(server)
    agent = AgentProcess(tmp_path / "agent", server.url, server, releases, "--enroll-token", token).start()
    try:
        agent.wait_for("waiting for an operator to accept this device")
        (device_id, _, _), = devices(server)
        server.api("POST", f"/v1/devices/{device_id}/reject")
        assert agent.process.wait(timeout=60) == 3
    finally:
        agent.kill()
    log = agent.log()
    assert f"device {device_id} was rejected by an operator" in log and "Traceback" not in log
    assert "this device was rejected by an operator" in log  # the CLI's one-line error
    assert not (tmp_path / "agent" / "identity.json").exists()
    assert json.loads((tmp_path / "agent" / "revoked.json").read_text())["device_id"] == device_id
    again = AgentProcess(tmp_path / "agent", server.url, server, releases, "--enroll-token", token).start()
    try:
        assert again.process.wait(timeout=60) == 3  # the same token: stays out
    finally:
        again.kill()
    assert devices(server) == [(device_id, "rejected", 1)]


def test_an_agent_told_its_credential_is_old_rotates_it_and_keeps_running(tmp_path, releases, caplog):
    caplog.set_level(logging.INFO, logger="edgeship.agent")
    server = start_server(tmp_path / "server", releases, CREDENTIAL_MAX_AGE_SECONDS="2")
    try:
        config = config_for(server, releases, tmp_path / "agent")
        agent = Agent(config).start()
        try:
            wait_until(lambda: agent.current is not None, timeout=60, what="v1 installed")
            device_id, first = agent.identity.device_id, agent.identity.credential
            wait_until(lambda: Identity(config.state_dir / "identity.json").credential != first, timeout=30,
                       what="a rotated credential stored")
            wait_until(lambda: "rotated the credential" in caplog.text, what="the rotation logged")
            second = Identity(config.state_dir / "identity.json").credential
            path = f"/v1/devices/{device_id}/assignment?model={MODEL}"
            assert wait_until(lambda: raw(server, "GET", path, first)[0] == 401, timeout=10,
                              what="the first credential retired once the new one was used")
            # polls with the new credential go on, and get the next hint once it is 2 s old too
            wait_until(lambda: Identity(config.state_dir / "identity.json").credential not in (first, second),
                       timeout=30, what="a second rotation, asked for in an answer to the new credential")
            stored = Identity(config.state_dir / "identity.json")
            assert stored.device_id == device_id
            assert wait_until(lambda: agent.api.credential == stored.credential or
                              Identity(config.state_dir / "identity.json").credential == agent.api.credential,
                              what="the agent using what it stored")
            assert not agent.revoked and agent.current is not None
        finally:
            agent.stop(flush_timeout_seconds=1)
        assert [row[0] for row in devices(server)] == [device_id]  # the same device throughout
    finally:
        server.stop()


def test_edgeship_agent_reads_the_enrollment_token_from_a_file_or_the_environment(tmp_path, server, releases,
                                                                                  monkeypatch):
    token_file = tmp_path / "enroll.token"
    token_file.write_text(server.enroll + "\n")
    token_file.chmod(0o644)
    from_file = AgentProcess(tmp_path / "a", server.url, server, releases)
    from_file.args.remove("--enroll-token")
    from_file.args.remove(server.enroll)
    from_file.args += ["--enroll-token-file", str(token_file)]
    from_file.start()
    try:
        from_file.wait_for("registered as device")
    finally:
        from_file.kill()
    assert "can be read by other users" in from_file.log() and server.enroll not in from_file.log()

    from_env = AgentProcess(tmp_path / "b", server.url, server, releases)
    from_env.args.remove("--enroll-token")
    from_env.args.remove(server.enroll)
    monkeypatch.setenv("EDGESHIP_ENROLL_TOKEN", server.enroll)
    from_env.start()
    try:
        from_env.wait_for("registered as device")
    finally:
        from_env.kill()
    assert len(devices(server)) == 2


# -- settings and answers, without a server -------------------------------------------------------


def test_the_enrollment_token_setting_is_one_setting_given_two_ways(tmp_path):
    file = tmp_path / "agent.toml"
    token_file = tmp_path / "token"
    token_file.write_text("es_from_file\n")
    token_file.chmod(0o600)
    file.write_text('enroll_token = "es_in_toml"\n')
    env = {"EDGESHIP_ENROLL_TOKEN": "es_from_env"}
    assert load_config(env=env).enroll_token == "es_from_env"  # the fallback
    assert load_config(file, env=env).enroll_token == "es_in_toml"
    flagged = load_config(file, env=env, enroll_token_file=token_file)  # a flag replaces the file's token
    assert flagged.enroll_token is None and flagged.enroll_token_file == token_file
    key = tmp_path / "key.pub"
    key.write_text("x")
    checked = load_config(file, env=env, enroll_token_file=token_file, server="http://127.0.0.1:1", model="m",
                          trusted_keys=[key]).check()
    assert checked.enroll_token == "es_from_file"
    file.write_text(f'enroll_token = "a"\nenroll_token_file = "{token_file}"\n')
    with pytest.raises(ConfigError, match="not both"):
        load_config(file, env={})
    with pytest.raises(ConfigError, match="cannot read token file"):
        load_config(env={}, enroll_token_file=tmp_path / "missing", server="http://127.0.0.1:1", model="m",
                    trusted_keys=[key]).check()


class PendingServer:
    """A stub: registration answers as told; assignment and reports answer 403 ``device_pending``."""

    def __init__(self, register: tuple[int, dict] = (201, {})) -> None:
        self.register = register
        self.counts = {"register": 0, "assignment": 0, "reports": 0}
        self.stub = Stub(self.respond)

    def respond(self, seen: Seen):
        if seen.path == "/v1/devices/register":
            self.counts["register"] += 1
            if self.register[0] != 201:
                return json_reply(*self.register)
            return json_reply(201, {"device_id": "dev-p", "credential": "es_p", "state": "pending"})
        self.counts["reports" if seen.path == "/v1/reports" else "assignment"] += 1
        return json_reply(403, {"error": "device_pending", "detail": "waits"}, {"Retry-After": "1"})


def offline_config(tmp_path: Path, releases: dict[str, Any], url: str) -> AgentConfig:
    return AgentConfig(server=url, model=MODEL, state_dir=tmp_path / "agent", enroll_token="es_enroll",
                       trusted_keys=[Path(releases["keys"]["public"])], device_class="linux-x86_64",
                       threads=1, check_interval_seconds=0.05, report_interval_seconds=60.0,
                       backoff_initial_seconds=0.2, backoff_max_seconds=1.0)


def test_a_pending_device_polls_after_retry_after_and_keeps_its_reports(tmp_path, releases):
    fake = PendingServer()
    config = offline_config(tmp_path, releases, fake.stub.url)
    config.state_dir.mkdir(parents=True)
    with Outbox(config.state_dir / "outbox.sqlite") as outbox:
        outbox.add([{"id": f"r{i}", "model": MODEL, "inferences": 1} for i in range(3)])
    with fake.stub:
        agent = Agent(config).start()
        time.sleep(3.2)
        final = agent.stop(flush_timeout_seconds=0)
    assert fake.counts["register"] == 1 and final["device_id"] == "dev-p" and final["pending"]
    assert 2 <= fake.counts["assignment"] <= 5, fake.counts  # every 1 s (Retry-After), not every 0.05 s
    assert final["outbox"] == 3  # refused as "pending": kept, not dropped as malformed


def test_an_enrollment_token_out_of_scope_is_retried_with_backoff(tmp_path, releases, caplog):
    fake = PendingServer(register=(403, {"error": "enrollment_scope", "detail": "only rpi4"}))
    with fake.stub:
        agent = Agent(offline_config(tmp_path, releases, fake.stub.url)).start()
        time.sleep(3.0)
        agent.stop(flush_timeout_seconds=0)
    assert 2 <= fake.counts["register"] <= 10, fake.counts  # without backoff: ~60
    assert "cannot register" in caplog.text and "only rpi4" in caplog.text
