"""Report ingestion's fast path: the same rows as the field-by-field checks, all or none stored,
each id at most once per device (also under concurrent retries)."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import random
import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError

from rollout_server import report_rows, report_writer
from rollout_server.api import reports as ingest
from rollout_server.db import session_scope
from rollout_server.hot_cache import DeviceSnapshot
from rollout_server.models import DEVICE_TOTALS, TOTALLED, Report, ReportTotal
from tests.rollout_server.conftest import BOTH_BACKENDS, auth, register, seed_release, variant_entry
from tests.rollout_server.test_devices_and_reports import report

#: the writer stores differently on each backend (SQLite: executemany + upsert in a transaction;
#: PostgreSQL: one autocommit statement): its tests run on both.
BOTH = BOTH_BACKENDS


@pytest.fixture
def stable_release(app):
    return seed_release(app, "1", [variant_entry("tflite-int8", "litert", 0.4, "b" * 64)], stable=True)


def _rows(app, device_id: str) -> list[tuple]:
    with session_scope(app) as session:
        return session.execute(select(Report.report_id, Report.window_start, Report.received_at)
                               .where(Report.device_id == device_id).order_by(Report.report_id)).all()


def assert_totals_match_reports(app) -> None:
    """``report_totals`` (summed over shards) holds exactly the sums of the stored reports."""
    key = ("model_id", "variant_id", "cohort", "device_class")
    with session_scope(app) as session:
        def sums(table) -> dict:
            count = func.count() if table is Report else func.sum(table.reports)
            rows = session.execute(select(*(getattr(table, k) for k in key), count,
                                          *(func.sum(getattr(table, name)) for name in TOTALLED))
                                   .group_by(*(getattr(table, k) for k in key)))
            return {tuple(row[:4]): [int(v) if isinstance(v, int) else round(v, 9) for v in row[4:]]
                    for row in rows}
        by_reports, by_totals = sums(Report), sums(ReportTotal)
    assert by_reports and by_totals == by_reports


def _pending(writer, rows: list) -> report_writer._Pending:
    return report_writer._Pending(writer._params(rows), report_writer.report_totals(rows))


def _fast_row(data, device: DeviceSnapshot, known: dict) -> tuple | None:
    """The fast path's row for a batch of this one report (None: left to the field checks)."""
    rows = report_rows.fast_rows(json.dumps({"reports": [data]}).encode(), device, known)
    assert rows is None or len(rows) == 1
    return rows[0] if rows else None


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
    {"schema": 2, "latency": {"schema": 5, "buckets": [[-240, 2], [-250, 3]]}, "latency_counts": None,
     "load_seconds": 0.25, "cpu_temp_celsius": 61.5, "throttled": True},
    {"schema": 1, "load_seconds": 1, "cpu_temp_celsius": -3, "throttled": False, "latency": None},
])
def test_the_fast_path_builds_the_rows_the_checks_build(app, client, tokens, stable_release, overrides):
    known, device = _known(app, client, tokens)
    data = report("same", **overrides)
    with app.test_request_context():
        fast = _fast_row(data, device, known)
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
    {"load_seconds": -1}, {"load_seconds": 4000}, {"load_seconds": "1"}, {"cpu_temp_celsius": 200},
    {"throttled": 1}, {"throttled": "yes"}, {"schema": 2}, {"schema": 3}, {"schema": True},
    {"schema": 2, "latency": {"schema": 5, "buckets": [[-250, 1], [-250, 1]]}, "latency_counts": None},
    {"schema": 2, "latency": {"schema": 5, "buckets": [[-250, 1000]]}, "latency_counts": None},
    {"schema": 2, "latency": {"schema": 5, "buckets": [[9999, 1]]}, "latency_counts": None},
    {"latency": {"schema": 5, "buckets": []}},
])
def test_the_fast_path_leaves_anything_doubtful_to_the_checks(app, client, tokens, stable_release, overrides):
    known, device = _known(app, client, tokens)
    with app.test_request_context():
        assert _fast_row(report("doubtful", **overrides), device, known) is None
    assert _fast_row(["not", "an", "object"], device, known) is None


