"""Baseline read benchmark: what reading each device's pre-rollout baseline costs the controller.

    python -m benchmarks.baseline_bench [--devices 10000] [--reports 200] [--keep 120] [--explain]
                                        [--ingest-seconds 8] [--ingest-rounds 3]
                                        [--skip-postgres | --skip-sqlite]
                                        [--out benchmarks/results/baseline.json]

For each backend (a SQLite file; a throwaway PostgreSQL from ``tests/rollout_server/postgres.py``)
it brings a fresh database to the newest schema, drops ``ix_reports_device_id_window_end`` (the
schema before migration 0004) and fills it straight with bulk inserts, not over HTTP: one model
with a stable and a candidate release, ``--devices`` devices, ``--reports`` pre-rollout reports
of the stable release per device (one every 30 s, each with a latency sketch of ~40 buckets) and
two stage reports per device for all but 1% of them. Then it times ``load_measurements`` (the
controller pass's reads: the stage's per-device rows and the baselines):

* before (no index): the former read, one ``GROUP BY`` over every device's reports in the
  ``BASELINE_SECONDS`` window (:func:`full_baseline_rows`), as the former cache did on its first
  pass and again every 10 minutes; and a pass it served from its cache;
* the index build (migration 0004 on a table that size), the marginal cost of the index on
  inserting another 10% of reports straight into the table, and on ingestion over the API
  (``POST /v1/reports`` with 1 and 10 reports, through the app in this process: parsing,
  checks, the writer and its totals), without and with the index in turn ``--ingest-rounds``
  times on that table, medians;
* after: the first pass (the cache empty: every stage device's latest ``--keep`` reports, 500
  devices per statement), a pass with no new device (served from the cache), and one after the
  last 1% of devices sent their first stage reports (only those are read).

Every pass is timed whole and its baseline read alone. As a check the new read with ``--keep``
above ``--reports`` must equal the former one on a sample of devices. Prints a table and writes
``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from edgeship.contract.latency import BUCKET_COUNT
from edgeship.contract.reports import ERROR_REASONS, INFERENCE_ERROR_REASONS
from rollout_server.analysis import Phase, RolloutState
from rollout_server.analysis.stages import parse_stages
from rollout_server.controller import load_measurements
from rollout_server.db import make_engine, upgrade_schema
from rollout_server.device_rows import (
    BASELINE_CHUNK,
    Baseline,
    BaselineCache,
    _merged_decoded,
    _sum,
    baseline_rows,
    baseline_statement,
)
from rollout_server.models import Device, Model, Release, Report, Rollout

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "baseline.json"
INDEX = "ix_reports_device_id_window_end"
INGEST_MODEL = "ingest-model"
T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)  # the rollout's creation
DAY = 86400.0
INTERVAL = 30  # seconds between a device's reports
STAGE = [{"percent": 50, "min_duration_seconds": 60, "min_samples": 100},
         {"percent": 100, "min_duration_seconds": 0, "min_samples": 0}]
COLUMNS = ("report_id", "device_id", "model_id", "release_id", "variant_id", "rollout_id", "cohort",
           "device_class", "window_start", "window_end", "received_at", "inferences", "labelled", "correct",
           "shadow_samples", "shadow_agree", "dropped_windows", "latency_sum_seconds", "latency_sketch",
           *(f"err_{reason}" for reason in ERROR_REASONS), *(f"lat_{i}" for i in range(BUCKET_COUNT)))


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the former read ----------------------------------------------------------------------------


def full_baseline_rows(session: Session, rollout: Rollout, seconds: float) -> dict[str, Baseline]:
    """The read before this change: every device's baseline reports in the window, one statement,
    its sketches merged through the JSON decoder (as ``_merged`` did then)."""
    end = rollout.created_at
    rows = session.execute(
        select(Report.device_id, _sum(Report.inferences),
               _sum(sum(getattr(Report, f"err_{reason}") for reason in INFERENCE_ERROR_REASONS)),
               _sum(Report.labelled), _sum(Report.labelled - Report.correct),
               func.aggregate_strings(Report.latency_sketch, ","))
        .where(Report.model_id == rollout.model_id, Report.release_id == rollout.baseline_id,
               Report.window_end >= end - dt.timedelta(seconds=seconds), Report.window_end <= end)
        .group_by(Report.device_id))
    return {device: Baseline(int(n), int(x), int(lab), int(w), _merged_decoded(sketches) if sketches else {})
            for device, n, x, lab, w, sketches in rows}


class FormerCache:
    """The former cache: the whole window's baselines, read again every ``max_age`` seconds."""

    def __init__(self, seconds: float, max_age: float = 600.0) -> None:
        self.seconds, self.max_age, self.read_seconds = seconds, max_age, 0.0
        self._kept: tuple[float, dict[str, Baseline]] | None = None

    def rows(self, session: Session, rollout: Rollout, _devices: Any) -> dict[str, Baseline]:
        now = time.monotonic()
        if self._kept is None or now - self._kept[0] >= self.max_age:
            started = time.perf_counter()
            self._kept = (now, full_baseline_rows(session, rollout, self.seconds))
            self.read_seconds += time.perf_counter() - started
        return self._kept[1]


