from __future__ import annotations

import datetime as dt
import uuid

import pytest

from edgeship.contract.latency import BUCKET_COUNT
from tests.rollout_server.conftest import auth, register, seed_release, variant_entry

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def stable_release(app):
    return seed_release(app, "1", [
        variant_entry("onnx-fp32", "onnxruntime", 1.0, SHA_A),
        variant_entry("tflite-int8", "litert", 0.4, SHA_B),
        variant_entry("coreml-fp16", "coreml", 0.1, SHA_C, validation="not_validated"),
    ], stable=True)


def test_register_needs_a_valid_enrollment_token(client, tokens):
    body = {"enrollment_token": "nope", "device_class": "rpi4", "arch": "aarch64", "os": "x",
            "ram_bytes": 1, "runtimes": {}}
    assert client.post("/v1/devices/register", json=body).status_code == 401
    body["enrollment_token"] = tokens["admin"]  # an operator token cannot enroll devices
    assert client.post("/v1/devices/register", json=body).status_code == 401


def test_secrets_never_read_as_command_line_options():
    """token_urlsafe starts with "-" once in 64 draws; ``--token -x...`` would then be an option."""
    import argparse

    from rollout_server.auth import new_secret

    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    for _ in range(2000):
        secret = new_secret()
        assert not secret.startswith("-") and len(secret) >= 43
        assert parser.parse_args(["--token", secret]).token == secret


@pytest.mark.parametrize("patch, fragment", [
    ({"device_class": "Raspberry Pi!"}, "device_class"),
    ({"ram_bytes": -1}, "ram_bytes"),
    ({"ram_bytes": True}, "ram_bytes"),
    ({"runtimes": {"onnxruntime": 1}}, "runtimes"),
    ({"arch": None}, "arch"),
])
def test_register_refuses_bad_fields_with_a_reason(client, tokens, patch, fragment):
    body = {"enrollment_token": tokens["enroll"], "device_class": "rpi4", "arch": "aarch64",
            "os": "x", "ram_bytes": 1, "runtimes": {}, **patch}
    response = client.post("/v1/devices/register", json=body)
    assert response.status_code == 400 and fragment in response.json["detail"]


def test_malformed_json_is_a_400_with_a_json_reason(client):
    response = client.post("/v1/devices/register", data="{not json", content_type="application/json")
    assert response.status_code == 400 and response.json["error"] == "bad_request"


