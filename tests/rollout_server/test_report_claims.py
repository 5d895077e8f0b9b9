"""A report's claims are checked against the server's own records, over real HTTP.

The two attacks of the issue, replayed: devices bucketed stable posting canary errors to roll a
rollout back, and devices posting clean "canary" windows for a release they never ran; then
windows dated far ahead or long ago, and counts no device can produce.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
import requests

from edgeship.contract.latency import BUCKET_COUNT
from rollout_server.controller import step_all
from tests.rollout_server.conftest import auth, running_rollout, seed_release, variant_entry

STAGES = [{"percent": 10, "min_duration_seconds": 60, "min_samples": 100},
          {"percent": 100, "min_duration_seconds": 0, "min_samples": 0}]
GUARDS = {"guards": [{"metric": "error_rate"}]}
FLEET_SIZE = 60


@pytest.fixture
def rollout(app, live_server, tokens):
    """A running 10% rollout of v2 against v1, and the fleet split by the server's bucketing."""
    return running_rollout(app, live_server, tokens, STAGES, GUARDS, canary=2, stable=FLEET_SIZE - 6)


def window(version: str, cohort: str, rollout_id: int | None, *, end: dt.datetime | None = None,
           seconds: float = 30, inferences: int = 200, errors: int = 0) -> dict:
    end = end or dt.datetime.now(dt.timezone.utc)
    latency = [0] * BUCKET_COUNT
    latency[3] = inferences - errors
    return {"id": str(uuid.uuid4()), "model": "digits-cnn", "version": version,
            "variant": "onnx-int8" if version == "2" else "onnx-fp32", "rollout_id": rollout_id,
            "cohort": cohort, "window_start": (end - dt.timedelta(seconds=seconds)).isoformat(),
            "window_end": end.isoformat(), "inferences": inferences,
            "errors": {"runtime_error": errors}, "latency_counts": latency}


def post(base: str, credential: str, *reports: dict) -> requests.Response:
    return requests.post(f"{base}/v1/reports", json={"reports": list(reports)}, headers=auth(credential),
                         timeout=30)


def refused_count(base: str, reason: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=30).text
    line = next(ln for ln in text.splitlines()
                if ln.startswith("edgeship_reports_refused_total") and f'reason="{reason}"' in ln)
    return float(line.rsplit(" ", 1)[1])


def test_stable_devices_posting_canary_errors_are_refused_and_cannot_roll_back(app, live_server, tokens,
                                                                               rollout):
    for cohort in ("stable", "canary"):  # the honest fleet: clean windows of what it was assigned
        for credential in rollout[cohort]:
            version = "2" if cohort == "canary" else "1"
            assert post(live_server, credential, window(version, cohort, rollout["id"])).status_code == 200
    for credential in rollout["stable"][:2]:  # two enrolled devices, bucketed stable, lie
        for version in ("2", "1"):
            for _ in range(5):
                answer = post(live_server, credential, window(version, "canary", rollout["id"], errors=200))
                assert answer.status_code == 422, answer.text
                assert answer.json()["error"] == "cohort_mismatch"
                assert "reports[0]" in answer.json()["detail"]
    assert refused_count(live_server, "cohort_mismatch") == 20
    step_all(app, dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=120))
    status = requests.get(f"{live_server}/v1/rollouts/{rollout['id']}", headers=auth(tokens["admin"]),
                          timeout=30).json()
    assert status["phase"] != "rolled_back", status["reason"]


def test_clean_canary_windows_for_a_release_a_device_never_ran_are_refused(live_server, rollout):
    for credential in rollout["stable"][:40]:
        answer = post(live_server, credential, window("2", "canary", rollout["id"]))
        assert answer.status_code == 422 and answer.json()["error"] == "cohort_mismatch"
    assert refused_count(live_server, "cohort_mismatch") == 40


def test_what_the_server_assigned_is_accepted(live_server, rollout):
    credential = rollout["canary"][0]
    assert post(live_server, credential, window("2", "canary", rollout["id"])).status_code == 200
    # a canary device that refused the candidate keeps reporting its stable model as stable
    assert post(live_server, credential, window("1", "stable", rollout["id"])).status_code == 200
    credential = rollout["stable"][0]
    assert post(live_server, credential, window("1", "stable", rollout["id"])).status_code == 200
    assert post(live_server, credential, window("1", "stable", None)).status_code == 200


def test_the_candidate_claimed_as_stable_is_refused(live_server, rollout):
    credential = rollout["canary"][0]
    answer = post(live_server, credential, window("2", "stable", rollout["id"]))
    assert answer.status_code == 422 and answer.json()["error"] == "cohort_mismatch"


def test_a_version_outside_the_rollout_is_refused(app, live_server, rollout):
    seed_release(app, "3", [variant_entry("onnx-fp16", "onnxruntime", 0.7, "c" * 64)])
    credential = rollout["canary"][0]
    answer = post(live_server, credential, window("3", "canary", rollout["id"]))
    assert answer.status_code == 422 and answer.json()["error"] == "not_in_rollout"
    assert refused_count(live_server, "not_in_rollout") == 1


@pytest.mark.parametrize("end", [
    dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc),
    dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=15),
])
def test_windows_far_ahead_or_older_than_the_outbox_keeps_are_refused(app, live_server, rollout, end):
    app.config["REPORT_MAX_AGE_SECONDS"] = 14 * 86400
    credential = rollout["stable"][0]
    answer = post(live_server, credential, window("1", "stable", rollout["id"], end=end))
    assert answer.status_code == 422 and answer.json()["error"] == "window_out_of_range"
    recent = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=13)
    assert post(live_server, credential, window("1", "stable", rollout["id"], end=recent)).status_code == 200


def test_counts_no_device_can_produce_are_refused(live_server, rollout):
    credential = rollout["canary"][0]
    forged = window("2", "canary", rollout["id"], seconds=60, inferences=10**12)
    answer = post(live_server, credential, forged)
    assert answer.status_code == 422 and answer.json()["error"] == "count_over_cap"
    # at the cap itself (60 s at 10,000 per second) a window is still believed
    assert post(live_server, credential, window("2", "canary", rollout["id"], seconds=60,
                                                inferences=600_000)).status_code == 200


def test_one_refused_report_refuses_its_whole_batch(live_server, rollout):
    credential = rollout["stable"][0]
    good, bad = window("1", "stable", rollout["id"]), window("2", "canary", rollout["id"])
    answer = post(live_server, credential, good, bad)
    assert answer.status_code == 422 and "reports[1]" in answer.json()["detail"]
    assert post(live_server, credential, good).json()["accepted"] == [good["id"]]


def test_a_chunked_body_over_the_report_limit_is_refused_without_being_stored(app, live_server, rollout):
    credential = rollout["stable"][0]
    big = window("1", "stable", rollout["id"])
    big["variant"] = "x" * 64
    body = json.dumps({"reports": [big], "padding": "y" * (2 * 2**20)}).encode()

    def chunked(data: bytes) -> requests.Response:  # no Content-Length: Transfer-Encoding: chunked
        parts = (data[start:start + 65536] for start in range(0, len(data), 65536))
        return requests.post(f"{live_server}/v1/reports", data=parts, timeout=30,
                             headers={**auth(credential), "Content-Type": "application/json"})

    answer = chunked(body)
    assert answer.status_code == 413 and answer.json()["error"] == "payload_too_large", answer.text
    small = chunked(json.dumps({"reports": [big]}).encode())  # it was not stored before
    assert small.status_code == 200 and small.json()["accepted"] == [big["id"]]
