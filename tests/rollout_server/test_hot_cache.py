"""The per-process assignment cache: own writes seen at once, other processes' within the TTL.

"Another process" is a second app on the same SQLite file: each app has its own cache, exactly as
two server workers or two replicas do. Its clock is a fake one, so the TTL is exact.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import event, select

from rollout_server import hot_cache
from rollout_server.analysis import RolloutState, abort
from rollout_server.app import create_app
from rollout_server.controller import apply_decision
from rollout_server.db import session_scope
from rollout_server.models import Device, Rollout
from tests.rollout_server.conftest import auth, register, seed_release, variant_entry
from tests.rollout_server.test_rollouts import create

ALL_CANARY = [{"percent": 99.99, "min_duration_seconds": 0, "min_samples": 0}, {"percent": 100}]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def releases(app):
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])


@pytest.fixture
def device(client, tokens, releases):
    return register(client, tokens["enroll"])


def poll(client, device, **headers):
    device_id, credential = device
    return client.get(f"/v1/devices/{device_id}/assignment?model=digits-cnn",
                      headers={**auth(credential), **headers})


def count_model_reads(app) -> list[int]:
    """A one-item list counting the cache's model reads (its only join of models and rollouts)."""
    reads = [0]

    @event.listens_for(app.extensions["edgeship.engine"], "before_cursor_execute")
    def _count(_conn, _cursor, statement, *_args):
        if "LEFT OUTER JOIN rollouts" in statement:
            reads[0] += 1

    return reads


def second_app(app, ttl_seconds: float, clock: FakeClock | None = None):
    """Another process on the same database: its own app, so its own cache."""
    other = create_app({"DATA_DIR": app.config["DATA_DIR"], "CONTROLLER_ENABLED": False,
                        "ASSIGNMENT_CACHE_SECONDS": ttl_seconds})
    if clock is not None:
        hot_cache.of(other).clock = clock
    return other


# -- this process sees its own writes at once ----------------------------------------------------


def test_a_warm_poll_reads_nothing_from_the_database(app, client, device):
    statements: list[str] = []
    event.listen(app.extensions["edgeship.engine"], "before_cursor_execute",
                 lambda _c, _cur, statement, *_a: statements.append(statement))
    assert poll(client, device).status_code == 200  # fills the cache, writes last_seen_at
    statements.clear()
    first = poll(client, device)
    again = poll(client, device, **{"If-None-Match": first.headers["ETag"]})
    assert first.status_code == 200 and again.status_code == 304
    assert statements == []


