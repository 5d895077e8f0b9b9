"""The opt-in memory and load time guards, over real HTTP: each device's largest peak RSS and
model load time of the stage, canary against stable; absent values are absent, not zero."""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
import pytest
import requests

from rollout_server.analysis import ArmWindow, Guard, Metric
from rollout_server.analysis.guards import check_load_time, check_memory
from rollout_server.analysis.verdict import Outcome
from rollout_server.controller import step_all
from tests.rollout_server.conftest import auth
from tests.rollout_server.test_latency_reports import fleet  # noqa: F401 (fixture)

MIB = 2**20


def post(live_server: str, credential: str, body: dict) -> None:
    answer = requests.post(f"{live_server}/v1/reports", json={"reports": [body]}, headers=auth(credential),
                           timeout=30)
    assert answer.status_code == 200, answer.text


def window(version: str, cohort: str, rollout_id: int, **fields) -> dict:
    end = dt.datetime.now(dt.timezone.utc)
    return {"id": uuid.uuid4().hex, "model": "digits-cnn", "version": version,
            "variant": "onnx-int8" if version == "2" else "onnx-fp32", "rollout_id": rollout_id,
            "cohort": cohort, "window_start": (end - dt.timedelta(seconds=30)).isoformat(),
            "window_end": end.isoformat(), "inferences": 10, "schema": 2,
            "latency": {"schema": 5, "buckets": [[-250, 10]]}, **fields}


@pytest.fixture
def memory_rollout(app, live_server, tokens, fleet):  # noqa: F811
    """The latency fixture's fleet, its rollout's guards replaced by the memory and load time ones."""
    from rollout_server.db import session_scope
    from rollout_server.models import Rollout

    with session_scope(app) as session:
        rollout = session.get(Rollout, fleet["id"])
        guards = [{"metric": "memory", "threshold": 1.2, "min_samples": 3},  # the fleet has ~8 canaries
                  {"metric": "load_time", "threshold": 1.5, "min_samples": 3}]
        rollout.spec = {**rollout.spec, "guards": {"guards": guards}}
    return fleet


def run(app, live_server, tokens, rollout, rss_factor: float, load_factor: float) -> dict:
    rng = np.random.default_rng(3)
    for cohort, version in (("stable", "1"), ("canary", "2")):
        rss, load = (rss_factor, load_factor) if cohort == "canary" else (1.0, 1.0)
        for i, credential in enumerate(rollout[cohort]):
            device_rss = round(rss * 180 * MIB * rng.lognormal(0, 0.02))  # typical per device: ±2%
            device_load = load * 0.8 * rng.lognormal(0, 0.03)
            post(live_server, credential, window(version, cohort, rollout["id"], peak_rss_bytes=device_rss,
                                                 load_seconds=device_load))
            if i % 2:  # a second window without the values: absent is not zero
                post(live_server, credential, window(version, cohort, rollout["id"]))
    step_all(app, dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=120))
    return requests.get(f"{live_server}/v1/rollouts/{rollout['id']}", headers=auth(tokens["admin"]),
                        timeout=30).json()


def guard_stats(status: dict, name: str) -> dict:
    verdict = next(v for v in status["verdicts"] if v["guard"] == name)
    return {**verdict["stats"]["pooled"], "outcome": verdict["outcome"], "reason": verdict["reason"]}


def test_a_canary_using_half_again_the_memory_is_rolled_back(app, live_server, tokens, memory_rollout):
    status = run(app, live_server, tokens, memory_rollout, rss_factor=1.5, load_factor=1.0)
    assert status["phase"] == "rolled_back", status["reason"]
    memory = guard_stats(status, "memory")
    # the ratio of geometric means over ~6 canary devices: within 10% (> 4 standard errors)
    assert memory["outcome"] == "fail" and memory["ratio"] == pytest.approx(1.5, rel=0.1)
    assert memory["stable_devices"] == len(memory_rollout["stable"])
    assert "MiB" in memory["reason"]
    assert guard_stats(status, "load_time")["ratio"] == pytest.approx(1.0, rel=0.15)


def test_equal_memory_and_load_times_pass(app, live_server, tokens, memory_rollout):
    status = run(app, live_server, tokens, memory_rollout, rss_factor=1.0, load_factor=1.0)
    assert status["phase"] != "rolled_back", status["reason"]
    assert guard_stats(status, "memory")["outcome"] == "pass"
    assert guard_stats(status, "load_time")["outcome"] == "pass"


def test_a_slow_loading_canary_fails_the_load_time_guard(app, live_server, tokens, memory_rollout):
    status = run(app, live_server, tokens, memory_rollout, rss_factor=1.0, load_factor=3.0)
    load = guard_stats(status, "load_time")
    assert load["outcome"] == "fail" and load["ratio"] == pytest.approx(3.0, rel=0.15), load["reason"]


def test_too_few_devices_hold_and_values_are_per_device():
    guard = Guard(Metric.MEMORY, threshold=1.2)
    stable, canary = ArmWindow(device_peak_rss=(1e8,) * 20), ArmWindow(device_peak_rss=(3e8,) * 3)
    few = check_memory(guard, stable, canary, 0.01)
    assert few.outcome is Outcome.INCONCLUSIVE and "too few devices reporting peak RSS" in few.reason
    # one device reporting a huge load counts once, like any other device
    stable = ArmWindow(device_load_seconds=tuple(np.random.default_rng(1).lognormal(0, 0.1, 30)))
    canary = ArmWindow(device_load_seconds=(*np.random.default_rng(2).lognormal(0, 0.1, 29), 1e4))
    check = check_load_time(Guard(Metric.LOAD_TIME, threshold=1.5), stable, canary, 0.01)
    assert check.outcome is not Outcome.FAIL, check.reason
