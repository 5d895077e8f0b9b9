"""The agent against a real rollout server in a subprocess, real HTTP, real converted models."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import Agent
from edgeship.contract.sketch import LatencySketch
from tests.edge_agent.conftest import MODEL, wait_until
from tests.edge_agent.harness import ServerProcess


def eval_batches(releases: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(releases["eval"]) as npz:
        return npz["image"], npz["labels"]


def feed(agent: Agent, images: np.ndarray, labels: np.ndarray, count: int) -> None:
    for i in range(count):
        agent.predict({"image": images[i % len(images)][None]}, label=labels[i % len(labels)])


def running(agent: Agent, version: str) -> bool:
    model = agent.current
    return model is not None and model.version == version


def stored_reports(server: ServerProcess) -> list[dict[str, Any]]:
    return server.reports()


def record_check_ins(agent: Agent) -> list[tuple[float, str | None]]:
    """Wrap ``agent.check_in``: each finished check-in appends (when it started on
    ``time.monotonic()``, the version running after it). Tests wait on these, never on a sleep."""
    done: list[tuple[float, str | None]] = []
    check_in = agent.check_in

    def recorded() -> None:
        started = time.monotonic()
        check_in()
        done.append((started, agent.current.version if agent.current else None))

    agent.check_in = recorded
    return done


def test_agent_installs_the_stable_release_infers_and_reports(agent_config, server, releases):
    agent = Agent(agent_config()).start()
    try:
        wait_until(lambda: running(agent, "1"), what="v1 installed")
        images, labels = eval_batches(releases)
        feed(agent, images, labels, 60)
        outputs = agent.predict(images[:1])
        assert outputs[0].shape == (1, 10)
        wait_until(lambda: sum(r["inferences"] for r in stored_reports(server)) >= 61, what="reports stored")
    finally:
        agent.stop()
    rows = stored_reports(server)
    assert {r["variant_id"] for r in rows} == {agent.current.variant_id}
    assert {r["cohort"] for r in rows} == {"stable"}
    assert sum(r["inferences"] for r in rows) == 61
    assert sum(r["labelled"] for r in rows) == 60
    accuracy = sum(r["correct"] for r in rows) / 60
    assert accuracy > 0.8  # the digits CNN is ~0.95 accurate: real labels reached the server
    # schema 2: latencies in a sketch, the v1 columns empty; the model's load time on each report
    assert sum(LatencySketch.from_wire(json.loads(r["latency_sketch"])).total for r in rows) == 61
    assert all(sum(r[f"lat_{i}"] for i in range(15)) == 0 for r in rows)
    assert all(r["peak_rss_bytes"] > 0 for r in rows)
    assert all(0 < r["load_seconds"] < 60 for r in rows)
    assert len({r["report_id"] for r in rows}) == len(rows)


def test_tampered_artifact_is_refused_and_the_agent_stays_on_its_model(agent_config, server, releases):
    agent = Agent(agent_config()).start()
    try:
        wait_until(lambda: running(agent, "1"), what="v1 installed")
        v1_variant = agent.current.variant_id
        v2 = json.loads((Path(releases["releases"]["2"]) / "manifest.json").read_text())
        for variant in v2["variants"]:  # flip one byte of every v2 file in the server's store
            path = server.data_dir / "artifacts" / variant["sha256"][:2] / variant["sha256"]
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        server.set_stable(MODEL, "2")
        wait_until(lambda: any(r["err_load_failed"] for r in stored_reports(server)),
                   what="load_failed report")
        images, labels = eval_batches(releases)
        feed(agent, images, labels, 5)  # still answering, on v1
        assert agent.current.version == "1" and agent.current.variant_id == v1_variant
    finally:
        agent.stop()
    failed = [r for r in stored_reports(server) if r["err_load_failed"]]
    assert {r["release_id"] for r in failed} != set()
    assert all(r["inferences"] == 0 for r in failed)
    assert not list((agent.config.state_dir / "models" / "blobs").glob("*.part"))


def test_golden_mismatch_is_refused_and_reported(agent_config, server, releases):
    server.publish(releases["releases"]["3"])
    agent = Agent(agent_config())
    check_ins = record_check_ins(agent)
    agent.start()
    try:
        wait_until(lambda: running(agent, "1"), what="v1 installed")
        server.set_stable(MODEL, "3")
        wait_until(lambda: any(r["err_golden_mismatch"] for r in stored_reports(server)),
                   what="golden_mismatch report")
        assert agent.current.version == "1"
        seen = len(check_ins)  # three more check-ins: the refused variants are not retried (backoff)
        wait_until(lambda: len(check_ins) >= seen + 3, what="three more check-ins")
        assert agent.current.version == "1"
    finally:
        agent.stop()
    # each variant of v3 was tried once (the next-best after each refusal) and refused once
    v3 = json.loads((Path(releases["releases"]["3"]) / "manifest.json").read_text())
    assert sum(r["err_golden_mismatch"] for r in stored_reports(server)) == len(v3["variants"])
    assert {r["variant_id"] for r in stored_reports(server) if r["err_golden_mismatch"]} == \
        {v["id"] for v in v3["variants"]}


def test_offline_then_online_delivers_every_report_exactly_once(agent_config, server, releases):
    agent = Agent(agent_config()).start()
    produced: list[str] = []
    close = agent.windows.close

    def recording_close(now=None):
        reports = close(now)
        produced.extend(r["id"] for r in reports)
        return reports

    agent.windows.close = recording_close
    images, labels = eval_batches(releases)
    try:
        wait_until(lambda: running(agent, "1"), what="v1 installed")
        feed(agent, images, labels, 10)
        wait_until(lambda: len(stored_reports(server)) >= 1, what="first report delivered")
        server.stop()
        offline_started = len(produced)
        fed = [10]

        def offline_windows() -> bool:  # the server is away: inference goes on, windows pile up
            feed(agent, images, labels, 5)
            fed[0] += 5
            return len(produced) - offline_started >= 3 and len(agent.outbox) >= 3

        wait_until(offline_windows, timeout=60, what="three windows kept in the outbox while offline")
        server.start()
        wait_until(lambda: len(agent.outbox) == 0, timeout=30, what="outbox drained")
    finally:
        agent.stop()
    rows = stored_reports(server)
    ids = [r["report_id"] for r in rows]
    assert sorted(ids) == sorted(produced)  # every window once, none lost, none twice
    assert sum(r["inferences"] for r in rows) == fed[0]


def test_a_lost_acknowledgement_does_not_duplicate_reports(agent_config, server, releases):
    agent = Agent(agent_config())  # driven by hand: no loop thread racing the test
    try:
        agent.check_in()
        assert running(agent, "1")
        images, labels = eval_batches(releases)
        feed(agent, images, labels, 7)
        agent.close_window()
        pending = agent.outbox.take(10)
        assert agent.api.post_reports(pending) == {r["id"] for r in pending}  # stored, answer "lost"
        assert agent.flush()  # resent: the server says duplicate, the outbox lets go
        assert len(agent.outbox) == 0
    finally:
        agent.stop()
    assert sum(r["inferences"] for r in stored_reports(server)) == 7
    assert len(stored_reports(server)) == len(pending)


def start_canary_of_v2(agent: Agent, server: ServerProcess) -> dict[str, Any]:
    """A rollout of v2 whose first stage takes every device but a few in 10,000."""
    wait_until(lambda: running(agent, "1"), what="v1 installed")
    rollout = server.api("POST", "/v1/rollouts", {
        "model": MODEL, "candidate_version": "2", "stages": [{"percent": 99.99}, {"percent": 100}]})
    wait_until(lambda: running(agent, "2"), what="canary v2 installed")
    assert agent.status()["cohort"] == "canary"
    return rollout


def stored_versions(agent: Agent) -> tuple[str | None, str | None]:
    """The versions of the store's ``(current, last_good)`` entries."""
    return tuple(entry["release"]["version"] if entry else None for entry in agent.store.state())


