"""Device attributes from the agent's settings (issue 21, targeting): read from TOML or the
environment as strings, sent at registration and again at every start, and a targeted rollout of
the real server reaches only the agent whose attributes it admits."""

from __future__ import annotations

import time

import pytest

from edge_agent.agent import Agent
from edge_agent.config import ConfigError, load_config
from edge_agent.device import describe
from tests.edge_agent.conftest import MODEL


def test_attributes_come_from_a_toml_table_or_the_environment(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('attributes = { app_version = "4.10", region = "eu" }\n')
    assert load_config(path, env={}).attributes == {"app_version": "4.10", "region": "eu"}
    env = {"EDGESHIP_AGENT_ATTRIBUTES": "app_version=4.2, tier = beta"}
    assert load_config(path, env=env).attributes == {"app_version": "4.2", "tier": "beta"}
    assert load_config(None, env={}).attributes == {}


@pytest.mark.parametrize("content", ["attributes = { app_version = 4.10 }\n",  # TOML reads 4.1
                                     'attributes = "app_version"\n', "attributes = [1]\n"])
def test_attributes_that_are_not_strings_are_refused(tmp_path, content):
    path = tmp_path / "agent.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match="attributes"):
        load_config(path, env={})


def test_the_registration_carries_attributes_only_when_there_are_some():
    assert "attributes" not in describe("rpi4", ram=0, runtimes={})
    assert describe("rpi4", ram=0, runtimes={}, attributes={"region": "eu"})["attributes"] == {"region": "eu"}


def test_a_targeted_rollout_reaches_only_the_agent_it_admits(agent_config, server, tmp_path):
    admitted = Agent(agent_config(state_dir=tmp_path / "new", attributes={"app_version": "4.2.1"}))
    left_out = Agent(agent_config(state_dir=tmp_path / "old", attributes={"app_version": "4.1"}))
    # every device but 1 in 10,000 is a canary at 99.99%, if the target admits it
    server.cli("rollout", "start", MODEL, "2", "--stages", "99.99,100", "--min-duration", "60",
               "--target", "app_version>=4.2")
    try:
        for agent in (admitted, left_out):  # driven by hand: one check-in each
            agent.check_in()
        assert (admitted.current.version, admitted.status()["cohort"]) == ("2", "canary")
        assert (left_out.current.version, left_out.status()["cohort"]) == ("1", "stable")
    finally:
        admitted.stop()
        left_out.stop()


def test_a_restarted_agent_tells_the_server_its_new_attributes(agent_config, server, tmp_path):
    """The app was upgraded: the next start sends the new ``app_version`` (protocol §3.8) and the
    device moves into the target it now meets, without registering again."""
    state = tmp_path / "device"
    old = Agent(agent_config(state_dir=state, attributes={"app_version": "4.1"}))
    server.cli("rollout", "start", MODEL, "2", "--stages", "99.99,100", "--min-duration", "60",
               "--target", "app_version>=4.2")
    try:
        old.check_in()
        assert (old.current.version, old.status()["cohort"]) == ("1", "stable")
        device_id = old.identity.device_id
    finally:
        old.stop()
    upgraded = Agent(agent_config(state_dir=state, attributes={"app_version": "4.2.1"}))
    try:
        for _ in range(20):  # sends the attributes; an assignment follows them once the server's
            upgraded.check_in()  # device cache (ASSIGNMENT_CACHE_SECONDS, 1 s) has them
            if upgraded.status()["cohort"] == "canary":
                break
            time.sleep(0.25)
        assert upgraded.identity.device_id == device_id  # the same device, not a new registration
        assert (upgraded.current.version, upgraded.status()["cohort"]) == ("2", "canary")
    finally:
        upgraded.stop()
