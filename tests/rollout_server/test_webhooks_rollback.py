"""The controller's own changes reach a webhook: a stage advance, then a failing guard's verdict
with its reason and the rollback it caused, in that order (cause before effect)."""

from __future__ import annotations

import datetime as dt

from rollout_server.controller import step_all
from rollout_server.notifications.dispatcher import dispatch_due
from rollout_server.notifications.signing import verify
from tests.rollout_server import test_rollouts
from tests.rollout_server.conftest import auth
from tests.rollout_server.test_rollouts import T0, create, send_window, start_stage_at
from tests.rollout_server.webhook_receiver import webhook_receiver

releases, fleet = test_rollouts.releases, test_rollouts.fleet  # the rollout tests' fixtures


def test_a_stage_advance_and_a_rollback_send_their_events_with_the_guards_reason(app, client, tokens, fleet):
    admin = tokens["admin"]
    with webhook_receiver() as receiver:
        hook = client.post("/v1/webhooks", json={"url": receiver.url, "kinds": [
            "stage_advanced", "verdict_failed", "phase_changed"]}, headers=auth(admin)).json
        rollout_id = create(client, tokens).json["id"]
        start_stage_at(app, rollout_id, T0)
        status, advanced = {}, 0
        for window in range(1, 12):  # a good canary until the second stage
            now = T0 + dt.timedelta(seconds=60 * window)
            send_window(client, fleet, now, {"stable": 0.01, "canary": 0.01}, seed=window)
            step_all(app, now)
            status = client.get(f"/v1/rollouts/{rollout_id}", headers=auth(admin)).json
            if status["canary_percent"] == 50:
                advanced = window
                break
        assert (status["phase"], status["canary_percent"]) == ("running", 50), status["verdicts"][:4]
        for window in range(advanced + 1, advanced + 9):  # then a bad one
            now = T0 + dt.timedelta(seconds=60 * window)
            send_window(client, fleet, now, {"stable": 0.01, "canary": 0.08}, seed=window)
            step_all(app, now)
            status = client.get(f"/v1/rollouts/{rollout_id}", headers=auth(admin)).json
            if status["phase"] != "running":
                break
        assert status["phase"] == "rolled_back"
        sent = dispatch_due(app)
        received = receiver.wait_for(len(sent))
    assert set(sent.values()) == {"delivered"}
    for request in received:
        verify(hook["secret"], request.headers, request.body, int(request.headers["Edgeship-Timestamp"]))
    events = [r.json for r in received]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "phase_changed" and (events[0]["from"], events[0]["to"]) == ("pending", "running")
    assert kinds[1] == "stage_advanced" and (events[1]["from_stage"], events[1]["to_stage"]) == (1, 2)
    assert events[1]["rollout"]["canary_percent"] == 50 and events[1]["actor"] == "controller"
    failed = [e for e in events if e["kind"] == "verdict_failed"]
    assert failed and kinds[-1] == "phase_changed" and kinds.index("verdict_failed") < len(kinds) - 1
    stored = {(v["guard"], v["reason"]) for v in status["verdicts"] if v["outcome"] == "fail"}
    assert {(e["guard"], e["reason"]) for e in failed} <= stored
    assert all(e["decision"] == "rollback" for e in failed)
    assert any(e["guard"] == "error_rate" for e in failed)
    last = events[-1]
    assert (last["from"], last["to"], last["actor"]) == ("running", "rolled_back", "controller")
    assert last["reason"] == status["reason"] and "error" in last["reason"].lower()