def test_assignment_picks_the_fastest_variant_the_device_can_run(client, tokens, stable_release):
    device, credential = register(client, tokens["enroll"])
    response = client.get(f"/v1/devices/{device}/assignment?model=digits-cnn", headers=auth(credential))
    assert response.status_code == 200
    body = response.json
    assert (body["cohort"], body["version"], body["variant"]["id"]) == ("stable", "1", "tflite-int8")
    assert body["artifact_url"] == f"/v1/artifacts/{SHA_B}"
    # the same answer again is a cheap 304
    again = client.get(f"/v1/devices/{device}/assignment?model=digits-cnn",
                       headers={**auth(credential), "If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


def test_assignment_respects_runtimes_and_falls_back_to_not_validated(client, tokens, stable_release):
    onnx_only, cred = register(client, tokens["enroll"], runtimes={"onnxruntime": "1.20.1"})
    body = client.get(f"/v1/devices/{onnx_only}/assignment?model=digits-cnn", headers=auth(cred)).json
    assert body["variant"]["id"] == "onnx-fp32"
    phone, cred = register(client, tokens["enroll"], device_class="ios", runtimes={"coreml": "8.0"})
    body = client.get(f"/v1/devices/{phone}/assignment?model=digits-cnn", headers=auth(cred)).json
    assert (body["variant"]["id"], body["variant"]["validation"]) == ("coreml-fp16", "not_validated")
    nothing, cred = register(client, tokens["enroll"], runtimes={"tvm": "0.1"})
    response = client.get(f"/v1/devices/{nothing}/assignment?model=digits-cnn", headers=auth(cred))
    assert response.status_code == 409 and response.json["error"] == "no_variant"


def test_a_device_reads_only_its_own_assignment(client, tokens, stable_release):
    first, own_credential = register(client, tokens["enroll"])
    _, other_credential = register(client, tokens["enroll"])
    response = client.get(f"/v1/devices/{first}/assignment?model=digits-cnn", headers=auth(other_credential))
    assert response.status_code == 403
    assert client.get(f"/v1/devices/{first}/assignment?model=digits-cnn").status_code == 401
    bad = client.get(f"/v1/devices/{first}/assignment?model=Bad Name", headers=auth(own_credential))
    assert bad.status_code == 400 and "model" in bad.json["detail"]


def report(report_id: str | None = None, **overrides) -> dict:
    now = dt.datetime.now(dt.timezone.utc)
    latency = [0] * BUCKET_COUNT
    latency[2] = 90
    body = {"id": report_id or str(uuid.uuid4()), "model": "digits-cnn", "version": "1",
            "variant": "tflite-int8", "cohort": "stable",
            "window_start": (now - dt.timedelta(seconds=30)).isoformat(), "window_end": now.isoformat(),
            "inferences": 100, "errors": {"runtime_error": 2}, "latency_counts": latency,
            "labelled": 20, "correct": 19, "latency_sum_seconds": 0.45}
    body.update(overrides)
    return body


def test_reports_are_accepted_once(client, tokens, stable_release, app):
    _, credential = register(client, tokens["enroll"])
    first = report("r-1")
    response = client.post("/v1/reports", json={"reports": [first, report("r-2")]}, headers=auth(credential))
    assert response.status_code == 200 and response.json["accepted"] == ["r-1", "r-2"]
    replay = client.post("/v1/reports", json={"reports": [first, report("r-3")]}, headers=auth(credential))
    assert replay.json == {"accepted": ["r-3"], "duplicates": ["r-1"]}
    from rollout_server.db import session_scope
    from rollout_server.models import Report

    with session_scope(app) as session:
        assert session.query(Report).count() == 3


@pytest.mark.parametrize("patch, fragment", [
    ({"latency_counts": [1, 2]}, "latency_counts"),
    ({"errors": {"meltdown": 1}}, "unknown reasons"),
    ({"correct": 50}, "correct must not exceed"),
    ({"inferences": "many"}, "inferences"),
    ({"cohort": "beta"}, "cohort"),
    ({"version": "9"}, "no release"),
    ({"window_end": "yesterday"}, "ISO 8601"),
])
def test_a_bad_report_rejects_the_whole_batch(client, tokens, stable_release, app, patch, fragment):
    _, credential = register(client, tokens["enroll"])
    response = client.post("/v1/reports", json={"reports": [report(), report(**patch)]},
                           headers=auth(credential))
    assert response.status_code == 400 and fragment in response.json["detail"]
    assert response.json["detail"].startswith("reports[1]")
    from rollout_server.db import session_scope
    from rollout_server.models import Report

    with session_scope(app) as session:
        assert session.query(Report).count() == 0  # nothing half-stored


def test_oversize_report_body_is_refused(client, tokens, stable_release, app):
    _, credential = register(client, tokens["enroll"])
    app.config["MAX_REPORT_BYTES"] = 2000
    response = client.post("/v1/reports", json={"reports": [report() for _ in range(20)]},
                           headers=auth(credential))
    assert response.status_code == 413 and response.json["error"] == "payload_too_large"


def test_revoked_device_cannot_report(client, tokens, stable_release):
    device, credential = register(client, tokens["enroll"])
    assert client.post(f"/v1/devices/{device}/revoke", headers=auth(tokens["admin"])).status_code == 200
    response = client.post("/v1/reports", json={"reports": [report()]}, headers=auth(credential))
    assert response.status_code == 401
