"""Report ingestion's fast path: the same rows as the field-by-field checks, all or none stored,
each id at most once per device (also under concurrent retries)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from rollout_server.api import reports as ingest
from rollout_server.db import session_scope
from rollout_server.hot_cache import DeviceSnapshot
from rollout_server.models import Report
from tests.rollout_server.conftest import auth, register, seed_release, variant_entry
from tests.rollout_server.test_devices_and_reports import report


@pytest.fixture
def stable_release(app):
    return seed_release(app, "1", [variant_entry("tflite-int8", "litert", 0.4, "b" * 64)], stable=True)


def _rows(app, device_id: str) -> list[tuple]:
    with session_scope(app) as session:
        return session.execute(select(Report.report_id, Report.window_start, Report.received_at)
                               .where(Report.device_id == device_id).order_by(Report.report_id)).all()


def _known(app, client, tokens) -> tuple[dict, DeviceSnapshot]:
    """Fill the app's known ids through one report, and the device the rows are for."""
    device_id, credential = register(client, tokens["enroll"])
    response = client.post("/v1/reports", json={"reports": [report()]}, headers=auth(credential))
    assert response.status_code == 200
    device = DeviceSnapshot(device_id, "rpi4", 4 * 2**30, {}, False, None, ())
    return app.extensions["edgeship.known_ids"], device


@pytest.mark.parametrize("overrides", [
    {},
    {"window_start": "2026-01-01T00:00:00Z", "window_end": "2026-01-01T00:00:30Z"},
    {"window_start": "2026-01-01T00:00:00", "window_end": "2026-01-01T02:00:30+02:00"},
    {"errors": None, "labelled": None, "correct": None, "latency_sum_seconds": 3},
    {"errors": {}, "shadow_samples": 5, "shadow_agree": 5, "peak_rss_bytes": 0, "dropped_windows": 7},
    {"peak_rss_bytes": 123456, "cohort": "canary", "rollout_id": None, "unknown_field": [1]},
])
def test_the_fast_path_builds_the_rows_the_checks_build(app, client, tokens, stable_release, overrides):
    known, device = _known(app, client, tokens)
    data = report("same", **overrides)
    with app.test_request_context():
        fast = ingest._fast_row(data, device, known)
        slow = ingest._parse(data, 0, device)
    assert fast is not None and fast == slow
    assert [type(v) for v in fast] == [type(v) for v in slow]


@pytest.mark.parametrize("overrides", [
    {"id": ""}, {"id": 5}, {"id": "x" * 65}, {"variant": None}, {"cohort": "beta"}, {"cohort": ["stable"]},
    {"model": "unknown-model"}, {"model": ["digits-cnn"]}, {"version": {"v": 1}}, {"version": "9"},
    {"rollout_id": 1}, {"rollout_id": True}, {"window_start": "yesterday"}, {"window_end": 5},
    {"window_end": "2000-01-01T00:00:00Z"}, {"errors": {"meltdown": 1}}, {"errors": {"timeout": -1}},
    {"errors": {"timeout": True}}, {"errors": []}, {"latency_counts": [1, 2]},
    {"latency_counts": [True] * 15}, {"latency_counts": [1.0] * 15}, {"latency_counts": [-1] + [0] * 14},
    {"inferences": "many"}, {"inferences": 1}, {"inferences": 10**13}, {"latency_sum_seconds": True},
    {"latency_sum_seconds": float("nan")}, {"latency_sum_seconds": -1}, {"correct": 50},
    {"shadow_agree": 1}, {"labelled": 1.5}, {"dropped_windows": 10**6 + 1}, {"peak_rss_bytes": False},
])
def test_the_fast_path_leaves_anything_doubtful_to_the_checks(app, client, tokens, stable_release, overrides):
    known, device = _known(app, client, tokens)
    with app.test_request_context():
        assert ingest._fast_row(report("doubtful", **overrides), device, known) is None
    assert ingest._fast_row(["not", "an", "object"], device, known) is None


def test_the_writer_stores_all_rows_or_none(app, client, tokens, stable_release):
    known, device = _known(app, client, tokens)
    with app.test_request_context():
        rows = [ingest._fast_row(report(f"w-{i}"), device, known) for i in range(3)]
        writer = ingest._writer(app)
        writer.insert(rows[:1])
        with pytest.raises(IntegrityError):
            writer.insert(rows[1:] + rows[:1])  # the last row repeats a stored id
    stored = _rows(app, device.id)
    assert [r.report_id for r in stored if r.report_id.startswith("w-")] == ["w-0"]
    assert all(r.received_at is not None for r in stored)


