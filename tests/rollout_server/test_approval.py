"""Manual approval gates: the state machine's awaiting_approval, and the API, controller, audit and
events around it on the real app."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from rollout_server.analysis import (
    Action,
    InvalidTransition,
    Outcome,
    Phase,
    RolloutState,
    Stage,
    Verdict,
    abort,
    approve,
    decide,
    pause,
    promote,
    resume,
    start,
)
from rollout_server.analysis.sample_ratio import SampleRatio
from rollout_server.analysis.stages import parse_approve_before
from rollout_server.controller import step_all
from rollout_server.db import session_scope
from rollout_server.models import Event
from tests.rollout_server import test_rollouts
from tests.rollout_server.conftest import BOTH_BACKENDS, auth
from tests.rollout_server.test_rollouts import T0, create, send_window, start_stage_at

releases, fleet = test_rollouts.releases, test_rollouts.fleet  # the rollout tests' fixtures

STAGES = (Stage(10, 600, 1000), Stage(50, 600, 1000), Stage(100, 0, 0))
PASS = (Verdict(Outcome.PASS, "error_rate: fine", guard="error_rate"),)
FAIL = (Verdict(Outcome.FAIL, "error_rate: canary 2% vs 1%", guard="error_rate"),)
ERROR = (Verdict(Outcome.ERROR, "accuracy: inconsistent data", guard="accuracy"),)
HOLD = (Verdict(Outcome.INCONCLUSIVE, "latency: too few samples", guard="latency"),)


def gated(*percents: float) -> RolloutState:
    """Running at 10% with gates before ``percents``."""
    return start(RolloutState(stages=STAGES, approve_before=percents), 0.0).state


def awaiting(*percents: float) -> RolloutState:
    decision = decide(gated(*percents), PASS, 600.0, canary_samples=5000)
    assert decision.action is Action.AWAIT_APPROVAL, decision.reason
    return decision.state


# --- the state machine ---------------------------------------------------------------------------


def test_approve_before_names_later_stages_or_promotion():
    assert parse_approve_before([100, 50, 50], STAGES) == (50.0, 100.0)
    assert parse_approve_before(None, STAGES) == ()
    assert parse_approve_before([100], (Stage(10), Stage(50))) == (100.0,)  # promotion, no 100% stage
    for bad, fragment in (([10], "first stage"), ([30], "not a later stage"), (["50"], "must be a number"),
                          (50, "must be a list"), ([True], "must be a number")):
        with pytest.raises(ValueError, match=fragment):
            parse_approve_before(bad, STAGES)


def test_a_passed_stage_waits_before_a_gated_one_keeping_its_split():
    state = awaiting(50)
    assert state.phase is Phase.AWAITING_APPROVAL and state.phase.is_active
    assert state.canary_percent == 10 and state.stage_index == 0
    assert state.approval_pending and state.approval_requested_at == 600.0
    assert "awaiting approval to advance to 50%" in state.reason
    for minute in range(11, 100):  # passing windows never move it
        decision = decide(state, PASS, 60.0 * minute, canary_samples=10**6)
        assert decision.action is Action.HOLD and "awaiting approval" in decision.reason
        state = decision.state
    assert state.phase is Phase.AWAITING_APPROVAL and state.windows == 90


def test_an_ungated_stage_advances_and_a_gate_before_100_waits_before_promotion():
    advanced = decide(gated(100), PASS, 600.0, canary_samples=5000)
    assert advanced.action is Action.ADVANCE and advanced.state.canary_percent == 50
    waiting = decide(advanced.state, PASS, 1200.0, canary_samples=5000)
    assert waiting.action is Action.AWAIT_APPROVAL and waiting.state.canary_percent == 50
    assert "awaiting approval to promote" in waiting.reason
    approved = approve(waiting.state, 1300.0, reason="approved by alice")
    assert approved.state.phase is Phase.PROMOTED and approved.action is Action.APPROVE
    assert approved.reason == "approved by alice: promoted" and not approved.state.approval_pending


def test_a_failing_guard_rolls_back_while_awaiting_approval():
    decision = decide(awaiting(50), FAIL, 700.0, canary_samples=5000)
    assert decision.action is Action.ROLLBACK and decision.state.phase is Phase.ROLLED_BACK
    assert decision.state.canary_percent == 0 and not decision.state.approval_pending


def test_safety_pauses_apply_while_awaiting_and_resume_returns_to_awaiting():
    state = awaiting(50)
    for minute in range(11, 15):
        state = decide(state, ERROR, 60.0 * minute, canary_samples=5000).state
    assert state.phase is Phase.PAUSED and state.approval_pending
    assert resume(state, 1000.0).state.phase is Phase.AWAITING_APPROVAL
    mismatch = SampleRatio(80, 50, 900, 880, 1e-9, 0.001)
    srm = decide(awaiting(50), PASS, 700.0, canary_samples=5000, sample_ratio=mismatch)
    assert srm.action is Action.PAUSE and srm.alert and srm.state.approval_pending


def test_approval_starts_the_gated_stage_now():
    decision = approve(awaiting(50), 900.0)
    assert decision.action is Action.APPROVE and decision.state.phase is Phase.RUNNING
    assert decision.state.stage_index == 1 and decision.state.canary_percent == 50
    assert decision.state.stage_started_at == 900.0 and not decision.state.approval_pending
    assert decision.reason == "approved by operator: starting the 50% stage"


def test_manual_transitions_around_the_gate():
    state = awaiting(50)
    paused = pause(state, 800.0).state
    assert paused.phase is Phase.PAUSED and paused.canary_percent == 10
    with pytest.raises(InvalidTransition, match="cannot approve a rollout that is paused"):
        approve(paused, 801.0)
    back = resume(paused, 802.0).state
    assert back.phase is Phase.AWAITING_APPROVAL and back.approval_requested_at == 600.0
    assert promote(back, 803.0).state.phase is Phase.PROMOTED
    assert abort(back, 803.0).state.phase is Phase.ABORTED
    with pytest.raises(InvalidTransition, match="only awaiting_approval"):
        approve(gated(50), 10.0)
    assert resume(pause(gated(50), 5.0).state, 6.0).state.phase is Phase.RUNNING  # no gate awaited
    assert decide(state, HOLD, 700.0, canary_samples=0).action is Action.HOLD


def test_the_gate_survives_storage():
    state = awaiting(50, 100)
    again = RolloutState.from_dict(state.to_dict())
    assert again == state and again.approve_before == (50.0, 100.0)
    assert RolloutState.from_dict({"stages": None}).approve_before == ()  # states stored before gates


# --- API, controller, audit, events -------------------------------------------------------------


def operator(client, tokens, name: str, role: str = "operator") -> dict[str, str]:
    made = client.post("/v1/tokens", json={"name": name, "role": role}, headers=auth(tokens["admin"]))
    assert made.status_code == 201, made.json
    return auth(made.json["token"])


def run_windows(app, client, tokens, fleet, rollout_id: int, first: int, count: int, error_rate: dict,
                until: str | None = None) -> dict:
    """Report and analyse ``count`` one-minute windows from window ``first``; stop once the phase is
    ``until``."""
    status = {}
    for window in range(first, first + count):
        now = T0 + dt.timedelta(seconds=60 * window)
        send_window(client, fleet, now, error_rate, seed=window)
        step_all(app, now)
        status = client.get(f"/v1/rollouts/{rollout_id}", headers=auth(tokens["admin"])).json
        if status["phase"] == until:
            break
    return status


GOOD = {"stable": 0.01, "canary": 0.01}
BAD = {"stable": 0.01, "canary": 0.08}


def events_of(app, rollout_id: int) -> list[tuple[str, dict]]:
    with session_scope(app) as session:
        return [(e.kind, e.payload) for e in session.scalars(
            select(Event).where(Event.rollout_id == rollout_id).order_by(Event.id))]


@BOTH_BACKENDS  # awaiting_approval has 17 characters: the phase column of migration 0008
def test_a_gate_waits_for_an_operator_who_is_audited_and_the_stage_starts(app, client, tokens, fleet):
    alice, viewer = operator(client, tokens, "alice"), operator(client, tokens, "val", "viewer")
    created = create(client, tokens, approve_before=[50])
    assert created.status_code == 201, created.json
    rollout_id = created.json["id"]
    assert created.json["state"]["approve_before"] == [50.0] and created.json["approval"] is None
    early = client.post(f"/v1/rollouts/{rollout_id}/approve", headers=alice)
    assert early.status_code == 409 and "only awaiting_approval" in early.json["detail"]
    start_stage_at(app, rollout_id, T0)
    status = run_windows(app, client, tokens, fleet, rollout_id, 1, 11, GOOD, until="awaiting_approval")
    assert (status["phase"], status["canary_percent"]) == ("awaiting_approval", 10), status["verdicts"][:4]
    assert status["approval"]["percent"] == 50 and status["approval"]["stage"] == 2
    assert status["devices"]["canary"] > 0  # canary devices keep the candidate while it waits
    kinds = [(kind, payload.get("to")) for kind, payload in events_of(app, rollout_id)]
    assert kinds[-2:] == [("phase_changed", "awaiting_approval"), ("approval_requested", None)]
    assert events_of(app, rollout_id)[-1][1]["waiting_stage"] == 2

    held = run_windows(app, client, tokens, fleet, rollout_id, 20, 3, GOOD)  # guards keep running
    assert held["phase"] == "awaiting_approval" and held["verdicts"][0]["window_end"] > status["verdicts"][0][
        "window_end"]
    assert client.post(f"/v1/rollouts/{rollout_id}/approve", headers=viewer).status_code == 403
    assert client.post(f"/v1/rollouts/{rollout_id}/pause", headers=alice).json["phase"] == "paused"
    refused = client.post(f"/v1/rollouts/{rollout_id}/approve", headers=alice)
    assert refused.status_code == 409 and refused.json["error"] and "paused" in refused.json["detail"]
    resumed = client.post(f"/v1/rollouts/{rollout_id}/resume", headers=alice).json
    assert resumed["phase"] == "awaiting_approval" and resumed["approval"]["percent"] == 50
    approved = client.post(f"/v1/rollouts/{rollout_id}/approve", json={"reason": "dashboards look fine"},
                           headers=alice)
    assert approved.status_code == 200, approved.json
    assert (approved.json["phase"], approved.json["canary_percent"]) == ("running", 50)
    assert approved.json["reason"] == "approved by alice: dashboards look fine: starting the 50% stage"
    assert client.post(f"/v1/rollouts/{rollout_id}/approve", headers=alice).status_code == 409
    audit = client.get("/v1/audit", headers=auth(tokens["admin"])).json["entries"]
    approvals = [e for e in audit if e["action"] == "rollout.approve"]
    assert [e["actor"] for e in approvals] == ["alice"]
    assert any(e["action"] == "rollout.await_approval" and e["actor"] == "controller" for e in audit)
    last = events_of(app, rollout_id)[-1]
    assert last[0] == "phase_changed" and (last[1]["from"], last[1]["to"], last[1]["actor"]) == (
        "awaiting_approval", "running", "alice")


def test_a_failing_guard_rolls_back_a_rollout_awaiting_approval(app, client, tokens, fleet):
    rollout_id = create(client, tokens, approve_before=[50, 100]).json["id"]
    start_stage_at(app, rollout_id, T0)
    status = run_windows(app, client, tokens, fleet, rollout_id, 1, 11, GOOD, until="awaiting_approval")
    assert status["phase"] == "awaiting_approval", status["verdicts"][:4]
    status = run_windows(app, client, tokens, fleet, rollout_id, 20, 8, BAD, until="rolled_back")
    assert status["phase"] == "rolled_back" and status["approval"] is None
    assert any(v["outcome"] == "fail" and v["decision"] == "rollback" for v in status["verdicts"])
    assert {a["version"] for a in test_rollouts.assignments(client, fleet).values()} == {"1"}


@pytest.mark.parametrize("gates, fragment", [
    ([10], "first stage"), ([30], "approve_before[0]"), ("50", "must be a list"),
])
def test_bad_gates_are_400_with_the_reason(client, tokens, releases, gates, fragment):
    response = create(client, tokens, approve_before=gates)
    assert response.status_code == 400 and fragment in response.json["detail"], response.json


# --- CLI ------------------------------------------------------------------------------------------


def test_the_cli_starts_a_gated_scheduled_rollout_with_a_dry_run_guard_and_approves_it(app, live_server,
                                                                                        tokens):
    from rollout_server.controller import apply_decision
    from rollout_server.models import Rollout
    from tests.rollout_server.conftest import edgeship, seed_release, variant_entry

    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
    admin, server = tokens["admin"], ("--server", live_server)
    for bad, fragment in ((("--window", "weekdays 9-5"), "--window"),
                          (("--dry-run-guard", "vibes"), "no such guard (guards: accuracy, error_rate"),
                          (("--approve-before", "half"), "--approve-before")):
        refused = edgeship("rollout", "start", "digits-cnn", "2", *bad, *server, token=admin)
        assert refused.returncode != 0 and fragment in refused.stderr, refused.stderr
    started = edgeship("rollout", "start", "digits-cnn", "2", "--approve-before", "50,100",
                       "--window", "mon-sun 00:00-24:00 UTC", "--dry-run-guard", "latency", *server,
                       token=admin)
    assert started.returncode == 0, started.stderr
    assert "phase running" in started.stdout and "approval before: 50%, 100%" in started.stdout
    assert "window: mon,tue,wed,thu,fri,sat,sun 00:00-24:00 UTC" in started.stdout
    rollout_id = int(started.stdout.split("#", 1)[1].split(":", 1)[0])
    early = edgeship("rollout", "approve", str(rollout_id), *server, token=admin)
    assert early.returncode != 0 and "cannot approve a rollout that is running" in early.stderr
    with session_scope(app) as session:  # the controller finds the 10% stage passed
        rollout = session.get(Rollout, rollout_id)
        dry = [g.get("dry_run", False) for g in rollout.spec["guards"]["guards"]]
        assert dry == [False, True, False, False]
        state = RolloutState.from_dict(rollout.state)
        waiting = decide(state, PASS, state.stage_started_at + 7200, canary_samples=10**6)
        apply_decision(session, rollout, waiting, "controller", dt.datetime.now(dt.timezone.utc))
    status = edgeship("rollout", "status", str(rollout_id), *server, token=admin)
    assert "phase awaiting_approval" in status.stdout
    assert f"awaiting approval to advance to 50%: edgeship rollout approve {rollout_id}" in status.stdout
    approved = edgeship("rollout", "approve", str(rollout_id), "--reason", "looks good", *server, token=admin)
    assert approved.returncode == 0, approved.stderr
    assert "phase running, stage 2/3, canary 50%" in approved.stdout and "looks good" in approved.stdout


def test_an_approval_before_100_promotes_and_makes_the_candidate_stable(app, client, tokens, fleet):
    rollout_id = create(client, tokens, approve_before=[100]).json["id"]
    start_stage_at(app, rollout_id, T0)
    status = run_windows(app, client, tokens, fleet, rollout_id, 1, 14, GOOD, until="awaiting_approval")
    assert (status["phase"], status["canary_percent"]) == ("awaiting_approval", 50), status["verdicts"][:4]
    assert status["approval"] == {"stage": None, "percent": 100.0, "action": "promote",
                                  "requested_at": status["approval"]["requested_at"]}
    approved = client.post(f"/v1/rollouts/{rollout_id}/approve", headers=auth(tokens["admin"])).json
    assert (approved["phase"], approved["canary_percent"]) == ("promoted", 100.0)
    assert {a["version"] for a in test_rollouts.assignments(client, fleet).values()} == {"2"}