@BOTH
def test_reports_sharing_window_bounds_are_stored_as_each_alone(app, client, tokens, stable_release):
    """A batch's windows mostly share their bounds (parsed and formatted once per batch): each
    report's times are still its own, also when one instant is written in two ways."""
    device_id, credential = register(client, tokens["enroll"])
    bounds = [("2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z"),
              ("2026-01-01T00:00:30+00:00", "2026-01-01T00:01:00.250000Z"),
              ("2026-01-01T02:00:30+02:00", "2026-01-01T00:01:00.25Z"),  # the same instants again
              ("2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z")]
    batch = [report(f"shared-{i}", window_start=start, window_end=end)
             for i, (start, end) in enumerate(bounds)]
    assert client.post("/v1/reports", json={"reports": batch}, headers=auth(credential)).status_code == 200
    with app.test_request_context():
        device = DeviceSnapshot(device_id, "rpi4", 4 * 2**30, {}, False, None, ())
        alone = [ingest._parse(data, 0, device) for data in batch]
    with session_scope(app) as session:
        stored = session.execute(select(Report.window_start, Report.window_end)
                                 .where(Report.device_id == device_id).order_by(Report.report_id)).all()
    columns = report_rows.COLUMNS.index("window_start"), report_rows.COLUMNS.index("window_end")
    expected = [tuple(row[i] for i in columns) for row in alone]
    def utc(times) -> tuple:  # SQLite gives back naive UTC, PostgreSQL aware times
        return tuple(t if t.tzinfo is None else t.astimezone(dt.timezone.utc).replace(tzinfo=None)
                     for t in times)

    assert [utc(row) for row in stored] == [utc(row) for row in expected]
    assert expected[1] == expected[2] and expected[0] == expected[3] and expected[0] != expected[1]


def test_the_fast_path_takes_a_batch_only_when_every_report_is_plain(app, client, tokens, stable_release):
    known, device = _known(app, client, tokens)
    good, bad = report("one"), report("two", inferences="many")
    with app.test_request_context():
        both = json.dumps({"reports": [good, report("two")]}).encode()
        assert [row[0] for row in report_rows.fast_rows(both, device, known)] == ["one", "two"]
        for body in ({"reports": [good, bad]}, {"reports": []}, {"reports": [good] * 101}, {"reports": good},
                     {"batch": [good]}, [good]):
            assert report_rows.fast_rows(json.dumps(body).encode(), device, known) is None, body
        assert report_rows.fast_rows(b'{"reports": [', device, known) is None
        assert report_rows.fast_rows("\u00e9".encode("latin-1"), device, known) is None


def test_the_sqlite_writer_formats_datetimes_as_sqlalchemy_does():
    processor = sqlite.DATETIME().bind_processor(sqlite.dialect())
    assert report_writer._faster(processor) is report_writer._iso_datetime
    rng = random.Random(4)
    for _ in range(2000):
        value = dt.datetime(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                            rng.randint(0, 59), rng.randint(0, 59), rng.choice([0, rng.randint(0, 999_999)]),
                            tzinfo=rng.choice([None, dt.timezone.utc]))
        assert report_writer._iso_datetime(value) == processor(value)
    # another storage format, or a processor of another type, is kept as it is
    other = sqlite.DATETIME(storage_format="%(year)04d/%(month)02d/%(day)02d %(hour)02d:%(minute)02d:"
                            "%(second)02d").bind_processor(sqlite.dialect())
    assert report_writer._faster(other) is other
    as_float = sqlite.FLOAT().bind_processor(sqlite.dialect())
    assert report_writer._faster(as_float) is as_float
    assert report_writer._faster(None) is None


@BOTH
def test_the_writer_stores_all_rows_or_none(app, client, tokens, stable_release):
    known, device = _known(app, client, tokens)
    with app.test_request_context():
        rows = [_fast_row(report(f"w-{i}"), device, known) for i in range(3)]
        writer = report_writer.writer_for(app)
        writer.insert(rows[:1])
        with pytest.raises(IntegrityError):
            writer.insert(rows[1:] + rows[:1])  # the last row repeats a stored id
    stored = _rows(app, device.id)
    assert [r.report_id for r in stored if r.report_id.startswith("w-")] == ["w-0"]
    assert all(r.received_at is not None for r in stored)


@BOTH
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
    # a batch mixing stored and new ids (the duplicate path) adds only the new ones to the totals
    new = report("b-new", cohort="canary", inferences=7, latency_counts=[7] + [0] * 14)
    mixed = {"reports": [report("b-0"), new]}
    assert client.post("/v1/reports", json=mixed, headers=auth(credential)).json == {
        "accepted": ["b-new"], "duplicates": ["b-0"]}
    assert_totals_match_reports(app)


