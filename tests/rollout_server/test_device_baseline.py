"""Each device's baseline (its stable-release reports before the rollout) and the per-device
tables the controller builds for the guards, from reports posted over the API.

Dates are fixed (``T0``, the rollout's creation), hence :data:`FIXED_DAYS` in the app.
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
import uuid

import pytest

from rollout_server import device_rows
from rollout_server.analysis import RolloutState
from rollout_server.analysis.device_checks import device_tables, latency_tables
from rollout_server.controller import BASELINES, load_measurements, step_all
from rollout_server.db import session_scope
from rollout_server.device_rows import Baseline, BaselineCache, baseline_rows, stage_devices, stage_tables
from rollout_server.models import Model, Release, Report, Rollout
from tests.rollout_server.conftest import (
    BOTH_BACKENDS,
    auth,
    fake_manifest,
    register,
    seed_release,
    variant_entry,
)

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)
DAY = 86400
STAGES = [{"percent": 50, "min_duration_seconds": 60, "min_samples": 100},
          {"percent": 100, "min_duration_seconds": 0, "min_samples": 0}]


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def report(end: dt.datetime, inferences: int, *, version: str = "1", cohort: str = "stable",
           rollout_id: int | None = None, sketch: dict[int, int] | None = None, v1: list[int] | None = None,
           errors: dict[str, int] | None = None, labelled: int = 0, correct: int = 0,
           model: str = "digits-cnn") -> dict:
    """One report; schema 1 with ``v1`` (a v1 histogram), else schema 2 with ``sketch``."""
    body = {"id": uuid.uuid4().hex, "model": model, "version": version, "variant": "onnx-fp32",
            "cohort": cohort, "window_start": (end - dt.timedelta(seconds=30)).isoformat(),
            "window_end": end.isoformat(), "inferences": inferences, "errors": errors or {},
            "labelled": labelled, "correct": correct}
    if rollout_id is not None:
        body["rollout_id"] = rollout_id
    if v1 is not None:
        return {**body, "latency_counts": v1}
    buckets = sorted(map(list, (sketch or {}).items()))
    return {**body, "schema": 2, "latency": {"schema": 5, "buckets": buckets}}


def post(client, credential: str, *reports: dict) -> None:
    answer = client.post("/v1/reports", json={"reports": list(reports)}, headers=auth(credential))
    assert answer.status_code == 200, answer.json


def v1_histogram(count: int) -> list[int]:
    return [0] * 5 + [count] + [0] * 9


@pytest.fixture
def rollout(app, client, tokens) -> int:
    """A running 50% rollout of v2 against v1 (stable), created at ``T0``, its stage started then."""
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
    created = client.post("/v1/rollouts", headers=auth(tokens["admin"]),
                          json={"model": "digits-cnn", "candidate_version": "2", "stages": STAGES})
    assert created.status_code == 201, created.json
    with session_scope(app) as session:
        row = session.get(Rollout, created.json["id"])
        row.created_at = T0
        row.state = {**row.state, "stage_started_at": T0.timestamp()}
    return created.json["id"]


def baselines_of(app, rollout_id: int, devices, seconds: float = DAY, **options) -> dict[str, Baseline]:
    with session_scope(app) as session:
        return baseline_rows(session, session.get(Rollout, rollout_id), seconds, devices, **options)


@BOTH_BACKENDS
def test_a_devices_baseline_is_its_stable_release_reports_in_the_day_before_the_rollout(
        app, client, tokens, rollout):
    with session_scope(app) as session:  # another model, with a release of the same version
        other = Model(name="other-model")
        session.add(other)
        session.flush()
        session.add(Release(model_id=other.id, version="1", manifest=fake_manifest("1", []),
                            signed_by="test"))
    a, a_key = register(client, tokens["enroll"])
    b, b_key = register(client, tokens["enroll"])
    c, c_key = register(client, tokens["enroll"])
    post(client, a_key,
         report(at(-3600), 100, sketch={-250: 60, -249: 30}, labelled=40, correct=37,
                errors={"runtime_error": 2, "timeout": 1, "load_failed": 5}),  # install errors: not inference
         report(at(-DAY), 50, sketch={-249: 5, -240: 40}, errors={"other": 4}),  # the window's first second
         report(at(0), 7, sketch={-250: 7}),  # ends as the rollout is created: still before it
         report(at(-DAY - 1), 1000, sketch={-100: 1000}),  # too old
         report(at(60), 1000, sketch={-100: 1000}),  # after the rollout was created
         report(at(-600), 1000, version="2", sketch={-100: 1000}),  # the candidate, not the stable release
         report(at(-600), 1000, model="other-model", sketch={-100: 1000}))  # another model
    post(client, b_key, report(at(-120), 80, v1=v1_histogram(80), labelled=10, correct=10))  # schema 1
    post(client, c_key, report(at(-DAY - 30), 500, sketch={-250: 500}),  # only excluded reports
         report(at(30), 500, sketch={-250: 500}))
    assert baselines_of(app, rollout, [a, b, c, "never-seen"]) == {
        a: Baseline(inferences=157, errors=7, labelled=40, wrong=3, sketch={-250: 67, -249: 35, -240: 40}),
        b: Baseline(inferences=80, errors=0, labelled=10, wrong=0, sketch={}),  # no v1 latencies
    }
    assert set(baselines_of(app, rollout, [a, b, c], seconds=3600)) == {a, b}  # an hour: a keeps two reports
    assert baselines_of(app, rollout, [a, b, c], seconds=3600)[a].inferences == 107
    assert set(baselines_of(app, rollout, [b, c])) == {b}  # only the devices asked for
    assert baselines_of(app, rollout, []) == {}


@BOTH_BACKENDS
def test_a_baseline_is_the_devices_latest_reports_at_most(app, client, tokens, rollout):
    a, a_key = register(client, tokens["enroll"])
    b, b_key = register(client, tokens["enroll"])
    # a: five reports, two of them ending in the same second (the later id counts as later)
    post(client, a_key, *(report(at(-60 * (i + 1)), 10 ** i, sketch={-250 + i: 1}) for i in range(4)))
    post(client, a_key, report(at(-120), 100_000, sketch={-200: 1}))
    post(client, a_key, report(at(-30), 200_000, version="2"),  # the candidate: never in it
         report(at(-DAY - 1), 200_000))  # before the window: never in it
    post(client, b_key, report(at(-3600), 7, sketch={-250: 7}))  # fewer than asked for: all of them
    inferences = {k: {d: base.inferences for d, base in baselines_of(app, rollout, [a, b], reports=k).items()}
                  for k in (1, 2, 3, 5, 6, 120)}
    assert inferences[1] == {a: 1, b: 7}  # ends 60 s before the rollout: the latest
    assert inferences[2] == {a: 100_001, b: 7}  # then the later of the two ending at -120 s
    assert inferences[3] == {a: 100_011, b: 7}
    assert inferences[5] == inferences[6] == inferences[120] == {a: 101_111, b: 7}
    assert baselines_of(app, rollout, [a, b], reports=2)[a].sketch == {-250: 1, -200: 1}
    # read in chunks of devices: the same
    assert (baselines_of(app, rollout, [a, b], reports=2, chunk=1)
            == baselines_of(app, rollout, [a, b], reports=2))


@BOTH_BACKENDS
def test_the_baseline_statement_reads_each_devices_latest_reports_along_the_index(app, rollout):
    """SQLite: an index search per device (no scan of ``reports``), the K-th latest report found
    once per device (the materialized CTE), not once per row, and before the reports are read.
    PostgreSQL: a backward index scan per device, stopped by the LIMIT (sequential scans off: on
    a tiny table it would prefer them)."""
    with session_scope(app) as session:
        connection = session.connection()
        dialect = connection.dialect.name
        statement = device_rows.baseline_statement(dialect, session.get(Rollout, rollout), DAY, ["a", "b"],
                                                   120)
        compiled = statement.compile(connection, compile_kwargs={"render_postcompile": True})
        if dialect == "sqlite":
            plan = [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}",
                                                                  tuple(compiled.params.values()))]
        else:
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            connection.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
            plan = [row[0] for row in connection.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)]
    steps = "\n".join(plan)
    if dialect == "sqlite":
        searches = [step for step in plan if "ix_reports_device_id_window_end" in step]
        assert len(searches) == 2, steps  # the K-th latest, and the reports from it on
        assert all(step.startswith("SEARCH") and "device_id=?" in step for step in searches), steps
        scans = [step for step in plan if step.startswith("SCAN")]
        assert not any("reports" in step or "latest" in step for step in scans), steps
        assert "MATERIALIZE cut" in steps, steps
        # the K-th latest's window end is known (in the CTE) before a device's reports are
        # searched, so the search starts there and not at the window's start
        assert plan.index("SCAN cut") > max(i for i, step in enumerate(plan) if "last_report" in step), steps
    else:
        assert "Index Scan Backward using ix_reports_device_id_window_end on reports" in steps, steps
        assert "Limit" in steps and "Seq Scan on reports" not in steps, steps


class Reads:
    """A :class:`BaselineCache` reader that records the devices asked for."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def __call__(self, session, rollout, seconds, devices, **options):
        self.asked.append(sorted(devices))
        return baseline_rows(session, rollout, seconds, devices, **options)