def test_rollback_takes_effect_at_the_next_check_in(agent_config, server, releases):
    agent = Agent(agent_config(check_interval_seconds=0.5))
    check_ins = record_check_ins(agent)
    agent.start()
    try:
        rollout = start_canary_of_v2(agent, server)
        v2_sha = agent.current.release.sha256
        assert stored_versions(agent) == ("2", "1")
        server.api("POST", f"/v1/rollouts/{rollout['id']}/abort", {"reason": "test"})
        aborted = time.monotonic()  # orders events only: no limit on how long anything takes
        after = lambda: [version for started, version in check_ins if started > aborted]  # noqa: E731
        wait_until(after, what="a check-in after the abort")
        # the first check-in that asked after the abort (one server process: no stale cache) runs v1
        assert after()[0] == "1"
        assert running(agent, "1") and agent.status()["cohort"] == "stable"
        # the rolled-back candidate is not kept as the fallback, and its files are gone
        assert stored_versions(agent) == ("1", "1")
        assert not agent.store.has_blob(v2_sha)
    finally:
        agent.stop()


def test_a_promoted_candidate_becomes_the_fallback(agent_config, server, releases):
    agent = Agent(agent_config(check_interval_seconds=0.5)).start()
    try:
        rollout = start_canary_of_v2(agent, server)
        assert agent.store.state()[0]["cohort"] == "canary"
        server.api("POST", f"/v1/rollouts/{rollout['id']}/promote", {"reason": "test"})
        wait_until(lambda: agent.status()["cohort"] == "stable", timeout=10, what="v2 runs as stable")
        wait_until(lambda: agent.store.state()[0]["cohort"] == "stable", timeout=5, what="store says stable")
        server.set_stable(MODEL, "1")  # the operator goes back by hand: v2 has proven itself
        wait_until(lambda: running(agent, "1"), timeout=10, what="back on v1")
        assert stored_versions(agent) == ("1", "2")
    finally:
        agent.stop()