class TimedCache(BaselineCache):
    """:class:`BaselineCache` that adds up the time its reads take."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, reader=self._timed_read, **kwargs)
        self.read_seconds, self.devices_read = 0.0, 0

    def _timed_read(self, *args: Any, **kwargs: Any) -> dict[str, Baseline]:
        started = time.perf_counter()
        try:
            return baseline_rows(*args, **kwargs)
        finally:
            self.read_seconds += time.perf_counter() - started
            self.devices_read += len(args[3])


# -- the data -----------------------------------------------------------------------------------


def sketch(rng: random.Random) -> str:
    """A latency sketch as stored (compact JSON), ~40 buckets around ~8 ms."""
    centre = -250 + rng.randrange(-10, 10)
    buckets = [[centre + i, rng.randrange(1, 40)] for i in range(-20, 20)]
    return json.dumps({"schema": 5, "buckets": buckets}, separators=(",", ":"))


def report_rows(device: str, cls: str, ends: list[dt.datetime], release: int, model: int,
                rollout: int | None, cohort: str, rng: random.Random, first: int) -> Iterator[tuple]:
    for n, end in enumerate(ends):
        inferences = rng.randrange(500, 1500)
        labelled = inferences // 10
        text_sketch = sketch(rng)
        correct = labelled - rng.randrange(3)
        yield (f"r{first + n}-{device}", device, model, release, "onnx-fp32", rollout, cohort, cls,
               end - dt.timedelta(seconds=INTERVAL), end, end, inferences, labelled, correct,
               0, 0, 0, 0.0, text_sketch, 0, rng.randrange(3), 0, rng.randrange(2), 0, *([0] * BUCKET_COUNT))


def bulk_insert(engine: Any, rows: list[tuple]) -> None:
    """Rows of :data:`COLUMNS` into ``reports``: COPY on PostgreSQL, executemany on SQLite."""
    with engine.begin() as connection:
        raw = connection.connection.dbapi_connection
        if engine.dialect.name == "postgresql":
            copying = f"COPY reports ({', '.join(COLUMNS)}) FROM STDIN"
            with raw.cursor() as cursor, cursor.copy(copying) as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            iso = [COLUMNS.index(c) for c in ("window_start", "window_end", "received_at")]
            fixed = [list(row) for row in rows]
            for row in fixed:
                for i in iso:
                    row[i] = row[i].isoformat(" ", "microseconds")[:26]  # SQLAlchemy's SQLite format
            raw.cursor().executemany(
                f"INSERT INTO reports ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", fixed)


def populate(engine: Any, devices: int, reports: int) -> tuple[int, list[str], list[str]]:
    """The fixtures and reports; returns the rollout id, the devices with stage reports and the
    1% left for later."""
    rng = random.Random(1)
    with Session(engine) as session, session.begin():
        model = Model(name="bench-model", created_at=T0)
        session.add(model)
        session.flush()
        stable, candidate = (Release(model_id=model.id, version=v, manifest={}, signed_by="bench")
                             for v in ("1", "2"))
        session.add_all([stable, candidate])
        session.flush()
        model.stable_release_id = stable.id
        other = Model(name=INGEST_MODEL, created_at=T0)  # the ingestion runs' reports: no rollout
        session.add(other)
        session.flush()
        session.add(Release(model_id=other.id, version="1", manifest={}, signed_by="bench"))
        state = RolloutState(stages=parse_stages(STAGE), phase=Phase.RUNNING, stage_started_at=T0.timestamp())
        rollout = Rollout(model_id=model.id, candidate_id=candidate.id, baseline_id=stable.id, salt="s",
                          phase=Phase.RUNNING.value, spec={}, state=state.to_dict(), created_at=T0)
        session.add(rollout)
        session.flush()
        ids = (rollout.id, model.id, stable.id, candidate.id)
    rollout_id, model_id, stable_id, _ = ids
    names = [f"dev-{i:06d}" for i in range(devices)]
    classes = {d: ("rpi4", "android")[i % 2] for i, d in enumerate(names)}
    with engine.begin() as connection:
        connection.execute(insert(Device), [
            {"id": d, "device_class": classes[d], "arch": "aarch64", "os": "bench", "ram_bytes": 4 * 2**30,
             "runtimes": {}, "credential_hash": f"{i:064d}", "revoked": False, "created_at": T0}
            for i, d in enumerate(names)])
    started, batch = time.perf_counter(), []
    order = list(names)
    for k in reversed(range(reports)):  # in time order, the devices interleaved, as they report
        rng.shuffle(order)
        end = [T0 - dt.timedelta(seconds=INTERVAL * k)]
        for device in order:
            batch.extend(report_rows(device, classes[device], end, stable_id, model_id, None, "stable",
                                     rng, k))
        if len(batch) >= 100_000:
            bulk_insert(engine, batch)
            batch = []
    later = names[: max(1, devices // 100)]
    staged = names[len(later):]
    batch.extend(stage_rows(staged, classes, ids, rng))
    bulk_insert(engine, batch)
    log(f"  inserted {reports * devices + 2 * len(staged):,} reports in {time.perf_counter() - started:.1f}s")
    return rollout_id, staged, later


def stage_rows(devices: list[str], classes: dict[str, str], ids: tuple[int, int, int, int],
               rng: random.Random) -> Iterator[tuple]:
    """Two stage reports per device, half of the devices canary."""
    rollout_id, model_id, stable_id, candidate_id = ids
    ends = [T0 + dt.timedelta(seconds=INTERVAL * k) for k in (1, 2)]
    for i, device in enumerate(devices):
        canary = i % 2 == 1
        yield from report_rows(device, classes[device], ends, candidate_id if canary else stable_id, model_id,
                               rollout_id, "canary" if canary else "stable", rng, 10**6)


# -- measuring ----------------------------------------------------------------------------------


def timed_pass(engine: Any, rollout_id: int, cache: Any) -> float:
    """One controller pass's reads (``load_measurements``); seconds."""
    started = time.perf_counter()
    with Session(engine) as session, session.begin():
        rollout = session.get(Rollout, rollout_id)
        measured = load_measurements(session, rollout, RolloutState.from_dict(rollout.state), cache)
    assert measured.canary.device_table.devices > 0
    return time.perf_counter() - started


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run_backend(backend: str, url: str, work: Path, opts: argparse.Namespace) -> list[dict[str, Any]]:
    log(f"{backend}: schema, then {opts.devices:,} devices x {opts.reports} baseline reports")
    upgrade_schema(url)
    engine = make_engine(url)
    rows: list[dict[str, Any]] = []

    def row(name: str, seconds: float, baseline: float | None = None, read: int | None = None,
            **extra: Any) -> None:
        rows.append({"backend": backend, "step": name, "seconds": seconds, "baseline_seconds": baseline,
                     "devices_read": read, **extra})
        log(f"  {name}: {seconds:.2f}s" + ("" if baseline is None else f" (baseline read {baseline:.2f}s)"))

    try:
        with engine.begin() as connection:
            connection.execute(text(f"DROP INDEX {INDEX}"))
        rollout_id, staged, later = populate(engine, opts.devices, opts.reports)
        if backend == "postgresql":  # autovacuum would have, on a table this size
            with engine.connect() as connection:
                connection.execute(text("COMMIT"))
                connection.execute(text("ANALYZE"))
        total = opts.devices * opts.reports

        former = FormerCache(DAY)
        seconds = timed_pass(engine, rollout_id, former)
        row("before: first pass / every 10 min (full read)", seconds, former.read_seconds, opts.devices)
        former.read_seconds = 0.0
        seconds = timed_pass(engine, rollout_id, former)
        row("before: pass within 10 min (cached)", seconds, former.read_seconds, 0)

        # the marginal cost of the index on inserts: another 10% of reports, without then with it
        rng = random.Random(2)
        extra = max(1, total // 10)

        _, model_id, stable_id, _ = _ids(engine, rollout_id)

        def more(tag: int) -> list[tuple]:
            """Reports from before the baseline window (they change no read), interleaved."""
            rows = []
            for k in range(max(1, extra // len(staged))):
                end = [T0 - dt.timedelta(seconds=2 * DAY + INTERVAL * (k + 1000 * tag))]
                for device in rng.sample(staged, len(staged)):
                    rows.extend(report_rows(device, "rpi4", end, stable_id, model_id, None, "stable", rng,
                                            10**7 * tag + k))
            return rows

        unindexed = more(1)
        insert_without = timed(lambda: bulk_insert(engine, unindexed))
        row(f"insert {len(unindexed):,} reports, no index", insert_without,
            rate=len(unindexed) / insert_without)

        build = timed(lambda: _execute(engine, f"CREATE INDEX {INDEX} ON reports (device_id, window_end)"))
        row(f"build the index (migration 0004) on {total + len(unindexed):,} reports", build)
        if opts.ingest_seconds > 0:
            ingest_rows(backend, engine, url, work / f"server-{backend}", opts, rows)
        indexed = more(2)
        insert_with = timed(lambda: bulk_insert(engine, indexed))
        row(f"insert {len(indexed):,} reports, with the index", insert_with, rate=len(indexed) / insert_with,
            slower=insert_with / insert_without - 1)
        if backend == "postgresql":
            _execute(engine, "ANALYZE reports")

        if opts.explain:
            shown = plan(engine, rollout_id, staged, opts.keep)
            log(f"  plan of one statement ({BASELINE_CHUNK} devices):\n{shown}")
        cache = TimedCache(DAY, reports=opts.keep)
        seconds = timed_pass(engine, rollout_id, cache)
        row(f"after: first pass (latest {opts.keep} of each device's)", seconds, cache.read_seconds,
            cache.devices_read)
        cache.read_seconds, cache.devices_read = 0.0, 0
        row("after: a later pass, no new device", timed_pass(engine, rollout_id, cache), cache.read_seconds,
            cache.devices_read)
        bulk_insert(engine, list(stage_rows(later, dict.fromkeys(later, "rpi4"),
                                            _ids(engine, rollout_id), rng)))
        row(f"after: a later pass, {len(later)} new devices", timed_pass(engine, rollout_id, cache),
            cache.read_seconds, cache.devices_read)

        sample = rng.sample(staged, 200)  # the new read of every report equals the former one
        with Session(engine) as session:
            rollout = session.get(Rollout, rollout_id)
            every = baseline_rows(session, rollout, DAY, sample, reports=opts.reports + 1)
            full = full_baseline_rows(session, rollout, DAY)
            latest = baseline_rows(session, rollout, DAY, sample[:1], reports=opts.keep)[sample[0]]
        assert every == {d: full[d] for d in sample}, "the new read differs from the former one"
        assert latest.inferences < full[sample[0]].inferences
        log(f"  check: the latest {opts.reports + 1} reports of {len(sample)} devices equal the former read")
    finally:
        engine.dispose()
    return rows


class Ingestion:
    """``POST /v1/reports`` through the app in this process (the Flask test client), on the
    benchmark's database: ``--ingest-devices`` devices registered over the API, each request one
    or 10 reports of :data:`INGEST_MODEL` (no rollout) with unique ids."""

    def __init__(self, url: str, data_dir: Path, devices: int) -> None:
        from rollout_server.app import create_app

        self.app = create_app({"DATA_DIR": str(data_dir), "DATABASE_URL": url, "CONTROLLER_ENABLED": False})
        self.client = self.app.test_client()
        tokens_file = data_dir / "first-start-tokens.txt"
        tokens = dict(line.split("=", 1) for line in tokens_file.read_text().split())
        self.credentials = []
        for _ in range(devices):
            answer = self.client.post("/v1/devices/register", json={
                "enrollment_token": tokens["EDGESHIP_ENROLL_TOKEN"], "device_class": "rpi4",
                "arch": "aarch64", "os": "bench", "ram_bytes": 4 * 2**30,
                "runtimes": {"onnxruntime": "1.20.1"}})
            assert answer.status_code == 201, answer.json
            self.credentials.append({"Authorization": f"Bearer {answer.json['credential']}"})
        self.sent = 0

    def body(self, reports: int) -> bytes:
        end = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=60)
        items = []
        for _ in range(reports):
            self.sent += 1
            items.append({"id": f"i{self.sent}", "model": INGEST_MODEL, "version": "1",
                          "variant": "onnx-fp32", "cohort": "stable",
                          "window_start": (end - dt.timedelta(seconds=30)).isoformat(),
                          "window_end": end.isoformat(), "inferences": 900, "labelled": 90, "correct": 88,
                          "errors": {"timeout": 1}, "schema": 2,
                          "latency": {"schema": 5, "buckets": [[-270 + i, 10 + i % 10] for i in range(40)]}})
        return json.dumps({"reports": items}).encode()

    def rate(self, reports: int, seconds: float) -> float:
        """Reports per second (wall clock) over ``seconds``, cycling over the devices."""
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for headers in self.credentials:
                answer = self.client.post("/v1/reports", data=self.body(reports), headers=headers,
                                          content_type="application/json")
                assert answer.status_code == 200, answer.json
                done += reports
        return done / (time.perf_counter() - started)

    def close(self) -> None:
        self.app.extensions["edgeship.engine"].dispose()


def plan(engine: Any, rollout_id: int, devices: list[str], keep: int) -> str:
    """The baseline statement's plan: ``EXPLAIN ANALYZE`` on PostgreSQL, ``EXPLAIN QUERY PLAN``
    on SQLite."""
    with Session(engine) as session:
        statement = baseline_statement(engine.dialect.name, session.get(Rollout, rollout_id), DAY,
                                       devices[-BASELINE_CHUNK:], keep)
        compiled = statement.compile(session.connection(), compile_kwargs={"render_postcompile": True})
        if engine.dialect.name == "postgresql":
            lines = session.connection().exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}",
                                                         compiled.params)
            return "\n".join(line for (line,) in lines)
        lines = session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}",
                                                     tuple(compiled.params.values()))
        return "\n".join(line[-1] for line in lines)


