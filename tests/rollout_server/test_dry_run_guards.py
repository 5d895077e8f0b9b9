"""Dry-run guards: evaluated and shown every window, never acting. Pure parsing and assessment,
then a real rollout whose only failing guard is a dry-run one."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from sqlalchemy import select

from rollout_server.analysis import ArmWindow, Guard, GuardSpec, Measurements, Metric, Outcome, assess
from rollout_server.analysis.dry_run import assess_split
from rollout_server.controller import step_all
from rollout_server.db import session_scope
from rollout_server.models import Event
from tests.rollout_server import test_rollouts
from tests.rollout_server.conftest import auth
from tests.rollout_server.test_rollouts import T0, create, send_window, start_stage_at

releases, fleet = test_rollouts.releases, test_rollouts.fleet  # the rollout tests' fixtures


def test_a_guard_may_be_dry_run_but_not_every_guard():
    guard = Guard.from_dict({"metric": "error_rate", "dry_run": True})
    assert guard.dry_run and guard.to_dict()["dry_run"] is True
    assert "dry_run" not in Guard(Metric.LATENCY).to_dict()  # stored specs stay as they were
    spec = GuardSpec.from_dict({"guards": [{"metric": "latency"}, {"metric": "error_rate", "dry_run": True}]})
    assert [g.name for g in spec.acting().guards] == ["latency"]
    assert GuardSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="dry_run must be true or false"):
        Guard.from_dict({"metric": "error_rate", "dry_run": "yes"})
    with pytest.raises(ValueError, match="at least one must act"):
        GuardSpec.from_dict({"guards": [{"metric": "error_rate", "dry_run": True}]})


def test_dry_run_guards_change_neither_the_verdicts_nor_the_alpha_of_the_acting_ones():
    stable = ArmWindow(inferences=20_000, errors={"runtime_error": 200})
    canary = ArmWindow(inferences=20_000, errors={"runtime_error": 1_600})  # 8% against 1%
    measurements = Measurements(stable, canary, look=3)
    acting_only = GuardSpec.from_dict({"guards": [{"metric": "latency", "min_samples": 1}]})
    with_dry = GuardSpec.from_dict({"guards": [{"metric": "latency", "min_samples": 1},
                                               {"metric": "error_rate", "dry_run": True}]})
    acting, rehearsed = assess_split(with_dry, measurements)
    assert acting == assess(acting_only, measurements)  # same outcomes, reasons and alpha
    assert [v.guard for v in rehearsed] == ["error_rate"] and rehearsed[0].outcome is Outcome.FAIL
    turned_on = GuardSpec(tuple(replace(g, dry_run=False) for g in with_dry.guards))
    assert rehearsed[0] == assess(turned_on, measurements)[1]  # what it would say if it acted
    assert assess_split(acting_only, measurements)[1] == ()


#: the error-rate guard rehearses: only latency, accuracy and load failures act
GUARDS = {"guards": [{"metric": "error_rate", "dry_run": True}, {"metric": "latency"}, {"metric": "accuracy"},
                     {"metric": "load_failures", "min_samples": 5}]}


def test_a_failing_dry_run_guard_is_shown_but_never_rolls_back_or_alerts(app, client, tokens, fleet):
    created = create(client, tokens, guards=GUARDS)
    assert created.status_code == 201, created.json
    rollout_id = created.json["id"]
    assert created.json["spec"]["guards"]["guards"][0]["dry_run"] is True
    hook = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/never", "kinds": ["verdict_failed"]},
                       headers=auth(tokens["admin"]))
    assert hook.status_code == 201, hook.json
    start_stage_at(app, rollout_id, T0)
    phases = []
    for window in range(1, 12):  # a canary with eight times the errors: the dry-run guard fails
        now = T0 + dt.timedelta(seconds=60 * window)
        send_window(client, fleet, now, {"stable": 0.01, "canary": 0.08}, seed=window)
        step_all(app, now)
        status = client.get(f"/v1/rollouts/{rollout_id}", headers=auth(tokens["admin"])).json
        phases.append((status["phase"], status["canary_percent"]))
        if status["phase"] != "running":
            break
    assert phases[-1] == ("promoted", 100.0), (phases, status["verdicts"][:5])
    dry = [v for v in status["verdicts"] if v["dry_run"]]
    assert dry and all(v["guard"] == "error_rate" for v in dry)
    assert any(v["outcome"] == "fail" for v in dry)
    assert all(v["decision"] != "rollback" for v in status["verdicts"])
    acting = [v for v in status["verdicts"] if not v["dry_run"]]
    assert {v["guard"] for v in acting} == {"latency", "accuracy", "load_failures"}
    with session_scope(app) as session:
        kinds = [e.kind for e in session.scalars(select(Event).where(Event.rollout_id == rollout_id))]
    assert "verdict_failed" not in kinds and "phase_changed" in kinds


def test_a_spec_of_only_dry_run_guards_is_400(client, tokens, releases):
    response = create(client, tokens, guards={"guards": [{"metric": "error_rate", "dry_run": True}]})
    assert response.status_code == 400 and "at least one must act" in response.json["detail"]
