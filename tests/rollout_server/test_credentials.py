"""Device credential rotation without downtime (docs/protocol.md §2.3): the new credential works
at once; the old one until the new one is first used or the grace ends, here and in other
processes (within the cache TTL); a device that lost the new one asks again with the old one.
The assignment tells a device whose credential is too old to rotate."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from rollout_server import hot_cache
from rollout_server.app import create_app
from rollout_server.db import session_scope
from rollout_server.models import AuditEntry
from tests.rollout_server.clocked import FakeClock, clocked_app
from tests.rollout_server.conftest import FIXED_DAYS, auth, register, seed_release, variant_entry

clock = FakeClock.fixture()
GRACE, MAX_AGE = 3600, 86400
app = clocked_app(CREDENTIAL_GRACE_SECONDS=GRACE, CREDENTIAL_MAX_AGE_SECONDS=MAX_AGE)
ROTATE = "Edgeship-Rotate-Credential"


@pytest.fixture
def device(app, client, tokens) -> tuple[str, str]:
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    return register(client, tokens["enroll"])


def poll(client, device_id: str, credential: str, **headers):
    return client.get(f"/v1/devices/{device_id}/assignment?model=digits-cnn",
                      headers={**auth(credential), **headers})


def rotate(client, device_id: str, credential: str):
    return client.post(f"/v1/devices/{device_id}/credential", headers=auth(credential))


def test_the_new_credential_works_and_the_old_one_until_the_new_one_is_used(app, client, device, clock):
    device_id, old = device
    rotated = rotate(client, device_id, old)
    assert rotated.status_code == 201, rotated.json
    new = rotated.json["credential"]
    until = dt.datetime.fromisoformat(rotated.json["previous_valid_until"])
    assert new != old and until == clock.now + dt.timedelta(seconds=GRACE)
    assert poll(client, device_id, old).status_code == 200  # the answer may have been lost: still valid
    assert poll(client, device_id, new).status_code == 200  # first use of the new one ...
    refused = poll(client, device_id, old)  # ... retires the old one
    assert (refused.status_code, refused.json["error"]) == (401, "unauthorized")
    assert client.post("/v1/reports", json={"reports": []}, headers=auth(old)).status_code == 401
    assert poll(client, device_id, new).status_code == 200
    with session_scope(app) as session:
        actions = list(session.scalars(select(AuditEntry.action)
                                       .where(AuditEntry.target == f"device:{device_id}")))
    assert actions == ["device.credential_rotate"]


def test_an_unused_new_credential_leaves_the_old_one_valid_for_the_grace_only(client, device, clock):
    device_id, old = device
    assert rotate(client, device_id, old).status_code == 201
    clock.advance(GRACE - 1)
    assert poll(client, device_id, old).status_code == 200
    clock.advance(2)
    refused = poll(client, device_id, old)
    assert (refused.status_code, refused.json["error"]) == (401, "unauthorized")


def test_a_device_that_lost_its_new_credential_asks_again_with_the_old_one(client, device, clock):
    device_id, old = device
    lost = rotate(client, device_id, old).json["credential"]  # the agent crashed before storing it
    clock.advance(600)
    again = rotate(client, device_id, old)
    assert again.status_code == 201
    fresh = again.json["credential"]
    assert poll(client, device_id, lost).status_code == 401  # replaced: never usable
    assert poll(client, device_id, old).status_code == 200
    clock.advance(GRACE - 600 + 1)  # the old one keeps the first rotation's grace, no more
    assert poll(client, device_id, old).status_code == 401
    assert poll(client, device_id, fresh).status_code == 200


def test_a_device_rotates_only_its_own_credential(client, tokens, device):
    device_id, credential = device
    other_id, _ = register(client, tokens["enroll"])
    assert rotate(client, other_id, credential).status_code == 403
    assert rotate(client, device_id, tokens["admin"]).status_code == 401
    client.post(f"/v1/devices/{device_id}/revoke", headers=auth(tokens["admin"]))
    refused = rotate(client, device_id, credential)
    assert (refused.status_code, refused.json["error"]) == (401, "device_revoked")


def test_the_assignment_asks_for_a_rotation_once_the_credential_is_old(client, device, clock):
    device_id, old = device
    first = poll(client, device_id, old)
    assert ROTATE not in first.headers
    clock.advance(MAX_AGE + 1)
    stale = poll(client, device_id, old, **{"If-None-Match": first.headers["ETag"]})
    assert stale.status_code == 304 and stale.headers[ROTATE] == "1"  # also on a 304
    new = rotate(client, device_id, old).json["credential"]
    assert ROTATE not in poll(client, device_id, new).headers


def test_another_process_refuses_the_old_credential_within_the_ttl(app, client, device, clock):
    """Two processes (two apps on one database, each with its own cache): the new credential used
    in one retires the old one in the other once the other's cache TTL has passed."""
    device_id, old = device
    ttl_clock = [1_000.0]
    other_app = create_app({"DATA_DIR": app.config["DATA_DIR"], "CONTROLLER_ENABLED": False, "CLOCK": clock,
                            "ASSIGNMENT_CACHE_SECONDS": 1.0, **FIXED_DAYS})
    hot_cache.of(other_app).clock = lambda: ttl_clock[0]
    other = other_app.test_client()
    new = rotate(client, device_id, old).json["credential"]
    assert poll(other, device_id, old).status_code == 200  # cached there now
    assert poll(client, device_id, new).status_code == 200  # retires the old one
    assert poll(other, device_id, old).status_code == 200  # at most the TTL stale
    ttl_clock[0] += 1.01
    assert poll(other, device_id, old).status_code == 401
    assert poll(other, device_id, new).status_code == 200