def ingest_rows(backend: str, engine: Any, url: str, data_dir: Path, opts: argparse.Namespace,
                rows: list[dict[str, Any]]) -> None:
    """Ingestion with and without the index, ``--ingest-rounds`` times each, in turn (the index
    dropped and built again; which goes first alternates by round) after a warm-up; the
    medians, and the index left in place."""
    ingestion = Ingestion(url, data_dir, opts.ingest_devices)
    rates: dict[tuple[bool, int], list[float]] = {}
    present = True

    def index(wanted: bool) -> None:
        nonlocal present
        if wanted != present:
            _execute(engine, f"CREATE INDEX {INDEX} ON reports (device_id, window_end)" if wanted
                     else f"DROP INDEX {INDEX}")
            present = wanted

    try:
        ingestion.rate(10, min(2.0, opts.ingest_seconds))  # warm-up: caches, known ids
        for round_ in range(opts.ingest_rounds):
            for indexed in ((False, True) if round_ % 2 == 0 else (True, False)):
                index(indexed)
                for batch in (1, 10):
                    rate = ingestion.rate(batch, opts.ingest_seconds)
                    rates.setdefault((indexed, batch), []).append(rate)
                    state = "with" if indexed else "without"
                    log(f"  ingest x{batch} {state} the index: {rate:,.0f} reports/s")
        index(True)
    finally:
        ingestion.close()
    for batch in (1, 10):
        without, with_index = (statistics.median(rates[(indexed, batch)]) for indexed in (False, True))
        rows.append({"backend": backend, "step": f"ingest x{batch} over the API (in process)",
                     "seconds": None, "baseline_seconds": None, "devices_read": None,
                     "without": without, "with": with_index, "slower": without / with_index - 1,
                     "runs": {"without": rates[(False, batch)], "with": rates[(True, batch)]}})


