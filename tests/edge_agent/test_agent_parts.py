"""The agent's smaller parts: settings, backoff, golden check, manifest checks, identity, replay,
and the full-disk path (against the real server)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.backoff import Backoff, VariantBackoff
from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.device import describe, installed_runtimes
from edge_agent.golden import check_golden
from edge_agent.identity import Identity
from edge_agent.installer import Installer, trusted_keys
from edge_agent.model import ModelRefused, Release, expected_agreement
from edge_agent.outbox import Outbox, OutboxError
from edge_agent.store import ModelStore
from edge_agent.workload import Replay
from edgeship.contract.signing import generate_keypair
from tests.edge_agent.conftest import wait_until
from tests.edge_agent.test_store import make_entry


def test_settings_layer_file_then_environment_then_flags(tmp_path):
    key = tmp_path / "p.pub"
    key.write_text("x")
    config_file = tmp_path / "agent.toml"
    config_file.write_text(f'server = "https://a:1"\nmodel = "m"\ntrusted_keys = ["{key}"]\n'
                           'check_interval_seconds = 5\nthreads = 2\n')
    env = {"EDGESHIP_AGENT_SERVER": "https://b:2", "EDGESHIP_AGENT_THREADS": "3"}
    config = load_config(config_file, env=env, threads=4, model=None)
    assert config.server == "https://b:2"  # environment over file
    assert config.threads == 4  # flag over environment
    assert config.model == "m"  # a flag left out (None) hides nothing
    assert config.check_interval_seconds == 5.0 and config.trusted_keys == [key]
    assert config.check() is config


@pytest.mark.parametrize(("content", "message"), [
    ('server = "http://a"\nbogus = 1\n', "unknown agent setting"),
    ('threads = "many"\n', "threads"),
    ("server = [", "cannot read agent config"),
])
def test_bad_settings_are_named(tmp_path, content, message):
    path = tmp_path / "agent.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_check_refuses_settings_the_agent_cannot_run_with(tmp_path):
    with pytest.raises(ConfigError, match="http"):
        AgentConfig(server="ftp://x", model="m").check()
    with pytest.raises(ConfigError, match="trusted_keys"):
        AgentConfig(server="https://x", model="m").check()
    with pytest.raises(ConfigError, match="does not exist"):
        AgentConfig(server="https://x", model="m", trusted_keys=[tmp_path / "missing.pub"]).check()


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets():
    backoff = Backoff(1.0, 8.0, rng=lambda: 1.0)
    assert [backoff.failure() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    low = Backoff(1.0, 8.0, rng=lambda: 0.0)
    assert [low.failure() for _ in range(3)] == [0.5, 1.0, 2.0]  # never below half: no thundering herd
    backoff.success()
    assert backoff.failure() == 1.0


def test_variant_backoff_blocks_a_failed_variant_for_longer_each_time():
    backoff = VariantBackoff(10.0)
    assert not backoff.blocked("a", 0.0)
    assert backoff.failed("a", 0.0) == 10.0
    assert backoff.blocked("a", 9.9) and not backoff.blocked("a", 10.1) and not backoff.blocked("b", 1.0)
    assert backoff.failed("a", 20.0) == 40.0


def test_golden_check_passes_on_the_reference_and_refuses_shifted_answers():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(16, 10)).astype(np.float32)
    golden = {"inputs": {}, "outputs": [reference]}
    assert check_golden([reference + 1e-4], golden, True, 1.0, 0.1).passed
    shifted = np.roll(reference, 1, axis=1)
    result = check_golden([shifted], golden, True, 1.0, 0.1)
    assert not result.passed and "below the required 0.900" in result.reason
    nan = reference.copy()
    nan[0, 0] = np.nan
    assert "NaN" in check_golden([nan], golden, True, 1.0, 0.1).reason
    assert "do not match" in check_golden([reference[:, :5]], golden, True, 1.0, 0.1).reason
    # an int8 variant that agreed 14/16 at conversion may lose one more sample on-device, not two
    def off(rows: int) -> np.ndarray:
        flipped = reference.copy()
        flipped[:rows] = np.roll(reference[:rows], 1, axis=1)
        return flipped

    assert check_golden([off(3)], golden, True, 14 / 16, 1 / 16).passed
    assert not check_golden([off(4)], golden, True, 14 / 16, 1 / 16).passed


@pytest.mark.parametrize(("metrics", "expected"), [
    ({"golden": {"agreement": 0.93}}, 0.93), ({"golden": {"agreement": 1}}, 1.0),
    (None, 1.0), ({}, 1.0), ({"golden": None}, 1.0), ({"golden": {"agreement": None}}, 1.0),
    ({"golden": {"agreement": "0.5"}}, 1.0), ({"golden": {"agreement": True}}, 1.0), ({"golden": []}, 1.0),
])
def test_the_expected_golden_agreement_is_the_strictest_when_not_given_as_a_number(metrics, expected):
    assert expected_agreement({"id": "v", "metrics": metrics}) == expected


def test_release_refuses_unsigned_foreign_and_inconsistent_manifests(tmp_path, releases):
    manifest = json.loads((Path(releases["releases"]["1"]) / "manifest.json").read_text())
    keys = trusted_keys([Path(releases["keys"]["public"])])
    variant = manifest["variants"][0]
    block = {"model": manifest["model"], "version": manifest["version"], "manifest": manifest,
             "variant": {"id": variant["id"], "sha256": variant["sha256"]},
             "artifact_url": "/a", "golden_url": "/g"}
    assert Release.from_assignment(block, keys).sha256 == variant["sha256"]
    _, other_pub = generate_keypair(tmp_path / "other")
    with pytest.raises(ModelRefused, match="unknown key"):
        Release.from_assignment(block, trusted_keys([other_pub]))
    tampered = json.loads(json.dumps(manifest))
    tampered["variants"][0]["size_bytes"] += 1
    with pytest.raises(ModelRefused, match="does not verify") as refused:
        Release.from_assignment({**block, "manifest": tampered}, keys)
    assert refused.value.reason == "load_failed"
    with pytest.raises(ModelRefused, match="not the one"):
        Release.from_assignment({**block, "variant": {"id": variant["id"], "sha256": "0" * 64}}, keys)
    with pytest.raises(ModelRefused, match="another release"):
        Release.from_assignment({**block, "version": "99"}, keys)


def test_identity_is_private_and_a_corrupt_file_means_registering_again(tmp_path, caplog):
    identity = Identity(tmp_path / "identity.json")
    assert identity.device_id is None
    identity.save("dev-1", "secret")
    assert os.stat(tmp_path / "identity.json").st_mode & 0o777 == 0o600
    assert Identity(tmp_path / "identity.json").credential == "secret"
    (tmp_path / "identity.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert Identity(tmp_path / "identity.json").device_id is None
    assert "registering again" in caplog.text and (tmp_path / "identity.json.corrupt").exists()


def test_replay_cycles_the_file_and_names_missing_inputs(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, image=np.arange(10, dtype=np.float32).reshape(10, 1), labels=np.arange(10))
    replay = Replay(agent=None, path=path, rate_per_second=1.0)
    feeds, labels = replay.feeds(["image"], 1, 12)
    assert feeds["image"].tolist() == [[2.0]] and labels.tolist() == [2]
    renamed, _ = replay.feeds(["x"], 2, 0)  # one array, one input: matched by position
    assert renamed["x"].shape == (2, 1)
    with pytest.raises(ValueError, match="no array for input"):
        replay.feeds(["a", "b"], 1, 0)


def test_device_description_reports_the_runtimes_installed_here():
    runtimes = installed_runtimes()
    assert "onnxruntime" in runtimes or "litert" in runtimes
    described = describe("rpi4", ram=1 << 30)
    assert described["device_class"] == "rpi4" and described["ram_bytes"] == 1 << 30
    assert described["runtimes"] == runtimes and "coreml" not in runtimes


def test_a_full_disk_is_logged_and_nothing_is_lost_when_space_returns(agent_config, server, releases, caplog):
    agent = Agent(agent_config())
    agent.outbox.close()
    agent.outbox = Outbox(agent.config.state_dir / "full.sqlite", max_page_count=8)
    with np.load(releases["eval"]) as npz:
        images, labels = npz["image"], npz["labels"]
    try:
        agent.check_in()
        with pytest.raises(OutboxError, match="full"):  # fill the (capped) disk to the last byte
            for i in range(10_000):
                agent.outbox.add([{"id": f"f{i}", "pad": "x" * (2000 if i < 1000 else 50)}])
        with contextlib.suppress(OutboxError):
            for i in range(10_000):
                agent.outbox.add([{"id": f"g{i}"}])
        filled = len(agent.outbox)
        for i in range(5):
            agent.predict({"image": images[i][None]}, label=labels[i])
        with caplog.at_level(logging.ERROR):
            agent.close_window()
        assert "keeping 1 report(s) in memory" in caplog.text
        assert agent.predict({"image": images[:1]})[0].shape == (1, 10)  # still serving
        agent.outbox._conn.execute("PRAGMA max_page_count = 100000")  # space is back
        agent.outbox.ack([f"f{i}" for i in range(10_000)] + [f"g{i}" for i in range(10_000)])
        assert filled > 0
        wait_until(agent.flush, what="delivery")
        assert len(agent.outbox) == 0 and not agent._pending
    finally:
        agent.stop()
    assert sum(r["inferences"] for r in server.reports()) == 6  # 5 held in memory + 1 after


def test_the_shipped_config_and_unit_file_fit_the_agent(tmp_path):
    deploy = Path(__file__).resolve().parents[2] / "edge_agent" / "deploy"
    config = load_config(deploy / "agent.toml", env={"EDGESHIP_AGENT_ENROLL_TOKEN": "t"})
    assert config.server.startswith("https://") and config.enroll_token == "t"
    assert config.state_dir == Path("/var/lib/edgeship-agent")
    unit = (deploy / "edgeship-agent.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split()[1:] == ["agent", "--config", "/etc/edgeship/agent.toml"]
    assert "StateDirectory=edgeship-agent" in unit and "KillSignal=SIGTERM" in unit


def test_a_refused_variant_is_backed_off_per_release_not_per_file():
    from edge_agent.agent import _release_variant

    v3 = {"version": "3", "variant": {"sha256": "a" * 64}}
    v2 = {"version": "2", "variant": {"sha256": "a" * 64}}  # same file, another release's golden set
    backoff = VariantBackoff(60.0)
    backoff.failed(_release_variant(v3), 0.0)
    assert backoff.blocked(_release_variant(v3), 1.0)
    assert not backoff.blocked(_release_variant(v2), 1.0)


def test_the_first_window_follows_the_servers_report_interval(agent_config, server):
    agent = Agent(agent_config(report_interval_seconds=3600.0)).start()  # the server says 1 s
    try:
        wait_until(lambda: agent.current is not None, what="v1 installed")
        agent.predict({"image": np.zeros((1, 1, 8, 8), np.float32)})
        wait_until(lambda: server.reports(), timeout=10, what="a report within a few seconds")
        assert agent.report_interval_seconds == 1.0
    finally:
        agent.stop()


def test_only_a_model_that_ran_as_stable_becomes_the_fallback(tmp_path):
    store = ModelStore(tmp_path)

    def installer() -> Installer:  # a new one is a restarted agent: nothing cached
        return Installer(None, store, {}, 1, 0.1, 1 << 20, 10.0)

    def entry(name: str, cohort: str | None) -> dict:
        made = make_entry(store, name)
        return made if cohort is None else {**made, "cohort": cohort}

    def versions() -> tuple:
        return tuple(e["release"]["version"] if e else None for e in store.state())

    installer().commit(entry("s1", None))  # written before entries kept a cohort: proven
    installer().commit(candidate := entry("a", "canary"))
    assert versions() == ("a", "s1")
    installer().commit(entry("s1", "stable"))  # a rolled back, seen after a restart
    assert versions() == ("s1", "s1")
    assert not store.has_blob(candidate["blobs"]["model"])

    agent_side = installer()
    agent_side.commit(promoted := entry("b", "canary"))
    agent_side.confirm_stable(promoted["blobs"]["model"])  # its rollout was promoted
    assert store.state()[0]["cohort"] == "stable"
    installer().commit(entry("s2", "stable"))
    assert versions() == ("s2", "b")
    agent_side.confirm_stable(entry("other", None)["blobs"]["model"])  # not the current model: no change
    assert versions() == ("s2", "b")
