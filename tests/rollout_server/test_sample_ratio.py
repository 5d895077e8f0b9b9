"""Sample ratio mismatch: the test, the decision it drives, the simulated fleet and the controller."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import update

from edgeship.contract.latency import BUCKET_COUNT
from rollout_server.analysis import Action, Outcome, Phase, RolloutState, Stage, Verdict, decide, start
from rollout_server.analysis.arm_profile import ArmProfile
from rollout_server.analysis.sample_ratio import SRM_ALPHA, SRM_GRACE_SECONDS, sample_ratio
from rollout_server.analysis.simulate import run_rollouts, summarize
from rollout_server.analysis.spec import GuardSpec
from rollout_server.controller import step_all
from rollout_server.db import session_scope
from rollout_server.models import Device
from tests.rollout_server.conftest import auth, register, seed_release, variant_entry

PASS = (Verdict(Outcome.PASS, "error_rate: fine", guard="error_rate"),)
FAIL = (Verdict(Outcome.FAIL, "error_rate: canary 2% vs 1%", guard="error_rate"),)


@pytest.mark.parametrize("counts", [(100, 95, 900, 860), (500, 480, 500, 470), (10, 10, 90, 88)])
def test_arms_reporting_alike_match(counts):
    check = sample_ratio(*counts)
    assert check.p_value is not None and check.p_value > SRM_ALPHA and not check.mismatch
    assert "as assigned" in check.reason


@pytest.mark.parametrize("counts", [(100, 70, 900, 880), (6, 0, 54, 54), (500, 350, 500, 490)])
def test_a_canary_that_goes_silent_is_a_mismatch(counts):
    check = sample_ratio(*counts)
    assert check.mismatch and "mismatch" in check.reason
    assert f"{counts[1]} of {counts[0]} canary devices report" in check.reason


def test_nothing_to_test_is_no_mismatch():
    assert sample_ratio(0, 0, 10, 10).p_value is None
    assert sample_ratio(10, 10, 90, 90).p_value is None  # everyone reports: no silent column
    with pytest.raises(ValueError, match=">= 0"):
        sample_ratio(-1, 0, 10, 10)


def running() -> RolloutState:
    return start(RolloutState(stages=(Stage(10, 600, 1000), Stage(100, 0, 0))), 0.0).state


def test_a_mismatch_pauses_with_an_alert_and_a_fail_still_rolls_back():
    mismatch = sample_ratio(100, 70, 900, 880)
    paused = decide(running(), PASS, 60, canary_samples=10, sample_ratio=mismatch)
    assert paused.action is Action.PAUSE and paused.alert and paused.state.phase is Phase.PAUSED
    assert "sample ratio" in paused.state.reason
    assert decide(running(), FAIL, 60, canary_samples=10, sample_ratio=mismatch).action is Action.ROLLBACK
    fine = decide(running(), PASS, 60, canary_samples=10, sample_ratio=sample_ratio(100, 95, 900, 860))
    assert fine.action is not Action.PAUSE


def test_simulated_fleets_pause_on_a_silent_canary_and_not_on_an_a_a():
    spec = GuardSpec.default()
    same = summarize(run_rollouts(30, spec, ArmProfile(), ArmProfile(), seed=11))
    silent = summarize(run_rollouts(30, spec, ArmProfile(), ArmProfile(silent_device_share=0.3), seed=11))
    assert same["paused_rate"] == 0.0
    assert silent["paused_rate"] == 1.0


@pytest.mark.parametrize("silent_share", [0.0, 0.5])
def test_the_controller_pauses_when_canary_devices_stop_reporting(app, client, tokens, silent_share):
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
    fleet = [register(client, tokens["enroll"]) for _ in range(100)]
    created = client.post("/v1/rollouts", headers=auth(tokens["admin"]), json={
        "model": "digits-cnn", "candidate_version": "2", "guards": {"guards": [{"metric": "error_rate"}]},
        "stages": [{"percent": 50, "min_duration_seconds": 600, "min_samples": 10**6}, {"percent": 100}]})
    assert created.status_code == 201, created.json
    now = dt.datetime.now(dt.timezone.utc)
    quiet, canary = 0, 0
    for device, credential in fleet:
        assignment = client.get(f"/v1/devices/{device}/assignment?model=digits-cnn",
                                headers=auth(credential)).json
        if assignment["cohort"] == "canary":
            canary += 1
            if quiet < canary * silent_share:  # the candidate crashes these before they report
                quiet += 1
                continue
        latency = [0] * BUCKET_COUNT
        latency[2] = 50
        report = {"id": uuid.uuid4().hex, "model": "digits-cnn", "version": assignment["version"],
                  "variant": assignment["variant"]["id"], "rollout_id": assignment["rollout_id"],
                  "cohort": assignment["cohort"], "inferences": 50, "latency_counts": latency,
                  "window_start": (now - dt.timedelta(seconds=30)).isoformat(), "window_end": now.isoformat()}
        answer = client.post("/v1/reports", json={"reports": [report]}, headers=auth(credential))
        assert answer.status_code == 200
    assert canary >= 25  # a 50% stage of 100 devices (binomial: fewer in 1 run of 10^4)
    with session_scope(app) as session:  # every device checked in during the stage
        session.execute(update(Device).values(last_seen_at=now))
    step_all(app, now + dt.timedelta(seconds=60))  # in the grace time: not tested yet
    early = client.get(f"/v1/rollouts/{created.json['id']}", headers=auth(tokens["admin"])).json
    assert early["phase"] == "running"
    step_all(app, now + dt.timedelta(seconds=SRM_GRACE_SECONDS + 60))
    status = client.get(f"/v1/rollouts/{created.json['id']}", headers=auth(tokens["admin"])).json
    if silent_share:
        assert status["phase"] == "paused", (status["reason"], status["verdicts"][:1])
        assert "sample ratio" in status["reason"] and "canary devices report" in status["reason"]
    else:
        assert status["phase"] == "running", status
