"""Operator tokens (issue 19): an optional expiry (401 ``token_expired`` after it, by the app's
injected clock), rotation (a new secret, same name, role and policy; the old one revoked or
kept for an overlap), and an admin token that never expires always remains (409 ``last_admin``)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from rollout_server.db import session_scope
from rollout_server.models import AuditEntry
from tests.rollout_server.clocked import FakeClock, clocked_app
from tests.rollout_server.conftest import auth

clock = FakeClock.fixture()
app = clocked_app()


def create(client, admin: str, name: str, role: str, **policy) -> dict:
    response = client.post("/v1/tokens", json={"name": name, "role": role, **policy}, headers=auth(admin))
    assert response.status_code == 201, response.json
    return response.json


def models(client, token: str):
    return client.get("/v1/models", headers=auth(token))


def test_an_expired_operator_token_is_refused_with_its_reason(client, tokens, clock):
    viewer = create(client, tokens["admin"], "dashboard", "viewer", expires_in_seconds=60)
    assert viewer["expires_at"] == (clock.now + dt.timedelta(seconds=60)).isoformat()
    assert models(client, viewer["token"]).status_code == 200
    clock.advance(60)
    refused = models(client, viewer["token"])
    assert (refused.status_code, refused.json["error"]) == (401, "token_expired")
    assert "dashboard" in refused.json["detail"]
    listed = {t["id"]: t for t in client.get("/v1/tokens", headers=auth(tokens["admin"])).json["tokens"]}
    assert listed[viewer["id"]]["expired"] is True and listed[viewer["id"]]["revoked"] is False


def test_rotation_gives_a_new_secret_with_the_same_name_role_and_lifetime(app, client, tokens, clock):
    old = create(client, tokens["admin"], "ci", "publisher", expires_in_seconds=3600)
    clock.advance(600)
    rotated = client.post(f"/v1/tokens/{old['id']}/rotate", headers=auth(tokens["admin"]))
    assert rotated.status_code == 201, rotated.json
    new = rotated.json
    assert (new["name"], new["role"], new["replaced"]) == ("ci", "publisher", old["id"])
    assert new["replaced_until"] is None  # revoked at once
    assert new["token"] != old["token"]
    assert new["expires_at"] == (clock.now + dt.timedelta(seconds=3600)).isoformat()  # the same lifetime
    assert models(client, new["token"]).status_code == 200
    refused = models(client, old["token"])
    assert (refused.status_code, refused.json["error"]) == (401, "unauthorized")
    again = client.post(f"/v1/tokens/{old['id']}/rotate", headers=auth(tokens["admin"]))
    assert again.status_code == 409  # a revoked token is not rotated again
    with session_scope(app) as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "token.rotate")).one()
    assert entry.detail == {"id": old["id"], "new_id": new["id"], "overlap_seconds": 0}


def test_a_rotation_with_an_overlap_keeps_the_old_secret_working_that_long(client, tokens, clock):
    old = create(client, tokens["admin"], "grafana", "viewer")
    new = client.post(f"/v1/tokens/{old['id']}/rotate", json={"overlap_seconds": 300},
                      headers=auth(tokens["admin"])).json
    assert new["expires_at"] is None  # the old one never expired, nor does the new one
    assert new["replaced_until"] == (clock.now + dt.timedelta(seconds=300)).isoformat()
    clock.advance(299)
    assert models(client, old["token"]).status_code == 200
    clock.advance(1)
    assert models(client, old["token"]).json["error"] == "token_expired"
    assert models(client, new["token"]).status_code == 200


def test_an_enrollment_tokens_rotation_keeps_its_policy_and_counts_afresh(client, tokens):
    old = create(client, tokens["admin"], "line-3", "enroll", max_uses=10, device_classes=["rpi4"],
                 admission="manual")
    new = client.post(f"/v1/tokens/{old['id']}/rotate", headers=auth(tokens["admin"])).json
    policy = (new["max_uses"], new["device_classes"], new["admission"], new["uses"])
    assert policy == (10, ["rpi4"], "manual", 0)


def test_an_admin_token_that_never_expires_always_remains(client, tokens):
    first = client.get("/v1/tokens", headers=auth(tokens["admin"])).json["tokens"][0]
    assert first["role"] == "admin"

    def revoke(token_id: int, admin: str):
        return client.post(f"/v1/tokens/{token_id}/revoke", headers=auth(admin))

    refused = revoke(first["id"], tokens["admin"])
    assert (refused.status_code, refused.json["error"]) == (409, "last_admin")
    temporary = create(client, tokens["admin"], "break-glass", "admin", expires_in_seconds=3600)
    assert revoke(first["id"], tokens["admin"]).json["error"] == "last_admin"  # the other one expires
    spare = create(client, tokens["admin"], "spare", "admin")
    assert revoke(first["id"], spare["token"]).status_code == 200
    into_expiring = client.post(f"/v1/tokens/{spare['id']}/rotate", json={"expires_in_seconds": 60},
                                headers=auth(spare["token"]))
    assert (into_expiring.status_code, into_expiring.json["error"]) == (409, "last_admin")
    with_overlap = client.post(f"/v1/tokens/{spare['id']}/rotate", json={"overlap_seconds": 60},
                               headers=auth(temporary["token"]))
    assert with_overlap.status_code == 201  # the new one never expires: still one left
    assert models(client, spare["token"]).status_code == 200  # during its overlap
    assert revoke(with_overlap.json["id"], temporary["token"]).json["error"] == "last_admin"
    assert models(client, with_overlap.json["token"]).status_code == 200  # nothing changed by the 409
