"""Canary targeting over the real app (issue 21): devices report attributes at registration and
update them; a rollout's target admits some; the others run the stable release with no rollout
id, and neither their reports nor their presence count in either arm."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import func, select

from edgeship.contract.latency import BUCKET_COUNT
from rollout_server.analysis import RolloutState
from rollout_server.controller import load_measurements
from rollout_server.db import session_scope
from rollout_server.models import Counter, Device, Rollout
from tests.rollout_server.conftest import BOTH_BACKENDS, auth, edgeship, seed_release, variant_entry
from tests.rollout_server.test_rollouts import GUARDS, T0, start_stage_at

STAGES = [{"percent": 50, "min_duration_seconds": 60, "min_samples": 100},
          {"percent": 100, "min_duration_seconds": 0, "min_samples": 0}]
NEW, OLD = {"app_version": "4.10.0", "region": "eu"}, {"app_version": "4.1", "region": "eu"}
PER_DEVICE = 50


def registration(enroll: str, attributes: object = None, device_class: str = "rpi4") -> dict:
    body = {"enrollment_token": enroll, "device_class": device_class, "arch": "aarch64", "os": "Linux",
            "ram_bytes": 4 * 2**30, "runtimes": {"onnxruntime": "1.20.1"}}
    return body if attributes is None else {**body, "attributes": attributes}


def enroll(client, tokens, attributes: dict | None) -> tuple[str, str]:
    response = client.post("/v1/devices/register", json=registration(tokens["enroll"], attributes))
    assert response.status_code == 201, response.json
    return response.json["device_id"], response.json["credential"]


def assignment(client, device: tuple[str, str]) -> dict:
    response = client.get(f"/v1/devices/{device[0]}/assignment?model=digits-cnn", headers=auth(device[1]))
    assert response.status_code == 200, response.json
    return response.json


def report(client, device: tuple[str, str], body: dict, end: dt.datetime, **claims):
    """One window of ``PER_DEVICE`` inferences as the assignment ``body`` says (``claims``
    override its rollout id or cohort)."""
    item = {"id": str(uuid.uuid4()), "model": "digits-cnn", "version": body["version"],
            "variant": body["variant"]["id"], "rollout_id": body["rollout_id"], "cohort": body["cohort"],
            "window_start": (end - dt.timedelta(seconds=30)).isoformat(), "window_end": end.isoformat(),
            "inferences": PER_DEVICE, "latency_counts": [PER_DEVICE] + [0] * (BUCKET_COUNT - 1), **claims}
    return client.post("/v1/reports", json={"reports": [item]}, headers=auth(device[1]))


def put_attributes(client, device: tuple[str, str], attributes: object):
    return client.put(f"/v1/devices/{device[0]}/attributes", json={"attributes": attributes},
                      headers=auth(device[1]))


def stored_attributes(app, device_id: str) -> dict | None:
    with session_scope(app) as session:
        return session.get(Device, device_id).attributes


# -- attributes ------------------------------------------------------------------------------------


def test_registration_stores_attributes_and_they_are_optional(app, client, tokens):
    with_them = enroll(client, tokens, {"app_version": "4.2.1", "os_version": "14", "beta": ""})
    without = enroll(client, tokens, None)
    assert stored_attributes(app, with_them[0]) == {"app_version": "4.2.1", "os_version": "14", "beta": ""}
    assert stored_attributes(app, without[0]) is None


@pytest.mark.parametrize("attributes, fragment", [
    ("4.2", "must be an object"),
    ({f"tag{i}": "x" for i in range(33)}, "at most 32"),
    ({"App-Version": "4.2"}, "lowercase letter"),
    ({"app_version": 4.2}, "must be a string"),
    ({"note": "x" * 129}, "at most 128"),
    ({"device_class": "android"}, "server's record"),
])
def test_bad_attributes_are_a_400_and_enroll_nothing(app, client, tokens, attributes, fragment):
    response = client.post("/v1/devices/register", json=registration(tokens["enroll"], attributes))
    assert response.status_code == 400 and response.json["error"] == "bad_request", response.json
    assert "'attributes'" in response.json["detail"] and fragment in response.json["detail"]
    with session_scope(app) as session:
        assert session.scalar(select(func.count()).select_from(Device)) == 0


def test_a_device_replaces_its_attributes_and_only_its_own(app, client, tokens):
    device, other = enroll(client, tokens, OLD), enroll(client, tokens, None)
    updated = put_attributes(client, device, {"app_version": "4.2", "region": "us"})
    assert updated.status_code == 200, updated.json
    assert updated.json == {"device_id": device[0], "attributes": {"app_version": "4.2", "region": "us"}}
    assert stored_attributes(app, device[0]) == {"app_version": "4.2", "region": "us"}
    bad = put_attributes(client, device, {"region": ["eu"]})
    assert bad.status_code == 400 and "'attributes'" in bad.json["detail"]
    missing = client.put(f"/v1/devices/{device[0]}/attributes", json={}, headers=auth(device[1]))
    assert missing.status_code == 400 and "'attributes' is required" in missing.json["detail"]
    foreign = client.put(f"/v1/devices/{other[0]}/attributes", json={"attributes": {}},
                         headers=auth(device[1]))
    assert foreign.status_code == 403
    assert stored_attributes(app, device[0]) == {"app_version": "4.2", "region": "us"}
    assert stored_attributes(app, other[0]) is None


# -- a targeted rollout ----------------------------------------------------------------------------


@pytest.fixture
def releases(app):
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])


def create(client, tokens, **extra):
    body = {"model": "digits-cnn", "candidate_version": "2", "stages": STAGES, "guards": GUARDS, **extra}
    return client.post("/v1/rollouts", json=body, headers=auth(tokens["admin"]))


def refused_not_in_rollout(app) -> int:
    with session_scope(app) as session:
        return session.scalar(select(Counter.value).where(Counter.name == "reports_refused_not_in_rollout"))


@BOTH_BACKENDS
def test_devices_the_target_leaves_out_run_stable_and_count_in_neither_arm(app, client, tokens, releases):
    admitted = [enroll(client, tokens, NEW) for _ in range(30)]
    left_out = [enroll(client, tokens, OLD) for _ in range(10)] + [enroll(client, tokens, None)
                                                                    for _ in range(5)]
    created = create(client, tokens, shadow=True,
                     target=[{"attribute": "app_version", "op": ">=", "value": "4.2"}])
    assert created.status_code == 201, created.json
    rollout_id = created.json["id"]
    assert created.json["spec"]["target"] == [{"attribute": "app_version", "op": ">=", "value": "4.2"}]
    start_stage_at(app, rollout_id, T0)

    bodies = {device: assignment(client, device) for device in admitted + left_out}
    for device in left_out:
        body = bodies[device]
        assert (body["version"], body["cohort"], body["rollout_id"]) == ("1", "stable", None)
        assert "shadow" not in body  # a shadow's agreement would count for the rollout too
    admitted_cohorts = {bodies[device]["cohort"] for device in admitted}
    assert admitted_cohorts == {"canary", "stable"}  # 30 devices at 50%: both arms, but 1 run in 2**29
    assert all(bodies[device]["rollout_id"] == rollout_id for device in admitted)
    canary = sum(bodies[device]["cohort"] == "canary" for device in admitted)
    status = client.get(f"/v1/rollouts/{rollout_id}", headers=auth(tokens["admin"])).json
    assert status["devices"] == {"canary": canary, "stable": len(admitted) - canary}

    end = T0 + dt.timedelta(seconds=60)
    for device in admitted + left_out:  # every device reports what it was told
        response = report(client, device, bodies[device], end)
        assert response.status_code == 200, response.json
    # a left-out device claiming the rollout is refused: its reports count nowhere for it
    before = refused_not_in_rollout(app)
    claimed = report(client, left_out[0], bodies[left_out[0]], end, rollout_id=rollout_id)
    assert claimed.status_code == 422 and claimed.json["error"] == "not_in_rollout", claimed.json
    assert refused_not_in_rollout(app) == before + 1

    with session_scope(app) as session:
        rollout = session.get(Rollout, rollout_id)
        measured = load_measurements(session, rollout, RolloutState.from_dict(rollout.state))
    assert measured.canary.devices_reporting == canary
    assert measured.stable.devices_reporting == len(admitted) - canary
    assert measured.canary.inferences + measured.stable.inferences == PER_DEVICE * len(admitted)


def test_an_attribute_update_moves_a_device_into_or_out_of_the_target(app, client, tokens, releases):
    old, new = enroll(client, tokens, OLD), enroll(client, tokens, NEW)
    target = [{"attribute": "app_version", "op": ">=", "value": "4.2"},
              {"attribute": "region", "op": "in", "value": ["eu"]}]
    rollout_id = create(client, tokens, target=target).json["id"]
    assert assignment(client, old)["rollout_id"] is None
    assert assignment(client, new)["rollout_id"] == rollout_id

    assert put_attributes(client, old, {"app_version": "4.2", "region": "eu"}).status_code == 200
    assert assignment(client, old)["rollout_id"] == rollout_id  # this process sees its own write at once
    assert put_attributes(client, new, {"app_version": "4.10", "region": "us"}).status_code == 200
    moved_out = assignment(client, new)
    assert (moved_out["version"], moved_out["cohort"], moved_out["rollout_id"]) == ("1", "stable", None)
    late = report(client, new, moved_out, dt.datetime.now(dt.timezone.utc), rollout_id=rollout_id)
    assert late.status_code == 422 and late.json["error"] == "not_in_rollout"


def test_the_device_class_is_a_target_attribute_the_device_cannot_claim(client, tokens, releases):
    phone = client.post("/v1/devices/register", json=registration(tokens["enroll"], {}, "android")).json
    board = enroll(client, tokens, {"app_version": "5"})
    rollout_id = create(client, tokens, target=[{"attribute": "device_class", "op": "==",
                                                 "value": "android"}]).json["id"]
    assert assignment(client, (phone["device_id"], phone["credential"]))["rollout_id"] == rollout_id
    assert assignment(client, board)["rollout_id"] is None


@pytest.mark.parametrize("target, fragment", [
    ({"attribute": "app_version"}, "must be a list"),
    ([{"attribute": "app_version", "op": ">=", "value": "four"}], "dotted numeric versions"),
    ([{"attribute": "region", "op": "like", "value": "e%"}], "'op' must be one of"),
    ([{"attribute": "region", "op": "in", "value": "eu"}], "needs a list"),
    ([{"attribute": "Region", "op": "==", "value": "eu"}], "lowercase letter"),
])
def test_a_malformed_target_is_a_400_with_its_reason(app, client, tokens, releases, target, fragment):
    response = create(client, tokens, target=target)
    assert response.status_code == 400 and response.json["error"] == "bad_request", response.json
    assert "'target'" in response.json["detail"] and fragment in response.json["detail"]
    with session_scope(app) as session:
        assert session.scalar(select(func.count()).select_from(Rollout)) == 0


def test_the_cli_starts_a_targeted_rollout(app, live_server, tokens, releases):
    admin = tokens["admin"]
    started = edgeship("rollout", "start", "digits-cnn", "2", "--target", "app_version>=4.2",
                       "--target", "region in eu,us", "--server", live_server, token=admin)
    assert started.returncode == 0, started.stderr
    assert "target: app_version >= 4.2 and region in eu,us" in started.stdout
    with session_scope(app) as session:
        spec = session.scalar(select(Rollout.spec))
    assert spec["target"] == [{"attribute": "app_version", "op": ">=", "value": "4.2"},
                              {"attribute": "region", "op": "in", "value": ["eu", "us"]}]
    bad = edgeship("rollout", "start", "digits-cnn", "2", "--target", "app_version>=beta",
                   "--server", live_server, token=admin)
    assert bad.returncode != 0 and "--target" in bad.stderr and "dotted numeric" in bad.stderr