def test_set_stable_is_seen_at_once(client, tokens, device):
    before = poll(client, device)
    assert before.json["version"] == "1"
    answer = client.post("/v1/models/digits-cnn/stable", json={"version": "2"}, headers=auth(tokens["admin"]))
    assert answer.status_code == 200
    after = poll(client, device, **{"If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200 and after.json["version"] == "2"  # not a 304 of the old one


def test_rollout_create_promote_and_abort_are_seen_at_once(client, tokens, device):
    admin = auth(tokens["admin"])
    assert poll(client, device).json["rollout_id"] is None
    rollout_id = create(client, tokens, stages=ALL_CANARY).json["id"]
    canary = poll(client, device).json
    assert canary["rollout_id"] == rollout_id and canary["version"] == "2" and canary["cohort"] == "canary"
    assert client.post(f"/v1/rollouts/{rollout_id}/promote", headers=admin).json["phase"] == "promoted"
    promoted = poll(client, device).json
    assert promoted["rollout_id"] is None and promoted["version"] == "2" and promoted["cohort"] == "stable"
    client.post("/v1/models/digits-cnn/stable", json={"version": "1"}, headers=admin)
    rollout_id = create(client, tokens, stages=ALL_CANARY).json["id"]
    assert poll(client, device).json["version"] == "2"
    assert client.post(f"/v1/rollouts/{rollout_id}/abort", headers=admin).json["phase"] == "aborted"
    aborted = poll(client, device).json
    assert aborted["version"] == "1" and aborted["rollout_id"] is None and aborted["cohort"] == "stable"


def test_pause_and_resume_drop_the_cached_rollout(app, client, tokens, device):
    admin = auth(tokens["admin"])
    rollout_id = create(client, tokens, stages=ALL_CANARY).json["id"]
    reads = count_model_reads(app)
    canary = poll(client, device).json
    poll(client, device)
    assert reads[0] == 1  # read once, then cached
    assert client.post(f"/v1/rollouts/{rollout_id}/pause", headers=admin).json["phase"] == "paused"
    assert poll(client, device).json == canary  # a paused rollout keeps its devices where they are
    assert reads[0] == 2
    assert client.post(f"/v1/rollouts/{rollout_id}/resume", headers=admin).json["phase"] == "running"
    assert poll(client, device).json == canary
    assert reads[0] == 3


def test_a_controller_decision_is_seen_at_once(app, client, tokens, device):
    rollout_id = create(client, tokens, stages=ALL_CANARY).json["id"]
    assert poll(client, device).json["cohort"] == "canary"
    now = dt.datetime.now(dt.timezone.utc)
    with session_scope(app) as session:  # what the controller does when a guard fails
        rollout = session.get(Rollout, rollout_id)
        apply_decision(session, rollout, abort(RolloutState.from_dict(rollout.state), now.timestamp(),
                                               reason="guard failed"), "controller", now)
    back = poll(client, device).json
    assert back["version"] == "1" and back["rollout_id"] is None


def test_revocation_is_refused_at_once_and_registration_served_at_once(client, tokens, device, app):
    assert poll(client, device).status_code == 200
    answer = client.post(f"/v1/devices/{device[0]}/revoke", headers=auth(tokens["admin"]))
    assert answer.status_code == 200
    refused = poll(client, device)
    assert refused.status_code == 401 and refused.json["error"] == "device_revoked"
    newcomer = register(client, tokens["enroll"])
    assert poll(client, newcomer).status_code == 200


def test_a_read_that_raced_an_invalidation_is_not_kept(app, client, device):
    """A miss that started before a commit may have read the old row: it is used once, not stored."""
    cache = hot_cache.of(app)
    raced = []

    @event.listens_for(app.extensions["edgeship.engine"], "before_cursor_execute")
    def _commit_meanwhile(_conn, _cursor, statement, *_args):
        if "LEFT OUTER JOIN rollouts" in statement and not raced:
            raced.append(True)
            cache.invalidate()  # as a commit of this process would, while the read runs

    reads = count_model_reads(app)
    poll(client, device)
    poll(client, device)
    assert reads[0] == 2


# -- other processes: within the TTL -------------------------------------------------------------


def test_another_process_sees_a_new_stable_release_after_the_ttl(app, client, tokens, device):
    clock = FakeClock()
    other = second_app(app, ttl_seconds=2.0, clock=clock).test_client()
    assert poll(other, device).json["version"] == "1"
    client.post("/v1/models/digits-cnn/stable", json={"version": "2"}, headers=auth(tokens["admin"]))
    clock.now += 2.0
    assert poll(other, device).json["version"] == "1"  # cached: at most the TTL old
    clock.now += 0.01
    assert poll(other, device).json["version"] == "2"


def test_another_process_sees_a_rollback_after_the_ttl(app, client, tokens, device):
    clock = FakeClock()
    other = second_app(app, ttl_seconds=1.0, clock=clock).test_client()
    rollout_id = create(client, tokens, stages=ALL_CANARY).json["id"]
    assert poll(other, device).json["cohort"] == "canary"
    client.post(f"/v1/rollouts/{rollout_id}/abort", headers=auth(tokens["admin"]))
    assert poll(other, device).json["cohort"] == "canary"
    clock.now += 1.01
    back = poll(other, device).json
    assert back["cohort"] == "stable" and back["version"] == "1"


def test_another_process_refuses_a_revoked_credential_after_the_ttl(app, client, tokens, device):
    clock = FakeClock()
    other = second_app(app, ttl_seconds=1.0, clock=clock).test_client()
    assert poll(other, device).status_code == 200
    client.post(f"/v1/devices/{device[0]}/revoke", headers=auth(tokens["admin"]))
    assert poll(other, device).status_code == 200  # still cached: at most the TTL old
    clock.now += 1.01
    assert poll(other, device).status_code == 401
    assert other.post("/v1/reports", json={"reports": []}, headers=auth(device[1])).status_code == 401


def test_a_device_revoked_through_the_orm_counts_for_other_processes(app, client, device):
    """Any ORM write to a device row (not only the endpoint) moves the counter other processes watch."""
    clock = FakeClock()
    other = second_app(app, ttl_seconds=1.0, clock=clock).test_client()
    assert poll(other, device).status_code == 200
    with session_scope(app) as session:
        session.scalars(select(Device).where(Device.id == device[0])).one().revoked = True
    clock.now += 1.01
    assert poll(other, device).status_code == 401


def test_zero_turns_the_cache_off(app, client, tokens, device):
    other = second_app(app, ttl_seconds=0).test_client()
    assert not hot_cache.of(other.application).enabled
    assert poll(other, device).json["version"] == "1"
    client.post("/v1/models/digits-cnn/stable", json={"version": "2"}, headers=auth(tokens["admin"]))
    assert poll(other, device).json["version"] == "2"
    client.post(f"/v1/devices/{device[0]}/revoke", headers=auth(tokens["admin"]))
    assert poll(other, device).status_code == 401


def test_the_ttl_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESHIP_ASSIGNMENT_CACHE_SECONDS", "0.5")
    configured = create_app({"DATA_DIR": str(tmp_path / "env"), "CONTROLLER_ENABLED": False})
    assert hot_cache.of(configured).ttl_seconds == 0.5


# -- last_seen_at --------------------------------------------------------------------------------


def test_last_seen_is_written_at_most_once_a_minute(app, client, device):
    poll(client, device)
    with session_scope(app) as session:
        first = session.get(Device, device[0]).last_seen_at
    assert first is not None
    poll(client, device)
    with session_scope(app) as session:
        assert session.get(Device, device[0]).last_seen_at == first
    # another process that loads the device sees the recent write and does not write again
    other = second_app(app, ttl_seconds=1.0).test_client()
    poll(other, device)
    with session_scope(app) as session:
        assert session.get(Device, device[0]).last_seen_at == first
