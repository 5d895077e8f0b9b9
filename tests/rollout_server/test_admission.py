"""Device admission (issue 19): enrollment tokens with an expiry, a use limit and a device-class
scope, each refusal with its own reason; devices that wait as ``pending`` until an operator
accepts or rejects them; the operators' device list. Over the real app (and real HTTP for the
concurrent registrations, on SQLite and PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
import requests
from sqlalchemy import func, select

from rollout_server.db import session_scope
from rollout_server.models import AuditEntry, Device, Report, Token
from tests.rollout_server.clocked import FakeClock, clocked_app
from tests.rollout_server.conftest import BOTH_BACKENDS, auth, register, seed_release, variant_entry
from tests.rollout_server.test_devices_and_reports import report

clock = FakeClock.fixture()
app = clocked_app()
MODEL = "digits-cnn"
DEVICE = {"device_class": "rpi4", "arch": "aarch64", "os": "Raspberry Pi OS 12", "ram_bytes": 4 * 2**30,
          "runtimes": {"onnxruntime": "1.20.1"}}


def enroll_token(client, tokens, **policy) -> tuple[int, str]:
    """A new enrollment token with ``policy``: its id and secret."""
    response = client.post("/v1/tokens", json={"name": "batch-7", "role": "enroll", **policy},
                           headers=auth(tokens["admin"]))
    assert response.status_code == 201, response.json
    return response.json["id"], response.json["token"]


def registering(client, token: str, **fields):
    return client.post("/v1/devices/register", json={"enrollment_token": token, **DEVICE, **fields})


def device_count(app) -> int:
    with session_scope(app) as session:
        return session.scalar(select(func.count()).select_from(Device))


def token_row(app, token_id: int) -> Token:
    with session_scope(app) as session:
        return session.get(Token, token_id)


@pytest.fixture
def stable(app):
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)


def poll(client, device_id: str, credential: str):
    return client.get(f"/v1/devices/{device_id}/assignment?model={MODEL}", headers=auth(credential))


# -- enrollment tokens -----------------------------------------------------------------------------


def test_an_expired_enrollment_token_is_refused_with_its_reason(app, client, tokens, clock):
    _, token = enroll_token(client, tokens, expires_in_seconds=3600)
    assert registering(client, token).status_code == 201
    clock.advance(3601)
    refused = registering(client, token)
    assert (refused.status_code, refused.json["error"]) == (401, "enrollment_expired")
    assert "expired" in refused.json["detail"] and device_count(app) == 1
    listed = {t["name"]: t for t in client.get("/v1/tokens", headers=auth(tokens["admin"])).json["tokens"]}
    assert listed["batch-7"]["expired"] is True and listed["batch-7"]["expires_at"]


def test_a_used_up_enrollment_token_is_refused_and_only_registrations_count(app, client, tokens):
    token_id, token = enroll_token(client, tokens, max_uses=2)
    assert registering(client, token, ram_bytes="lots").status_code == 400  # refused: uses nothing
    assert [registering(client, token).status_code for _ in range(2)] == [201, 201]
    refused = registering(client, token)
    assert (refused.status_code, refused.json["error"]) == (401, "enrollment_exhausted")
    assert device_count(app) == 2 and token_row(app, token_id).uses == 2
    listed = {t["id"]: t for t in client.get("/v1/tokens", headers=auth(tokens["admin"])).json["tokens"]}
    assert (listed[token_id]["uses"], listed[token_id]["max_uses"]) == (2, 2)


def test_a_device_class_outside_the_tokens_scope_is_refused(app, client, tokens):
    _, token = enroll_token(client, tokens, device_classes=["rpi4", "rpi5"])
    refused = registering(client, token, device_class="android")
    assert (refused.status_code, refused.json["error"]) == (403, "enrollment_scope")
    assert "rpi4" in refused.json["detail"] and device_count(app) == 0
    assert registering(client, token, device_class="rpi5").status_code == 201


def test_the_first_refusal_of_an_unknown_or_revoked_token_stays_unauthorized(client, tokens):
    token_id, token = enroll_token(client, tokens)
    client.post(f"/v1/tokens/{token_id}/revoke", headers=auth(tokens["admin"]))
    for secret in (token, "es_" + "x" * 43, tokens["admin"]):
        refused = registering(client, secret)
        assert (refused.status_code, refused.json["error"]) == (401, "unauthorized")


@pytest.mark.parametrize("policy", [{"max_uses": 0}, {"device_classes": []}, {"device_classes": ["RPi"]},
                                    {"admission": "later"}, {"expires_in_seconds": 0},
                                    {"expires_in_seconds": True}, {"role": "viewer", "max_uses": 3}])
def test_bad_token_policies_are_refused_with_a_reason(client, tokens, policy):
    response = client.post("/v1/tokens", json={"name": "x", "role": "enroll", **policy},
                           headers=auth(tokens["admin"]))
    assert response.status_code == 400 and response.json["error"] == "bad_request", response.json


@BOTH_BACKENDS
def test_concurrent_registrations_never_take_more_than_the_use_limit(app, live_server, tokens):
    """Sixteen devices register at the same moment over HTTP with a token good for five: five get
    in, eleven are told the token is used up, nothing fails, and the count says five."""
    client = app.test_client()
    token_id, token = enroll_token(client, tokens, max_uses=5)
    barrier = threading.Barrier(16)
    answers: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def register_one() -> None:
        barrier.wait(timeout=30)
        response = requests.post(f"{live_server}/v1/devices/register", timeout=60,
                                 json={"enrollment_token": token, **DEVICE})
        with lock:
            answers.append((response.status_code, response.json().get("error")))

    threads = [threading.Thread(target=register_one) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    expected = [(201, None)] * 5 + [(401, "enrollment_exhausted")] * 11
    assert sorted(answers, key=str) == sorted(expected, key=str)
    assert device_count(app) == 5 and token_row(app, token_id).uses == 5


# -- admission -------------------------------------------------------------------------------------


def test_a_pending_device_gets_no_assignment_and_no_report_is_stored(app, client, tokens, stable):
    _, token = enroll_token(client, tokens, admission="manual")
    answer = registering(client, token)
    assert answer.status_code == 201 and answer.json["state"] == "pending"
    device_id, credential = answer.json["device_id"], answer.json["credential"]
    refused = poll(client, device_id, credential)
    assert (refused.status_code, refused.json["error"]) == (403, "device_pending")
    assert int(refused.headers["Retry-After"]) == app.config["PENDING_RETRY_SECONDS"]
    sent = client.post("/v1/reports", json={"reports": [report()]}, headers=auth(credential))
    assert (sent.status_code, sent.json["error"]) == (403, "device_pending")
    artifact = client.get(f"/v1/artifacts/{'a' * 64}", headers=auth(credential))
    assert (artifact.status_code, artifact.json["error"]) == (403, "device_pending")
    with session_scope(app) as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 0
        assert session.get(Device, device_id).last_seen_at is None  # not seen: in no rollout's counts
    listed = client.get("/v1/devices?state=pending", headers=auth(tokens["admin"])).json["devices"]
    assert [d["device_id"] for d in listed] == [device_id]

    accepted = client.post(f"/v1/devices/{device_id}/accept", headers=auth(tokens["admin"]))
    assert accepted.status_code == 200 and accepted.json["state"] == "active"
    assert poll(client, device_id, credential).json["version"] == "1"
    sent = client.post("/v1/reports", json={"reports": [report()]}, headers=auth(credential))
    assert sent.status_code == 200 and len(sent.json["accepted"]) == 1
    again = client.post(f"/v1/devices/{device_id}/accept", headers=auth(tokens["admin"]))
    assert again.status_code == 200 and again.json["state"] == "active"  # idempotent
    with session_scope(app) as session:
        actions = list(session.scalars(select(AuditEntry.action)
                                       .where(AuditEntry.target == f"device:{device_id}")))
    assert actions == ["device.accept"]


def test_a_rejected_device_is_refused_for_good(app, client, tokens, stable):
    _, token = enroll_token(client, tokens, admission="manual")
    answer = registering(client, token).json
    device_id, credential = answer["device_id"], answer["credential"]
    rejected = client.post(f"/v1/devices/{device_id}/reject", headers=auth(tokens["admin"]))
    assert rejected.status_code == 200 and rejected.json["state"] == "rejected"
    for response in (poll(client, device_id, credential),
                     client.post("/v1/reports", json={"reports": [report()]}, headers=auth(credential)),
                     client.get(f"/v1/artifacts/{'a' * 64}", headers=auth(credential))):
        assert (response.status_code, response.json["error"]) == (401, "device_rejected")
    late = client.post(f"/v1/devices/{device_id}/accept", headers=auth(tokens["admin"]))
    assert late.status_code == 409 and "new enrollment token" in late.json["detail"]
    active_id, _ = register(client, tokens["enroll"])
    wrong = client.post(f"/v1/devices/{active_id}/reject", headers=auth(tokens["admin"]))
    assert wrong.status_code == 409 and "revoke" in wrong.json["detail"]
    assert client.post(f"/v1/devices/{device_id}/reject",
                       headers=auth(tokens["admin"])).json["state"] == "rejected"


def test_the_server_setting_makes_every_new_device_wait_unless_its_token_says_auto(tmp_path, clock):
    from rollout_server.app import create_app
    from tests.rollout_server.conftest import FIXED_DAYS

    manual = create_app({"DATA_DIR": str(tmp_path / "s"), "CONTROLLER_ENABLED": False, "CLOCK": clock,
                         "DEVICE_ADMISSION": "manual", **FIXED_DAYS})
    client = manual.test_client()
    text = (tmp_path / "s" / "first-start-tokens.txt").read_text()
    pairs = dict(line.split("=", 1) for line in text.split())
    tokens = {"admin": pairs["EDGESHIP_ADMIN_TOKEN"], "enroll": pairs["EDGESHIP_ENROLL_TOKEN"]}
    assert registering(client, tokens["enroll"]).json["state"] == "pending"
    _, auto = enroll_token(client, tokens, admission="auto")
    assert registering(client, auto).json["state"] == "active"
    with pytest.raises(ValueError, match="DEVICE_ADMISSION"):
        create_app({"DATA_DIR": str(tmp_path / "t"), "CONTROLLER_ENABLED": False,
                    "DEVICE_ADMISSION": "later"})


def test_operators_list_devices_by_state_class_and_last_poll(app, client, tokens, stable, clock):
    admin = auth(tokens["admin"])
    seen_id, seen_credential = register(client, tokens["enroll"])
    quiet_id, _ = register(client, tokens["enroll"], device_class="rpi5")
    revoked_id, _ = register(client, tokens["enroll"])
    _, manual = enroll_token(client, tokens, admission="manual")
    pending_id = registering(client, manual).json["device_id"]
    client.post(f"/v1/devices/{revoked_id}/revoke", headers=admin)
    assert poll(client, seen_id, seen_credential).status_code == 200

    def ids(query: str) -> list[str]:
        response = client.get(f"/v1/devices{query}", headers=admin)
        assert response.status_code == 200, response.json
        return [d["device_id"] for d in response.json["devices"]]

    assert ids("") == [seen_id, quiet_id, revoked_id, pending_id]
    assert ids("?state=active") == [seen_id, quiet_id]
    assert ids("?state=revoked") == [revoked_id] and ids("?state=pending") == [pending_id]
    assert ids("?device_class=rpi5") == [quiet_id]
    assert ids("?seen_within_seconds=300") == [seen_id]
    assert ids("?state=active&not_seen_for_seconds=300") == [quiet_id]
    assert ids("?limit=2&offset=1") == [quiet_id, revoked_id]
    for bad in ("?state=gone", "?limit=0", "?seen_within_seconds=x", "?device_class=RPi"):
        response = client.get(f"/v1/devices{bad}", headers=admin)
        assert response.status_code == 400 and response.json["error"] == "bad_request", bad
    viewer = client.post("/v1/tokens", json={"name": "v", "role": "viewer"}, headers=admin).json["token"]
    assert client.get("/v1/devices", headers=auth(viewer)).status_code == 200
    assert client.post(f"/v1/devices/{pending_id}/accept", headers=auth(viewer)).status_code == 403