@BOTH_BACKENDS
def test_the_cache_reads_each_device_once_and_looks_again_for_one_without_reports_hourly(
        app, client, tokens, rollout):
    a, a_key = register(client, tokens["enroll"])
    b, b_key = register(client, tokens["enroll"])
    c, c_key = register(client, tokens["enroll"])
    post(client, a_key, report(at(-3600), 100, sketch={-250: 100}))
    post(client, b_key, report(at(-600), 50))
    clock = [1000.0]
    reads = Reads()
    cache = BaselineCache(DAY, reports=120, clock=lambda: clock[0], reader=reads)

    def inferences(*devices: str) -> dict[str, int]:
        with session_scope(app) as session:
            return {d: base.inferences for d, base in cache.rows(session, session.get(Rollout, rollout),
                                                                 devices).items()}

    assert inferences(a) == {a: 100} and reads.asked == [[a]]
    assert inferences(a, b, c) == {a: 100, b: 50} and reads.asked[1:] == [sorted([b, c])]  # only the new ones
    post(client, a_key, report(at(-60), 25, sketch={-250: 25}))  # delivered late, from before the rollout
    post(client, c_key, report(at(-60), 8))  # c's backlog arrives late
    clock[0] += 3599
    assert inferences(a, b, c) == {a: 100, b: 50} and len(reads.asked) == 2  # all known: nothing read
    clock[0] += 1  # an hour after c was found without one
    assert inferences(a, b, c) == {a: 100, b: 50, c: 8} and reads.asked[2:] == [[c]]  # a is not read again
    clock[0] += 7200
    assert inferences(c, b) == {a: 100, b: 50, c: 8} and len(reads.asked) == 3


