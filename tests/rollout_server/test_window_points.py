"""The rollout page's charts come from points the controller stores per analysis window
(rollout_server/window_points.py): what devices reported, summed per arm and window, including a
report that arrives a window late; the page asks only for the windows it does not hold yet."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from edgeship.contract.sketch import LatencySketch
from rollout_server.controller import step_all
from tests.rollout_server.clocked import FakeClock, clocked_app
from tests.rollout_server.conftest import BOTH_BACKENDS, auth, register, seed_release, variant_entry
from tests.rollout_server.test_console_sessions import sign_in

clock = FakeClock.fixture()
app = clocked_app()
WINDOW = 60
STAGES = [{"percent": 50, "min_duration_seconds": 3600, "min_samples": 10**9},
          {"percent": 100, "min_duration_seconds": 0, "min_samples": 0}]


@pytest.fixture
def fleet(app, client, tokens, clock) -> dict:
    """A running 50% rollout with three devices in each arm; the clock 10 s into a window, three
    windows back (the server refuses report windows that end after its real time)."""
    clock.now = clock.now.replace(second=10) - dt.timedelta(minutes=3)
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
    created = client.post("/v1/rollouts", headers=auth(tokens["admin"]), json={
        "model": "digits-cnn", "candidate_version": "2", "stages": STAGES})
    assert created.status_code == 201, created.json
    arms: dict[str, list[str]] = {"stable": [], "canary": []}
    while min(map(len, arms.values())) < 3:
        assert sum(map(len, arms.values())) < 60
        device, credential = register(client, tokens["enroll"])
        answer = client.get(f"/v1/devices/{device}/assignment?model=digits-cnn", headers=auth(credential))
        if len(arms[answer.json["cohort"]]) < 3:
            arms[answer.json["cohort"]].append(credential)
    return {"id": created.json["id"], **arms}


def post(client, credential: str, rollout_id: int, cohort: str, end: dt.datetime, inferences: int, *,
         errors: int = 0, load_failed: int = 0, labelled: int = 0, correct: int = 0,
         latency_ms: float = 5.0) -> None:
    sketch = LatencySketch()
    sketch.add_all([latency_ms / 1000] * inferences)
    body = {"id": uuid.uuid4().hex, "model": "digits-cnn", "version": "2" if cohort == "canary" else "1",
            "variant": "onnx-int8" if cohort == "canary" else "onnx-fp32", "rollout_id": rollout_id,
            "cohort": cohort, "window_start": (end - dt.timedelta(seconds=30)).isoformat(),
            "window_end": end.isoformat(), "inferences": inferences,
            "errors": {"runtime_error": errors, "load_failed": load_failed},
            "labelled": labelled, "correct": correct, "schema": 2, "latency": sketch.to_wire()}
    answer = client.post("/v1/reports", json={"reports": [body]}, headers=auth(credential))
    assert answer.status_code == 200 and answer.json["accepted"] == [body["id"]], answer.json


def window_end_of(at: dt.datetime) -> int:
    """The end of the analysis window holding ``at`` (epoch seconds)."""
    return (int(at.timestamp()) // WINDOW + 1) * WINDOW


@BOTH_BACKENDS
def test_each_window_sums_what_each_arm_reported(app, client, tokens, clock, fleet) -> None:
    first = clock.now - dt.timedelta(seconds=5)  # the window that began 10 s ago
    for credential in fleet["canary"]:
        post(client, credential, fleet["id"], "canary", first, 100, errors=3, load_failed=1, labelled=10,
             correct=6, latency_ms=8.0)
    for credential in fleet["stable"][:2]:
        post(client, credential, fleet["id"], "stable", first, 50, errors=1, labelled=20, correct=19)
    step_all(app)
    sign_in(client, tokens["admin"])
    live = client.get(f"/console/rollouts/{fleet['id']}/live").json["series"]
    assert live["t"] == [window_end_of(first)] and live["window_seconds"] == WINDOW
    canary = {name: values[0] for name, values in live["canary"].items()}
    stable = {name: values[0] for name, values in live["stable"].items()}
    assert canary["devices"] == 3 and stable["devices"] == 2
    assert canary["inferences"] == 300 and canary["error_rate"] == pytest.approx(12 / 300)  # 3 + 1 each
    assert canary["load_failures"] == 3 and canary["accuracy"] == pytest.approx(0.6)
    assert stable["error_rate"] == pytest.approx(0.02) and stable["accuracy"] == pytest.approx(0.95)
    assert canary["p50_ms"] == pytest.approx(8.0, rel=0.03)
    assert stable["p95_ms"] == pytest.approx(5.0, rel=0.03)


def test_a_report_a_window_late_is_in_its_point_and_the_page_asks_only_for_new_windows(
        app, client, tokens, clock, fleet) -> None:
    first = clock.now - dt.timedelta(seconds=5)
    post(client, fleet["canary"][0], fleet["id"], "canary", first, 40)
    step_all(app)
    clock.advance(WINDOW)
    second = clock.now - dt.timedelta(seconds=5)
    post(client, fleet["canary"][1], fleet["id"], "canary", first, 60)  # measured in the first window
    post(client, fleet["stable"][0], fleet["id"], "stable", second, 30)
    step_all(app)
    sign_in(client, tokens["admin"])
    live = client.get(f"/console/rollouts/{fleet['id']}/live").json["series"]
    assert live["t"] == [window_end_of(first), window_end_of(second)]
    assert live["canary"]["inferences"] == [100, None] and live["canary"]["devices"] == [2, None]
    assert live["stable"]["inferences"] == [None, 30]
    newer = client.get(f"/console/rollouts/{fleet['id']}/live?since={window_end_of(second)}").json["series"]
    assert newer["t"] == [window_end_of(second)] and newer["since"] == window_end_of(second)
    assert client.get(f"/console/rollouts/{fleet['id']}/live?since=nan").json["series"]["since"] is None


def test_a_window_analysed_again_replaces_its_points(app, client, tokens, clock, fleet) -> None:
    """Two claims a window apart sum the earlier window twice (late reports); it is stored once."""
    first = clock.now - dt.timedelta(seconds=5)
    post(client, fleet["stable"][0], fleet["id"], "stable", first, 10)
    step_all(app)
    clock.advance(WINDOW)
    step_all(app)
    clock.advance(WINDOW)
    step_all(app)
    sign_in(client, tokens["admin"])
    live = client.get(f"/console/rollouts/{fleet['id']}/live").json["series"]
    assert live["t"] == [window_end_of(first)] and live["stable"]["inferences"] == [10]