def test_a_retried_batch_is_stored_once_and_answered_as_duplicates(client, tokens, stable_release, app):
    device_id, credential = register(client, tokens["enroll"])
    batch = {"reports": [report(f"b-{i}") for i in range(10)]}
    first = client.post("/v1/reports", json=batch, headers=auth(credential))
    assert first.status_code == 200
    assert first.json == {"accepted": [f"b-{i}" for i in range(10)], "duplicates": []}
    again = client.post("/v1/reports", json=batch, headers=auth(credential))
    assert again.json == {"accepted": [], "duplicates": sorted(f"b-{i}" for i in range(10))}
    # another device may use the same ids: ids are per device
    _, other = register(client, tokens["enroll"])
    assert client.post("/v1/reports", json=batch, headers=auth(other)).json["duplicates"] == []
    assert len(_rows(app, device_id)) == 10


def test_concurrent_retries_store_each_id_once(live_server, app, tokens, stable_release):
    import requests

    client = app.test_client()
    device_id, credential = register(client, tokens["enroll"])
    batches = [{"reports": [report(f"c-{i}") for i in range(k, k + 5)]} for k in range(0, 20, 5)]
    answers: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def post(batch: dict) -> None:
        response = requests.post(f"{live_server}/v1/reports", json=batch, headers=auth(credential),
                                 timeout=30)
        with lock:
            answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=post, args=(batch,)) for batch in batches * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(status in (200, 409) for status, _ in answers), answers
    accepted = [i for status, body in answers if status == 200 for i in body["accepted"]]
    assert sorted(accepted) == sorted(f"c-{i}" for i in range(20))  # each id accepted exactly once
    with session_scope(app) as session:
        assert session.scalar(select(func.count()).select_from(Report)
                              .where(Report.device_id == device_id)) == 20


def test_report_times_are_stored_as_before(client, tokens, stable_release, app):
    device_id, credential = register(client, tokens["enroll"])
    body = report("t-1", window_start="2026-01-01T00:00:00Z", window_end="2026-01-01T00:00:30Z")
    assert client.post("/v1/reports", json={"reports": [body]}, headers=auth(credential)).status_code == 200
    (row,) = _rows(app, device_id)
    assert row.window_start.replace(tzinfo=None) == dt.datetime(2026, 1, 1)


def test_a_dead_idle_postgresql_connection_is_replaced_at_checkout(pg_url, monkeypatch):
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from rollout_server import db as dbmod

    engine, admin = dbmod.make_engine(pg_url), create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            pid = connection.scalar(text("SELECT pg_backend_pid()"))
        with admin.connect() as connection:  # the pooled connection dies while idle (a restart, a timeout)
            assert connection.scalar(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
        monkeypatch.setattr(dbmod, "PING_IDLE_SECONDS", -1.0)  # every pooled connection counts as idle
        with engine.connect() as connection:
            assert connection.scalar(text("SELECT pg_backend_pid()")) != pid
    finally:
        engine.dispose()
        admin.dispose()


def test_a_group_with_a_stored_id_fails_only_that_batch(app, client, tokens, stable_release):
    known, device = _known(app, client, tokens)
    with app.test_request_context():
        writer = ingest._writer(app)
        rows = {i: writer._params([ingest._fast_row(report(f"g-{i}"), device, known)]) for i in range(4)}
        writer.insert([ingest._fast_row(report("g-1"), device, known)])
        group = [ingest._Pending(rows[0]), ingest._Pending(rows[1] + rows[3]), ingest._Pending(rows[2])]
        writer._write_group(group)
    assert all(entry.done for entry in group)
    assert group[0].error is None and group[2].error is None
    assert isinstance(group[1].error, IntegrityError)
    stored = [r.report_id for r in _rows(app, device.id) if r.report_id.startswith("g-")]
    assert stored == ["g-0", "g-1", "g-2"]


def test_concurrent_writers_each_get_their_own_outcome(app, client, tokens, stable_release):
    known, device = _known(app, client, tokens)
    with app.test_request_context():
        writer = ingest._writer(app)
        batches = [[ingest._fast_row(report(f"p-{i}-{k}"), device, known) for k in range(3)]
                   for i in range(40)]
    batches.append(batches[0])  # a retry of the first batch, racing it
    outcomes: list[str] = []

    def write(batch) -> None:
        try:
            writer.insert(batch)
            outcomes.append("ok")
        except IntegrityError:
            outcomes.append("stored before")

    threads = [threading.Thread(target=write, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["ok"] * 40 + ["stored before"]
    assert len([r for r in _rows(app, device.id) if r.report_id.startswith("p-")]) == 120
    assert not writer._leading and not writer._pending