def test_the_cache_keeps_the_latest_rollouts_and_is_safe_across_threads():
    reads = []

    def reader(_session, rollout, seconds, devices, *, reports):
        reads.append((rollout.id, *devices))
        return {device: (rollout.id, seconds, reports) for device in devices if device != "none"}

    cache = BaselineCache(60, reports=3, size=2, reader=reader)
    rollouts = [Rollout(id=i) for i in range(4)]
    for i in (0, 1, 0, 2, 0, 1):  # 0 is used again before 2 comes, so 1 is the one evicted
        assert cache.rows(None, rollouts[i], ["d"]) == {"d": (i, 60.0, 3)}
    assert reads == [(0, "d"), (1, "d"), (2, "d"), (1, "d")]
    assert BaselineCache(0, reader=reader).rows(None, rollouts[0], ["d"]) is None  # baselines off: no read
    assert len(reads) == 4
    with pytest.raises(ValueError, match="at least one report"):
        BaselineCache(60, reports=0)

    wrong = []
    shared = BaselineCache(60, reports=3, size=3, retry=0.0, reader=reader)  # "none" is read every call
    start = threading.Barrier(8)

    def hammer(offset: int) -> None:
        start.wait()
        try:
            for k in range(2000):
                rollout = rollouts[(k + offset) % 4]
                devices = ["none", f"d{k % 7}", f"d{(k + offset) % 5}"]
                found = shared.rows(None, rollout, devices)
                if any(found.get(d) != (rollout.id, 60.0, 3) for d in devices[1:]) or "none" in found:
                    wrong.append(rollout.id)
        except Exception as exc:  # e.g. KeyError: another thread evicted the entry being stored
            wrong.append(repr(exc))

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads all the time: races that a lock prevents show up
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert wrong == [] and len(shared._kept) <= 3