@BOTH
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
    assert_totals_match_reports(app)


@BOTH
@pytest.mark.parametrize(("start", "end"), [
    ("2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z"),
    ("2026-01-01T00:00:00", "2026-01-01T00:00:30+00:00"),  # no offset: UTC
    ("2026-01-01T02:00:00+02:00", "2025-12-31T19:00:30-05:00"),  # offsets: converted to UTC
])
def test_report_times_are_stored_in_utc(client, tokens, stable_release, app, start, end):
    device_id, credential = register(client, tokens["enroll"])
    body = report("t-1", window_start=start, window_end=end)
    assert client.post("/v1/reports", json={"reports": [body]}, headers=auth(credential)).status_code == 200
    (row,) = _rows(app, device_id)
    assert row.window_start.replace(tzinfo=None) == dt.datetime(2026, 1, 1)


@pytest.mark.parametrize("when", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:59:00-01:00"])
def test_a_time_out_of_range_in_utc_is_a_400(client, tokens, stable_release, when):
    _, credential = register(client, tokens["enroll"])
    response = client.post("/v1/reports", json={"reports": [report(window_start=when, window_end=when)]},
                           headers=auth(credential))
    assert response.status_code == 400
    assert "ISO 8601" in response.json["detail"]


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


@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_the_writer_replaces_its_connection_when_it_died_while_idle(app, client, tokens, stable_release,
                                                                    monkeypatch, pg_url):
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from rollout_server import db as dbmod

    known, device = _known(app, client, tokens)
    with app.test_request_context():
        writer = report_writer.writer_for(app)
        pid = writer._held().dbapi_connection.info.backend_pid
        admin = create_engine(pg_url, poolclass=NullPool)
        try:
            with admin.connect() as connection:  # the held connection dies while idle (a restart, a timeout)
                assert connection.scalar(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
        finally:
            admin.dispose()
        monkeypatch.setattr(dbmod, "PING_IDLE_SECONDS", -1.0)  # the held connection counts as idle
        writer.insert([_fast_row(report("after-restart"), device, known)])
        assert writer._held().dbapi_connection.info.backend_pid != pid
    assert "after-restart" in [r.report_id for r in _rows(app, device.id)]
    assert_totals_match_reports(app)


@BOTH
def test_a_group_with_a_stored_id_fails_only_that_batch(app, client, tokens, stable_release):
    known, device = _known(app, client, tokens)
    with app.test_request_context():
        writer = report_writer.writer_for(app)
        rows = {i: [_fast_row(report(f"g-{i}"), device, known)] for i in range(4)}
        writer.insert([_fast_row(report("g-1"), device, known)])
        group = [_pending(writer, rows[0]), _pending(writer, rows[1] + rows[3]), _pending(writer, rows[2])]
        writer._write_group(group)
    assert all(entry.done for entry in group)
    assert group[0].error is None and group[2].error is None
    assert isinstance(group[1].error, IntegrityError)
    stored = [r.report_id for r in _rows(app, device.id) if r.report_id.startswith("g-")]
    assert stored == ["g-0", "g-1", "g-2"]
    assert_totals_match_reports(app)


@BOTH
@pytest.mark.parametrize("group_rows", [report_writer.MAX_GROUP_ROWS, 7])
def test_concurrent_writers_each_get_their_own_outcome(app, client, tokens, stable_release, group_rows,
                                                       monkeypatch):
    monkeypatch.setattr(report_writer, "MAX_GROUP_ROWS", group_rows)
    known, device = _known(app, client, tokens)
    with app.test_request_context():
        writer = report_writer.writer_for(app)
        groups: list[int] = []  # rows per transaction
        write_group = writer._write_group

        def counted(group: list) -> None:
            groups.append(sum(len(entry.params) for entry in group))
            write_group(group)

        monkeypatch.setattr(writer, "_write_group", counted)
        batches = [[_fast_row(report(f"p-{i}-{k}"), device, known) for k in range(3)]
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
    assert max(groups) <= max(group_rows, 3)  # a group holds whole batches of 3, up to the cap
    assert_totals_match_reports(app)


def _writes_counted(writer, monkeypatch) -> list[list[str]]:
    """The report ids of each transaction the writer makes from now on."""
    written: list[list[str]] = []
    write = writer._write

    def counted(params, totals) -> None:
        written.append([row[0] for row in params])
        write(params, totals)

    monkeypatch.setattr(writer, "_write", counted)
    return written


def test_batches_that_come_while_the_leader_waits_for_its_turn_join_its_transaction(
        app, client, tokens, stable_release, monkeypatch):
    """Another process holds the SQLite write turn: the leader waits for it, and the batches that
    came meanwhile are written with the leader's, in one transaction."""
    known, device = _known(app, client, tokens)
    with app.test_request_context():
        writer = report_writer.writer_for(app)
        batches = [[_fast_row(report(f"t-{i}"), device, known)] for i in range(3)]
    written = _writes_counted(writer, monkeypatch)
    with open(writer.lock_path, "a") as other_process:  # a separate open file: flock excludes it
        fcntl.flock(other_process, fcntl.LOCK_EX)
        threads = []
        for batch in batches:
            threads.append(threading.Thread(target=writer.insert, args=(batch,)))
            threads[-1].start()
            deadline = time.monotonic() + 5
            while len(writer._pending) < len(threads) and time.monotonic() < deadline:
                time.sleep(0.001)  # each one queued before the next starts
        time.sleep(0.05)
        assert written == []
        fcntl.flock(other_process, fcntl.LOCK_UN)
    for thread in threads:
        thread.join(timeout=30)
    assert written == [["t-0", "t-1", "t-2"]]
    assert not writer._leading and not writer._pending
    assert_totals_match_reports(app)


@BOTH
def test_a_nul_character_in_a_string_is_a_400_not_a_database_error(client, tokens, stable_release, app):
    """PostgreSQL cannot store NUL in text: refused up front, on every backend, before storing."""
    device_id, credential = register(client, tokens["enroll"])
    for bad in ({"id": "r\u0000"}, {"variant": "tflite\u0000int8"}, {"model": "digits\u0000"}):
        response = client.post("/v1/reports", json={"reports": [report("fine"), report(**bad)]},
                               headers=auth(credential))
        assert response.status_code == 400, (bad, response.json)
        assert "NUL" in response.json["detail"]
    registered = client.post("/v1/devices/register", json={
        "enrollment_token": tokens["enroll"], "device_class": "rpi\u00004", "arch": "aarch64", "os": "x",
        "ram_bytes": 2**30, "runtimes": {"onnxruntime": "1.20.1"}})
    assert registered.status_code == 400 and "NUL" in registered.json["detail"]
    # an escaped backslash before "u0000" is no NUL
    fine = client.post("/v1/reports", json={"reports": [report("r\\u0000")]}, headers=auth(credential))
    assert fine.status_code == 200 and fine.json["accepted"] == ["r\\u0000"]
    assert [r.report_id for r in _rows(app, device_id)] == ["r\\u0000"]


@BOTH
def test_optional_device_values_are_summed_and_counted_only_where_given(app, client, tokens, stable_release):
    """``report_totals`` keeps, per key, the sum and the count of each optional value (peak RSS,
    load time, CPU temperature) and how many reports said throttled: absent values count in
    neither, on SQLite and on PostgreSQL (one SQL statement there)."""
    _, credential = register(client, tokens["enroll"])
    given = [{"peak_rss_bytes": 100, "load_seconds": 0.5, "cpu_temp_celsius": 60.0, "throttled": True},
             {"peak_rss_bytes": 300, "cpu_temp_celsius": 70.5, "throttled": False},
             {"load_seconds": 1.5}, {}]
    for i, values in enumerate(given):
        answer = client.post("/v1/reports", json={"reports": [report(f"opt-{i}", **values)]},
                             headers=auth(credential))
        assert answer.status_code == 200, answer.json
    with session_scope(app) as session:
        columns = (func.sum(getattr(ReportTotal, name)) for name in DEVICE_TOTALS)
        sums = session.execute(select(*columns)).one()
    assert dict(zip(DEVICE_TOTALS, sums, strict=True)) == {
        "peak_rss_sum": 400, "peak_rss_reports": 2, "load_seconds_sum": 2.0, "load_reports": 2,
        "cpu_temp_sum": 130.5, "cpu_temp_reports": 2, "throttled_reports": 1, "throttle_known_reports": 2}