def _execute(engine: Any, statement: str) -> None:
    with engine.begin() as connection:
        connection.execute(text(statement))


def _ids(engine: Any, rollout_id: int) -> tuple[int, int, int, int]:
    with Session(engine) as session:
        rollout = session.get(Rollout, rollout_id)
        return rollout.id, rollout.model_id, rollout.baseline_id, rollout.candidate_id


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """A fresh database on a throwaway PostgreSQL (``tests/rollout_server/postgres.py``)."""
    from tests.rollout_server.postgres import postgresql_server

    servers = postgresql_server()
    server = next(servers)
    try:
        yield server.create_database("edgeship_baseline_bench")
    finally:
        servers.close()


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| backend | step | seconds | of it, baseline read | devices read |", "|---|---|---:|---:|---:|"]
    for r in rows:
        if "without" in r:
            lines.append(f"| {r['backend']} | {r['step']}: {r['without']:,.0f} reports/s without the index, "
                         f"{r['with']:,.0f} with it ({100 * r['slower']:+.0f}% time per report) | | | |")
            continue
        base = "" if r["baseline_seconds"] is None else f"{r['baseline_seconds']:.2f}"
        read = "" if r["devices_read"] is None else f"{r['devices_read']:,}"
        note = f" ({r['rate']:,.0f} reports/s)" if "rate" in r else ""
        note += f", {100 * r['slower']:+.0f}%" if "slower" in r else ""
        lines.append(f"| {r['backend']} | {r['step']}{note} | {r['seconds']:.2f} | {base} | {read} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000, help="devices (default: 10,000)")
    parser.add_argument("--reports", type=int, default=200, help="baseline reports per device (default: 200)")
    parser.add_argument("--keep", type=int, default=120, help="BASELINE_REPORTS (default: 120)")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--explain", action="store_true", help="log the plan of one baseline statement")
    parser.add_argument("--ingest-seconds", type=float, default=8.0,
                        help="each in-process ingestion run, 0 for none (default: 8)")
    parser.add_argument("--ingest-rounds", type=int, default=3,
                        help="ingestion runs without and with the index, in turn (default: 3)")
    parser.add_argument("--ingest-devices", type=int, default=50, help="devices posting (default: 50)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS})")
    opts = parser.parse_args(argv)
    if opts.devices < 200:
        parser.error("--devices must be at least 200")
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgeship-baseline-") as tmp:
        if not opts.skip_sqlite:
            rows += run_backend("sqlite", f"sqlite:///{Path(tmp) / 'edgeship.db'}", Path(tmp), opts)
        if not opts.skip_postgres:
            try:
                with postgres_url() as url:
                    rows += run_backend("postgresql", url, Path(tmp), opts)
            except BaseException as err:  # pytest's skip when PostgreSQL is missing
                if not type(err).__module__.startswith(("_pytest", "pytest")):
                    raise
                skipped["postgresql"] = str(err)
                log(f"postgresql: skipped: {err}")
    print(table(rows))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"devices": opts.devices, "reports": opts.reports, "keep": opts.keep,
                                    "python": platform.python_version(), "rows": rows, "skipped": skipped},
                                   indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
