"""A revoked device stays out (issue 19): the server names a revoked credential
(401 ``device_revoked``), the agent stops, keeps no identity and does not enroll itself again
until an operator gives it a new enrollment token. Other 401s: register again, with backoff.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.identity import Identity, Revocation
from edge_agent.outbox import Outbox
from tests.edge_agent.conftest import MODEL, wait_until
from tests.edge_agent.harness import ServerProcess
from tests.edge_agent.nettools import Seen, Stub, json_reply
from tests.edge_agent.test_agent_process import AgentProcess


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def device_rows(server: ServerProcess) -> list[tuple[str, int]]:
    with sqlite3.connect(server.data_dir / "edgeship.db") as db:
        return list(db.execute("SELECT id, revoked FROM devices ORDER BY created_at"))


def revoke(server: ServerProcess, device_id: str) -> None:
    server.api("POST", f"/v1/devices/{device_id}/revoke")


def new_enroll_token(server: ServerProcess) -> str:
    answer = server.api("POST", "/v1/tokens", {"name": f"re-enroll-{uuid.uuid4().hex[:8]}", "role": "enroll"})
    return answer["token"]


def raw(server: ServerProcess, method: str, path: str, credential: str | None, payload: Any = None
        ) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read() or b"{}")


# -- the server's side of the contract ------------------------------------------------------------


def test_the_server_answers_a_revoked_credential_with_a_distinct_reason(server):
    status, body = raw(server, "POST", "/v1/devices/register", None, {
        "enrollment_token": server.enroll, "device_class": "linux-x86_64", "arch": "x86_64", "os": "Linux",
        "ram_bytes": 0, "runtimes": {"onnxruntime": "1.20.0"}})
    assert status == 201
    device, credential = body["device_id"], body["credential"]
    assert raw(server, "GET", f"/v1/devices/{device}/assignment?model={MODEL}", credential)[0] == 200
    revoke(server, device)

    def refused() -> dict | None:
        status, answer = raw(server, "GET", f"/v1/devices/{device}/assignment?model={MODEL}", credential)
        return answer if status == 401 else None

    answer = wait_until(refused, timeout=10, what="the revocation to reach the assignment route")
    assert answer["error"] == "device_revoked" and answer["detail"]
    assert raw(server, "POST", "/v1/reports", credential, {"reports": []}) == (401, answer)
    unknown = raw(server, "GET", f"/v1/devices/{device}/assignment?model={MODEL}", "es_" + "x" * 43)
    assert unknown[0] == 401 and unknown[1]["error"] == "unauthorized"


# -- the agent, as a library, against the real server ---------------------------------------------


def test_a_revoked_agent_stops_keeps_no_identity_and_does_not_enroll_again(tmp_path, server, agent_config,
                                                                          caplog):
    caplog.set_level(logging.INFO, logger="edgeship.agent")
    config = agent_config()
    agent = Agent(config).start()
    try:
        wait_until(lambda: agent.current is not None and agent.current.version == "1", what="v1 installed")
        device = agent.identity.device_id
        revoke(server, device)
        assert agent.wait(timeout=30), "the agent did not notice its revocation"
        agent._thread.join(timeout=10)
        assert not agent._thread.is_alive()  # the control loop is over
        time.sleep(3 * config.check_interval_seconds)  # room for any (wrong) re-registration
        assert agent.current is not None  # a caller's predict still has the model it ran
    finally:
        final = agent.stop(flush_timeout_seconds=1)
    assert final["revoked"] is True and final["device_id"] is None
    assert not (config.state_dir / "identity.json").exists()
    marker = json.loads((config.state_dir / "revoked.json").read_text())
    assert marker["device_id"] == device and server.enroll not in json.dumps(marker)
    assert "revoked by an operator" in caplog.text
    assert device_rows(server) == [(device, 1)]  # no second device

    again = Agent(config).start()  # a restart, same token: stays out
    try:
        assert again.revoked and again._thread is None
        assert again.current is not None and again.current.version == "1"  # restored, not fetched
    finally:
        again.stop(flush_timeout_seconds=1)
    assert device_rows(server) == [(device, 1)]

    token = new_enroll_token(server)
    back = Agent(agent_config(enroll_token=token)).start()
    try:
        wait_until(lambda: back.identity.device_id is not None, what="registered with the new token")
        wait_until(lambda: back._assignment is not None, what="an assignment for the new device")
    finally:
        back.stop()
    assert not back.revoked and back.identity.device_id != device
    assert not (config.state_dir / "revoked.json").exists()
    assert device_rows(server) == [(device, 1), (back.identity.device_id, 0)]


def test_edgeship_agent_exits_3_when_revoked_and_stays_out_until_a_new_token(tmp_path, server, releases,
                                                                             agents):
    first = AgentProcess(tmp_path / "agent", server.url, server, releases)
    agents.append(first.start())
    first.wait_for(f"now running {MODEL} v1")
    (device,) = [row[0] for row in device_rows(server)]
    revoke(server, device)
    assert first.process.wait(timeout=60) == 3
    log = first.log()
    assert f"device {device} was revoked by an operator" in log and "Traceback" not in log
    assert "this device was revoked by an operator" in log  # the CLI's one-line error

    mark = len(first.log())
    second = AgentProcess(first.state_dir, server.url, server, releases)
    agents.append(second.start())
    assert second.process.wait(timeout=60) == 3
    assert "not enrolling again with the same enrollment token" in second.log()[mark:]
    assert len(device_rows(server)) == 1

    mark = len(second.log())
    token = new_enroll_token(server)
    third = AgentProcess(first.state_dir, server.url, server, releases, "--enroll-token", token)
    agents.append(third.start())
    third.wait_for("registered as device", after=mark)
    third.wait_for(f"{MODEL} v1", after=mark)
    assert third.process.poll() is None
    assert len(device_rows(server)) == 2


# -- other 401s: register again, but with backoff --------------------------------------------------


class FakeServer:
    """A stub rollout server: registration, assignment and reports answer as told; counts them."""

    def __init__(self, register: int = 201, assignment: tuple[int, dict] = (404, {"error": "not_found"}),
                 reports: tuple[int, dict] = (200, {})) -> None:
        self.register, self.assignment, self.reports = register, assignment, reports
        self.registrations = 0
        self.lock = threading.Lock()
        self.stub = Stub(self.respond)

    def respond(self, seen: Seen):
        if seen.path == "/v1/devices/register":
            with self.lock:
                self.registrations += 1
            if self.register != 201:
                return json_reply(self.register, {"error": "unauthorized", "detail": "unknown token"})
            return json_reply(201, {"device_id": str(uuid.uuid4()), "credential": "es_" + uuid.uuid4().hex})
        if seen.path == "/v1/reports":
            return json_reply(*self.reports)
        return json_reply(*self.assignment)


def fast(agent_config, url: str, **overrides: Any):
    return agent_config(server=url, check_interval_seconds=0.05, report_interval_seconds=60.0,
                        backoff_initial_seconds=0.2, backoff_max_seconds=1.0, **overrides)


@pytest.fixture
def offline_config(tmp_path, releases):
    """Agent settings without a real server (the stub's URL goes in ``server``)."""

    def make(**overrides: Any) -> AgentConfig:
        values = dict(model=MODEL, state_dir=tmp_path / "agent", enroll_token="es_enroll",
                      trusted_keys=[Path(releases["keys"]["public"])], device_class="linux-x86_64", threads=1)
        values.update(overrides)
        return AgentConfig(**values)

    return make


def run_for(agent: Agent, seconds: float) -> None:
    agent.start()
    try:
        time.sleep(seconds)
    finally:
        agent.stop(flush_timeout_seconds=0)


def test_an_unknown_credential_registers_again_with_backoff(offline_config):
    """A server that lost its database answers 401 ``unauthorized``: the agent registers again
    (today's behaviour), but backs off instead of re-registering at every check (0.05 s here)."""
    fake = FakeServer(assignment=(401, {"error": "unauthorized", "detail": "unknown device credential"}))
    with fake.stub:
        agent = Agent(fast(offline_config, fake.stub.url))
        run_for(agent, 3.0)
    assert not agent.revoked
    assert 2 <= fake.registrations <= 10, fake.registrations  # without backoff: ~30


def test_a_refused_enrollment_token_is_retried_with_backoff(offline_config):
    fake = FakeServer(register=401)
    with fake.stub:
        agent = Agent(fast(offline_config, fake.stub.url))
        run_for(agent, 3.0)
    assert not agent.revoked and agent.identity.device_id is None
    assert 2 <= fake.registrations <= 10, fake.registrations  # without backoff: ~60


def test_a_revocation_seen_on_reports_stops_the_agent_and_keeps_the_reports(offline_config):
    fake = FakeServer(reports=(401, {"error": "device_revoked", "detail": "revoked"}))
    config = fast(offline_config, fake.stub.url)
    config.state_dir.mkdir(parents=True)
    Identity(config.state_dir / "identity.json").save("dev-1", "es_credential")
    with Outbox(config.state_dir / "outbox.sqlite") as outbox:
        outbox.add([{"id": f"r{i}", "model": MODEL, "inferences": 1} for i in range(3)])
    with fake.stub:
        agent = Agent(config).start()
        try:
            assert agent.wait(timeout=20)
        finally:
            final = agent.stop(flush_timeout_seconds=1)
    assert final["revoked"] and final["outbox"] == 3  # kept, not dropped as "malformed"
    assert fake.registrations == 0
    assert Revocation(config.state_dir / "revoked.json").device_id() == "dev-1"


# -- the marker ----------------------------------------------------------------------------------


def test_the_revocation_marker_bars_the_same_token_or_none_and_lets_a_new_one_through(tmp_path):
    marker = Revocation(tmp_path / "revoked.json")
    assert not marker.blocks("es_old")
    marker.record("dev-1", "es_old", "revoked")
    assert (tmp_path / "revoked.json").stat().st_mode & 0o777 == 0o600
    assert "es_old" not in (tmp_path / "revoked.json").read_text()
    assert marker.blocks("es_old") and marker.blocks(None) and marker.blocks("")
    assert not marker.blocks("es_new")
    marker.record("dev-2", "es_other", "again")  # the first revocation stays recorded
    assert marker.device_id() == "dev-1" and marker.blocks("es_old")
    (tmp_path / "revoked.json").write_text("{not json")
    assert marker.blocks("es_new")  # unreadable: bars everything until an operator removes it
    marker.clear()
    assert not marker.blocks("es_old")