def enroll_arms(app, client, tokens, per_arm: int = 2) -> dict[str, dict]:
    """Devices of both classes until each (cohort, class) has ``per_arm``: id → its facts."""
    devices: dict[str, dict] = {}
    filled: dict[tuple[str, str], int] = {}
    while len(filled) < 4 or min(filled.values()) < per_arm:
        assert len(devices) < 200
        device_class = ("rpi4", "android")[len(devices) % 2]
        device, key = register(client, tokens["enroll"], device_class=device_class)
        answer = client.get(f"/v1/devices/{device}/assignment?model=digits-cnn", headers=auth(key)).json
        devices[device] = {"key": key, "class": device_class, "cohort": answer["cohort"],
                           "version": answer["version"]}
        filled[(answer["cohort"], device_class)] = filled.get((answer["cohort"], device_class), 0) + 1
    return devices


def measure(app, rollout_id: int, cache: BaselineCache):
    with session_scope(app) as session:
        row = session.get(Rollout, rollout_id)
        in_stage = (Report.rollout_id == row.id, Report.window_end > T0)
        order = {arm: [d.device_id for d in devices]
                 for arm, devices in stage_devices(session, in_stage).items()}
        return load_measurements(session, row, RolloutState.from_dict(row.state), cache), order


@BOTH_BACKENDS
def test_each_arms_device_table_holds_its_devices_stage_and_baseline_rows(app, client, tokens, rollout):
    devices = enroll_arms(app, client, tokens)
    expected: dict[str, dict] = {}
    for n, (device, facts) in enumerate(devices.items()):
        stage = {"inferences": 0, "errors": 0, "labelled": 0, "wrong": 0, "sketch": {}}
        for window in (1, 2):  # two windows: the table sums each device over the stage
            count, wrong = 100 + 10 * n + window, n % 3
            sketch = {-300 + n: count - 5, -255 + window: 5}
            post(client, facts["key"], report(
                at(60 * window), count, version=facts["version"], cohort=facts["cohort"], rollout_id=rollout,
                sketch=sketch, errors={"runtime_error": n % 4, "golden_mismatch": 1}, labelled=20,
                correct=20 - wrong))
            stage["inferences"] += count
            stage["errors"] += n % 4
            stage["labelled"] += 20
            stage["wrong"] += wrong
            for index, c in sketch.items():
                stage["sketch"][index] = stage["sketch"].get(index, 0) + c
        base = {"inferences": 0, "errors": 0, "labelled": 0, "wrong": 0, "sketch": {}}
        if n % 3:  # every third device has no baseline: zeros
            base = {"inferences": 300 + n, "errors": n, "labelled": 50, "wrong": 1 + n % 2,
                    "sketch": {-262 + n: 300 + n}}
            post(client, facts["key"], report(at(-7200), base["inferences"], sketch=base["sketch"],
                                              errors={"timeout": n}, labelled=50, correct=50 - base["wrong"]))
        expected[device] = {"stage": stage, "base": base}

    measured, order = measure(app, rollout, BaselineCache(DAY))
    for cohort in ("stable", "canary"):
        for device_class, arm in getattr(measured, f"{cohort}_by_class").items():
            table, ids = arm.device_table, order[(cohort, device_class)]
            assert sorted(ids) == sorted(d for d, f in devices.items()
                                         if (f["cohort"], f["class"]) == (cohort, device_class))
            assert table.devices == len(ids) >= 2 and table.problems() == []
            for name in ("inferences", "errors", "labelled", "wrong"):
                assert table_column(table, name) == [expected[d]["stage"][name] for d in ids]
                assert table_column(table, f"base_{name}") == [expected[d]["base"][name] for d in ids]
            assert table.latency.sketches() == [expected[d]["stage"]["sketch"] for d in ids]
            assert table.base_latency.sketches() == [expected[d]["base"]["sketch"] for d in ids]
            # the table covers the arm: the guards use it
            assert table.inferences.sum() == arm.inferences and table.errors.sum() == arm.error_count()
            assert table.labelled.sum() == arm.labelled_samples
            assert table.wrong.sum() == arm.labelled_samples - arm.labelled_correct
            assert table.latency.samples == arm.latency_samples
    assert device_tables(measured.stable, measured.canary) is not None
    assert latency_tables(measured.stable, measured.canary) is not None
    assert measured.canary.device_table.devices == sum(f["cohort"] == "canary" for f in devices.values())

    no_baseline, _ = measure(app, rollout, BaselineCache(0))  # BASELINE_SECONDS = 0
    table = no_baseline.stable.device_table
    assert table.base_latency is None and table.base_inferences.sum() == 0
    assert table_column(table, "inferences") == table_column(measured.stable.device_table, "inferences")