def test_restart_falls_back_to_the_last_good_model_when_the_current_is_corrupt(agent_config, server,
                                                                              releases):
    config = agent_config()
    agent = Agent(config).start()
    try:
        wait_until(lambda: running(agent, "1"), what="v1 installed")
        server.set_stable(MODEL, "2")
        wait_until(lambda: running(agent, "2"), what="v2 installed")
        v2_sha = agent.current.release.sha256
    finally:
        agent.stop()
    server.stop()  # offline restart: only the disk can help
    blob = config.state_dir / "models" / "blobs" / v2_sha
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    restarted = Agent(config).start()
    try:
        assert restarted.current is not None and restarted.current.version == "1"
        images, _ = eval_batches(releases)
        assert restarted.predict(images[:1])[0].shape == (1, 10)
        server.start()  # back online: v2 is downloaded again and verified
        wait_until(lambda: running(restarted, "2"), what="v2 re-downloaded")
    finally:
        restarted.stop()


def test_server_down_at_start_keeps_serving_the_stored_model(agent_config, server, releases):
    config = agent_config()
    agent = Agent(config).start()
    wait_until(lambda: running(agent, "1"), what="v1 installed")
    agent.stop()
    server.stop()
    again = Agent(config).start()
    try:
        images, labels = eval_batches(releases)
        feed(again, images, labels, 20)
        wait_until(lambda: again._server_backoff.failures >= 1, what="a check-in that failed")
        assert again.current.version == "1"  # it is retrying, with backoff, on the stored model
    finally:
        again.stop()
    from edge_agent.outbox import Outbox

    kept = Outbox(config.state_dir / "outbox.sqlite")
    try:
        assert sum(r["inferences"] for r in kept.take(100)) == 20  # buffered for later, not lost
    finally:
        kept.close()


def test_shadow_mode_reports_agreement_without_changing_answers(agent_config, server, releases):
    agent = Agent(agent_config()).start()
    try:
        wait_until(lambda: running(agent, "1"), what="v1 installed")
        server.api("POST", "/v1/rollouts", {
            "model": MODEL, "candidate_version": "2", "stages": [{"percent": 0.01}, {"percent": 100}],
            "shadow": True, "shadow_share": 1.0})
        wait_until(lambda: agent.shadow.model is not None, what="shadow candidate loaded")
        assert agent.status()["cohort"] == "stable" and agent.current.version == "1"
        images, labels = eval_batches(releases)
        for i in range(40):
            out = agent.predict({"image": images[i][None]}, label=labels[i])
            reference = agent.current.run({"image": images[i][None]})
            np.testing.assert_array_equal(out[0], reference[0])  # answers come from v1
        wait_until(lambda: sum(r["shadow_samples"] for r in stored_reports(server)) >= 40,
                   what="shadow counts reported")
    finally:
        agent.stop()
    rows = stored_reports(server)
    samples = sum(r["shadow_samples"] for r in rows)
    agree = sum(r["shadow_agree"] for r in rows)
    assert samples == 40
    assert 0.7 <= agree / samples <= 1.0  # two trainings of one model mostly agree


@pytest.mark.parametrize("token", ["not-a-token"])
def test_registration_with_a_bad_token_is_a_clear_error_and_no_crash(agent_config, token):
    agent = Agent(agent_config(enroll_token=token))
    check_ins = record_check_ins(agent)
    agent.start()
    try:
        wait_until(lambda: len(check_ins) >= 2, what="two check-ins with the refused token")
        assert agent.current is None
        assert agent.identity.device_id is None
    finally:
        agent.stop()