def table_column(table, name: str) -> list[int]:
    return [round(v) for v in getattr(table, name)]


@BOTH_BACKENDS
def test_a_device_reporting_v1_latencies_leaves_its_arm_without_a_latency_matrix(app, client, tokens,
                                                                                  rollout):
    devices = enroll_arms(app, client, tokens, per_arm=1)
    v1_device = next(d for d, f in devices.items() if (f["cohort"], f["class"]) == ("canary", "rpi4"))
    for device, facts in devices.items():
        common = {"version": facts["version"], "cohort": facts["cohort"], "rollout_id": rollout}
        post(client, facts["key"], report(at(60), 40, sketch={-250: 40}, **common))
        if device == v1_device:  # an agent not yet upgraded, in one of its windows
            post(client, facts["key"], report(at(120), 40, v1=v1_histogram(40), **common))
        post(client, facts["key"], report(at(-60), 40, v1=v1_histogram(40)))  # a v1 baseline: no latency row
    measured, _ = measure(app, rollout, BaselineCache(DAY))
    assert measured.canary_by_class["rpi4"].device_table.latency is None
    assert measured.canary.device_table.latency is None  # the pooled arm cannot have one either
    assert measured.canary.device_table.inferences.sum() == measured.canary.inferences
    assert latency_tables(measured.stable, measured.canary) is None
    for cohort, device_class in (("stable", "rpi4"), ("stable", "android"), ("canary", "android")):
        table = getattr(measured, f"{cohort}_by_class")[device_class].device_table
        assert table.latency is not None and table.latency.samples == 40 * table.devices
        assert table.base_inferences.tolist() == [40] * table.devices
        assert table.base_latency.samples == 0 and table.base_latency.devices == table.devices


def test_the_controller_keeps_one_baseline_cache_per_app_and_reads_each_stage_device_once(
        app, client, tokens, rollout, monkeypatch):
    app.config.update(BASELINE_SECONDS=3600, BASELINE_REPORTS=2)
    keys = dict(register(client, tokens["enroll"]) for _ in range(3))
    first, later, quiet = keys
    cohorts = {device: client.get(f"/v1/devices/{device}/assignment?model=digits-cnn", headers=auth(key)).json
               for device, key in keys.items()}

    def stage_report(device: str, seconds: float) -> dict:
        return report(at(seconds), 10, version=cohorts[device]["version"], cohort=cohorts[device]["cohort"],
                      rollout_id=rollout, sketch={-250: 10})

    for key in keys.values():  # three within the hour (two count), one before it
        post(client, key, *(report(at(-600 * i), 10 ** i, sketch={-250: 1}) for i in (1, 2, 3)),
             report(at(-7200), 10_000))
    reads = []
    monkeypatch.setattr(device_rows, "baseline_rows", lambda session, rollout, seconds, devices, **options:
                        reads.append(sorted(devices)) or baseline_rows(session, rollout, seconds, devices,
                                                                       **options))
    post(client, keys[first], stage_report(first, 60))
    step_all(app, at(120))
    cache = app.extensions[BASELINES]
    assert (cache.seconds, cache.reports) == (3600, 2)
    assert reads == [[first]]  # only the stage's devices
    post(client, keys[later], stage_report(later, 150))  # the stage shows a new device
    post(client, keys[first], stage_report(first, 150))
    step_all(app, at(240))
    assert app.extensions[BASELINES] is cache
    assert reads == [[first], [later]]  # the new one only
    step_all(app, at(360))
    assert reads == [[first], [later]]  # nothing new: nothing read
    with session_scope(app) as session:
        rows = cache.rows(session, session.get(Rollout, rollout), [first, later])
    # the latest two in the hour
    assert {d: b.inferences for d, b in rows.items()} == {first: 110, later: 110}
    assert quiet not in rows and len(reads) == 2


def test_stage_tables_without_baselines_are_per_device(app, client, tokens, rollout):
    devices = enroll_arms(app, client, tokens, per_arm=1)
    for facts in devices.values():
        post(client, facts["key"], report(at(60), 12, version=facts["version"], cohort=facts["cohort"],
                                          rollout_id=rollout, sketch={-250: 12}))
    with session_scope(app) as session:
        tables = stage_tables(session, (Report.rollout_id == rollout,))
    assert sum(t.devices for t in tables.values()) == len(devices)
    for table in tables.values():
        assert table.base_latency is None and not table.base_inferences.any()
        assert table.inferences.tolist() == [12] * table.devices


def test_sketches_are_merged_alike_whichever_way_they_are_read():
    """The fast path of ``_merged`` (the stored form read as integers) against the JSON decoder."""
    import random

    from edgeship.contract.sketch import LatencySketch
    from rollout_server.report_rows import sketch_text

    rng = random.Random(5)

    def by_json(concatenated: str) -> dict[int, int]:
        merged: dict[int, int] = {}
        for sketch in device_rows._SKETCHES.decode(f"[{concatenated}]"):
            for index, count in sketch.buckets:
                merged[index] = merged.get(index, 0) + count
        return merged

    for _ in range(200):
        sketches = [sketch_text(LatencySketch({rng.randrange(-600, 200): rng.randrange(1, 10**12)
                                               for _ in range(rng.randrange(0, 30))}))
                    for _ in range(rng.randrange(1, 8))]
        concatenated = ",".join(sketches)
        assert device_rows.merged_sketches(concatenated) == by_json(concatenated)
        if any(len(s) > 30 for s in sketches):
            assert device_rows._merged_fast(concatenated) is not None  # the stored form takes the fast path
    # anything but the stored form goes through the decoder, with the same result
    odd = ['{"schema": 5, "buckets": [[-250, 3], [-249, 1]]}', '{"buckets":[[-250,2]],"schema":5}',
           '{"schema":5,"buckets":[[-250,2.0]]}', '{"schema":5,"buckets":[]}']
    for text in odd:
        assert device_rows._merged_fast(text) is None
    assert device_rows.merged_sketches(",".join(odd[:2])) == {-250: 5, -249: 1}
    assert device_rows.merged_sketches('{"schema":5,"buckets":[]},{"schema":5,"buckets":[[7,1]]}') == {7: 1}
    assert device_rows.merged_sketches(None) == device_rows.merged_sketches("") == {}
