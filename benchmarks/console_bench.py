"""Console benchmark: server time of each console page on a big fleet with a day of reports.

    python -m benchmarks.console_bench [--devices 10000] [--hours 2] [--requests 20]
                                       [--data-dir /tmp/edgeship-console-bench] [--reseed]
                                       [--out benchmarks/results/console.json]

It seeds a SQLite database (kept in ``--data-dir`` and reused by later runs with the same scale,
so a change to a page is measured again without seeding again) with ``--devices`` devices (four
classes, three runtime sets; 2% pending admission, 3% silent for two hours, 1.5% failing), one
model with a stable and a candidate release, a rollout started a day ago at its 50% stage, three
guard verdicts and two chart points (one per arm) per 1-minute window of that day, audit entries,
three webhooks with their deliveries, and a report from every accepted device every minute for the
last ``--hours`` hours (10,000 × 120 = 1.2 million rows: bulk ``executemany`` in time order, as they
would arrive). The chart points of those hours are summed from the reports by the controller's
own code (``rollout_server.window_points``); the day's earlier points are copies of them (a day
of reports, 14.4 million rows, does not fit this machine's free disk, and the pages never read
them: the fleet page reads the last 15 minutes). Then it times the controller's per-window work
for the console (one claim's chart points, the fleet snapshot the pages then read), signs in as
an admin (a real console session) and times ``--requests`` GETs of each page through the WSGI app
in this process (after one warm-up): the server's time, without a network. Prints a table and writes
``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from benchmarks.baseline_bench import bulk_insert
from benchmarks.results_file import write_results
from edgeship.contract.latency import BUCKET_COUNT
from rollout_server.analysis import Phase, RolloutState
from rollout_server.analysis.stages import parse_stages
from rollout_server.bucketing import assign_cohort

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "console.json"
#: the benchmark's "now" (the app's injected clock): the last report window ends here.
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
WINDOW = 60  # seconds: a report per device per minute, and the analysis window
DAY_WINDOWS = 1440  # the rollout's age in windows: its verdicts and chart points
CLASSES = ("phone-high", "phone-low", "pi4", "jetson")
RUNTIMES = ({"onnxruntime": "1.17.1"}, {"tflite": "2.14.0"}, {"onnxruntime": "1.16.3", "tflite": "2.13.0"})
GUARDS = ("error_rate", "latency_p95", "accuracy")
STAGES = [{"percent": 10, "min_duration_seconds": 3600, "min_samples": 100},
          {"percent": 50, "min_duration_seconds": 3600, "min_samples": 100},
          {"percent": 100, "min_duration_seconds": 0, "min_samples": 0}]
PAGES = ("/console/fleet", "/console/models", "/console/models/bench-model", "/console/models/bench-model/2",
         "/console/rollouts", "/console/rollouts/{rollout}", "/console/rollouts/{rollout}/live",
         "/console/webhooks")
TARGET_MS = 300.0


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the data -----------------------------------------------------------------------------------


def device_plan(count: int) -> list[dict[str, Any]]:
    """Each device's id, class, runtimes and fate: ``pending``, ``silent`` (stopped reporting two
    hours ago), ``failing`` (errors in every report) or ``ok``."""
    rng = random.Random(7)
    plan = []
    for n in range(count):
        fate = "ok"
        if n % 50 == 1:
            fate = "pending"
        elif n % 33 == 2:
            fate = "silent"
        elif n % 67 == 3:
            fate = "failing"
        plan.append({"id": f"dev-{n:06d}", "class": CLASSES[n % len(CLASSES)], "runtimes": RUNTIMES[n % 3],
                     "fate": fate, "centre": -250 + rng.randrange(-12, 12)})
    return plan


def sketch(rng: random.Random, centre: int) -> str:
    """A 1-minute latency sketch as stored (compact JSON): 12 buckets around ~5 ms (one of 32 per
    centre, drawn once: encoding one per row would make seeding twice as slow)."""
    pool = _SKETCHES.get(centre)
    if pool is None:
        pool = _SKETCHES[centre] = [
            json.dumps({"schema": 5, "buckets": [[centre + i, rng.randrange(1, 12)] for i in range(-6, 6)]},
                       separators=(",", ":")) for _ in range(32)]
    return pool[rng.randrange(32)]


_SKETCHES: dict[int, list[str]] = {}


def window_rows(plan: list[dict[str, Any]], end: dt.datetime, ids: dict[str, int], cohorts: dict[str, str],
                rng: random.Random) -> Iterator[tuple]:
    """Every reporting device's report for the window ending at ``end``, in :data:`COLUMNS` order."""
    silent_from = NOW - dt.timedelta(hours=2)
    stamp = int(end.timestamp())
    for device in plan:
        if device["fate"] == "pending" or (device["fate"] == "silent" and end > silent_from):
            continue
        cohort = cohorts[device["id"]]
        inferences = rng.randrange(20, 80)
        labelled = inferences // 10
        failing = device["fate"] == "failing"
        errors = (0, rng.randrange(1, 4) if failing else int(rng.random() < 0.02), 0, int(failing), 0)
        yield (f"r{stamp}", device["id"], ids["model"], ids[cohort], "onnx-fp32", ids["rollout"], cohort,
               device["class"], end - dt.timedelta(seconds=WINDOW), end, end, inferences, labelled,
               labelled - int(rng.random() < 0.1), 0, 0, 0, 0.0,
               sketch(rng, device["centre"] + (cohort == "canary")), *errors, *([0] * BUCKET_COUNT))


def manifest(version: str) -> dict[str, Any]:
    variants = [{"id": f"{fmt}-{prec}", "format": fmt, "precision": prec, "size_bytes": size,
                 "metrics": {"accuracy": 0.98, "accuracy_drop": drop, "agreement": 0.99, "cosine": 0.999,
                             "latency_ms": {"p50": 4.1, "p95": 6.3}}}
                for fmt, prec, size, drop in (("onnx", "fp32", 4_000_000, 0.0),
                                              ("onnx", "int8", 1_100_000, 0.004),
                                              ("tflite", "fp32", 4_100_000, 0.0),
                                              ("tflite", "int8", 1_000_000, 0.005))]
    return {"model": "bench-model", "version": version, "created_at": NOW.isoformat(), "variants": variants,
            "task": {"kind": "classification"}, "signature": {"key_id": "bench-key"}}


def seed_fixtures(engine: Any, plan: list[dict[str, Any]]) -> dict[str, int]:
    """Devices, releases, the rollout, verdicts, audit entries, webhooks; returns the ids."""
    from rollout_server import models as m

    start = NOW - dt.timedelta(seconds=WINDOW * DAY_WINDOWS)
    stage_started = NOW - dt.timedelta(hours=6)
    with Session(engine) as session, session.begin():
        model = m.Model(name="bench-model", created_at=start)
        session.add(model)
        session.flush()
        releases = {}
        for version in ("1", "2"):
            release = m.Release(model_id=model.id, version=version, manifest=manifest(version),
                                signed_by="bench", created_at=start)
            session.add(release)
            session.flush()
            for entry in release.manifest["variants"]:
                session.add(m.Variant(release_id=release.id, variant_id=entry["id"], format=entry["format"],
                                    precision=entry["precision"], runtime="onnxruntime", validation="passed",
                                    sha256=f"{release.id:02d}{entry['id']:>62}".replace(" ", "0")[:64],
                                    size_bytes=entry["size_bytes"], peak_rss_bytes=50_000_000))
            releases[version] = release
        model.stable_release_id = releases["1"].id
        state = RolloutState(stages=parse_stages(STAGES), phase=Phase.RUNNING, stage_index=1,
                             stage_started_at=stage_started.timestamp(), windows=DAY_WINDOWS)
        rollout = m.Rollout(model_id=model.id, candidate_id=releases["2"].id, baseline_id=releases["1"].id,
                          salt="bench-salt", phase=Phase.RUNNING.value, stage_index=1, spec={"guards": {}},
                          state=state.to_dict(), created_at=start, updated_at=stage_started,
                          reason="stage 2 (50%) started")
        session.add(rollout)
        session.flush()
        ids = {"model": model.id, "stable": releases["1"].id, "canary": releases["2"].id,
               "rollout": rollout.id}
    with engine.begin() as connection:
        rng = random.Random(3)
        connection.execute(insert(m.Device), [
            {"id": d["id"], "device_class": d["class"], "arch": "arm64", "os": "linux 6.1",
             "ram_bytes": 4 << 30, "runtimes": d["runtimes"], "credential_hash": f"{n:064x}",
             "revoked": False, "created_at": start,
             "admission": "pending" if d["fate"] == "pending" else "accepted",
             "last_seen_at": None if d["fate"] == "pending" else
             NOW - dt.timedelta(hours=2, seconds=rng.randrange(60)) if d["fate"] == "silent" else
             NOW - dt.timedelta(seconds=rng.randrange(60)),
             "attributes": {"app_version": "4.2.0"}} for n, d in enumerate(plan)])
        verdicts = []
        for w in range(DAY_WINDOWS):
            end = NOW - dt.timedelta(seconds=WINDOW * (DAY_WINDOWS - 1 - w))
            for guard in GUARDS:
                verdicts.append({"rollout_id": ids["rollout"], "window_end": end,
                                 "stage_index": 0 if end < stage_started else 1, "guard": guard,
                                 "scope": "all", "outcome": "pass", "decision": "continue",
                                 "reason": f"{guard}: canary within bounds", "dry_run": False,
                                 "stats": {"canary_rate": 0.011, "stable_rate": 0.010, "p_value": 0.4,
                                           "canary_inferences": 120_000, "stable_inferences": 121_000}})
        connection.execute(insert(m.Verdict), verdicts)
        target = f"rollout:{ids['rollout']}"
        audit = [{"at": start, "actor": "ops", "action": "release.publish", "target": "bench-model/2",
                  "detail": {}},
                 {"at": start, "actor": "ops", "action": "rollout.start", "target": target, "detail": {}},
                 {"at": stage_started, "actor": "controller", "action": "rollout.advance", "target": target,
                  "detail": {}}]
        audit += [{"at": start + dt.timedelta(minutes=n), "actor": "ops", "action": "console_sign_in",
                   "target": "token:1", "detail": {"role": "admin"}} for n in range(500)]
        connection.execute(insert(m.AuditEntry), audit)
        hooks = [connection.execute(insert(m.WebhookSubscription).values(
            url=f"https://hooks.example.com/{n}", secret_sealed="x", format="edgeship", created_by="ops",
            created_at=start)).inserted_primary_key[0] for n in range(3)]
        events = [connection.execute(insert(m.Event).values(kind="verdict_failed", rollout_id=ids["rollout"],
                                                          model="bench-model", created_at=start, payload={}))
                  .inserted_primary_key[0] for _ in range(300)]
        connection.execute(insert(m.WebhookDelivery), [
            {"subscription_id": hook, "event_id": event,
             "status": ("delivered", "failed", "pending")[(n + i) % 3], "attempts": 1 + n % 4,
             "last_status_code": 500 if n % 3 else 200, "last_error": None}
            for i, hook in enumerate(hooks) for n, event in enumerate(events)])
    return ids


def seed_reports(engine: Any, plan: list[dict[str, Any]], ids: dict[str, int], hours: float) -> int:
    """A report per reporting device per minute, oldest window first; returns the rows written."""
    cohorts = {d["id"]: assign_cohort("bench-salt", d["id"], 50) for d in plan}
    rng = random.Random(5)
    windows = int(hours * 3600 / WINDOW)
    written, batch, started = 0, [], time.perf_counter()
    for w in range(windows):
        end = NOW - dt.timedelta(seconds=WINDOW * (windows - 1 - w))
        batch.extend(window_rows(plan, end, ids, cohorts, rng))
        if len(batch) >= 100_000 or w == windows - 1:
            bulk_insert(engine, batch)
            written += len(batch)
            batch = []
            if w % 60 == 59 or w == windows - 1:
                rate = written / (time.perf_counter() - started)
                log(f"reports: {written:,} rows ({w + 1}/{windows} windows, {rate:,.0f} rows/s)")
    return written


def seed_points(app: Any, rollout_id: int) -> dict[str, Any]:
    """The chart points of the seeded reports, summed by the controller's code as if it claimed
    its first window now, then copied back over the rest of the day; returns the counts."""
    from rollout_server.db import session_scope
    from rollout_server.models import WindowPoint
    from rollout_server.window_points import record_window_points

    started = time.perf_counter()
    with session_scope(app) as session:
        summed = record_window_points(session, rollout_id, None, NOW, WINDOW)
    seconds = time.perf_counter() - started
    log(f"points: {summed} summed from the reports in {seconds:.1f} s")
    with session_scope(app) as session:
        points = [{c: getattr(p, c) for c in ("window_end", "arm", "inferences", "labelled", "correct",
                                              "load_failures", "errors", "devices", "p50_ms", "p95_ms")}
                  for p in session.query(WindowPoint).filter(WindowPoint.rollout_id == rollout_id)]
        span = WINDOW + max(p["window_end"] for p in points) - min(p["window_end"] for p in points)
        first = int(NOW.timestamp()) - WINDOW * DAY_WINDOWS
        copies, shift = [], span
        while min(p["window_end"] for p in points) - shift > first:
            copies += [{**p, "rollout_id": rollout_id, "window_end": p["window_end"] - shift} for p in points
                       if p["window_end"] - shift > first]
            shift += span
        session.execute(insert(WindowPoint), copies)
    return {"points_summed": summed, "points_seconds": round(seconds, 1), "points": summed + len(copies)}


# -- measuring ----------------------------------------------------------------------------------


def open_app(data_dir: Path, database_url: str | None = None) -> Any:
    from rollout_server.app import create_app

    return create_app({"DATA_DIR": str(data_dir), "CONTROLLER_ENABLED": False, "CLOCK": lambda: NOW,
                       "ANALYSIS_WINDOW_SECONDS": WINDOW, "CONSOLE_IDLE_MINUTES": 10**6,
                       "CONSOLE_SESSION_HOURS": 10**6, "DATABASE_URL": database_url})


def seed(app: Any, plan: list[dict[str, Any]], hours: float) -> dict[str, Any]:
    """Everything :func:`main` measures on, into ``app``'s database; returns the ids and counts."""
    engine = app.extensions["edgeship.engine"]
    started = time.perf_counter()
    ids = seed_fixtures(engine, plan)
    rows = seed_reports(engine, plan, ids, hours)
    points = seed_points(app, ids["rollout"])
    seconds = time.perf_counter() - started  # no ANALYZE: the server never runs one
    log(f"seeded {rows:,} reports and {points['points']:,} chart points in {seconds:.0f} s")
    return {"ids": ids, "reports": rows, "seed_seconds": round(seconds, 1), **points}


def measure_controller(app: Any, rollout_id: int, repeats: int) -> list[dict[str, Any]]:
    """Median and p95 of the controller's per-window work for the console: one claim a window
    after the last (sums the last two windows and the current one again, replaces their points),
    and the fleet snapshot (what runs, who fails). The last snapshot stays for the pages."""
    from rollout_server.db import session_scope
    from rollout_server.fleet_activity import take_if_due
    from rollout_server.window_points import record_window_points

    def points(session: Session) -> None:
        record_window_points(session, rollout_id, NOW - dt.timedelta(seconds=WINDOW), NOW, WINDOW)

    def snapshot(session: Session) -> None:
        assert take_if_due(session, NOW, dt.timedelta(0), dt.timedelta(minutes=15))

    rows = []
    for name, work in (("one window's chart points", points), ("the fleet snapshot", snapshot)):
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            with session_scope(app) as session:
                work(session)
            times.append(1000 * (time.perf_counter() - started))
        times = sorted(times[1:])
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        rows.append({"page": f"controller: {name}", "median_ms": round(statistics.median(times), 1),
                     "p95_ms": round(p95, 1), "max_ms": round(times[-1], 1), "bytes": 0})
    return rows


def signed_in_client(app: Any) -> Any:
    """A test client holding a live admin console session."""
    from rollout_server.console import sessions
    from rollout_server.models import Token

    with app.app_context():
        from rollout_server.db import db

        token = db().query(Token).filter(Token.role == "admin").order_by(Token.id).first()
        secret = sessions.start(db(), token, NOW)
        db().commit()
    client = app.test_client()
    client.set_cookie(sessions.COOKIE, secret, path="/console")
    return client


def measure(client: Any, path: str, requests: int) -> dict[str, Any]:
    """Median and p95 of ``requests`` GETs of ``path`` (after one warm-up), in ms."""
    first = client.get(path)
    if first.status_code != 200:
        raise SystemExit(f"{path}: HTTP {first.status_code}: {first.get_data(as_text=True)[:300]}")
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        times.append(1000 * (time.perf_counter() - started))
        assert response.status_code == 200, path
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"page": path, "median_ms": round(statistics.median(times), 1), "p95_ms": round(p95, 1),
            "max_ms": round(times[-1], 1), "bytes": len(first.get_data())}


def table(rows: list[dict[str, Any]], scale: str) -> str:
    lines = [f"console pages, server time ({scale})", "",
             f"| page | median ms | p95 ms | < {TARGET_MS:.0f} ms |", "|---|---:|---:|---|"]
    for row in rows:
        met = "—" if row["page"].startswith("controller") else "yes" if row["p95_ms"] < TARGET_MS else "NO"
        lines.append(f"| `{row['page']}` | {row['median_ms']:.1f} | {row['p95_ms']:.1f} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=2.0, help="hours of 1-minute report windows")
    parser.add_argument("--requests", type=int, default=20, help="timed GETs per page")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/edgeship-console-bench"))
    parser.add_argument("--reseed", action="store_true", help="seed again even if seeded at this scale")
    parser.add_argument("--only", default="", help="measure only the pages whose path holds this text")
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args(argv)
    load_before = os.getloadavg()
    data_dir = opts.data_dir / f"d{opts.devices}-h{opts.hours:g}"
    marker = data_dir / "seeded.json"
    if opts.reseed and data_dir.exists():
        import shutil

        shutil.rmtree(data_dir)
    plan = device_plan(opts.devices)
    if not marker.exists():
        if data_dir.exists():
            import shutil

            shutil.rmtree(data_dir)  # a seeding that did not finish
        data_dir.mkdir(parents=True)
        app = open_app(data_dir)
        log(f"seeding {opts.devices} devices, {opts.hours:g} h of 1-minute windows into {data_dir}")
        marker.write_text(json.dumps(seed(app, plan, opts.hours)))
        app.extensions["edgeship.engine"].dispose()
    seeded = json.loads(marker.read_text())
    app = open_app(data_dir)  # migrations newer than the seeding run here
    client = signed_in_client(app)
    rows = []
    for row in measure_controller(app, seeded["ids"]["rollout"], opts.requests):
        rows.append(row)
        log(f"{row['page']}: median {row['median_ms']} ms, p95 {row['p95_ms']} ms")
    for path in (p for p in PAGES if opts.only in p):
        rows.append(measure(client, path.format(rollout=seeded["ids"]["rollout"]), opts.requests))
        log(f"{rows[-1]['page']}: median {rows[-1]['median_ms']} ms, p95 {rows[-1]['p95_ms']} ms")
    scale = (f"{opts.devices:,} devices, a day of 1-minute windows ({seeded['points']:,} chart points), "
             f"{seeded['reports']:,} reports ({opts.hours:g} h), SQLite, {opts.requests} requests per page")
    text = table(rows, scale)
    print(text)
    db_bytes = sum(f.stat().st_size for f in data_dir.glob("edgeship.db*"))
    write_results(opts.out, text, load_before, devices=opts.devices, hours=opts.hours, backend="sqlite",
                  reports=seeded["reports"], seed_seconds=seeded["seed_seconds"], database_bytes=db_bytes,
                  requests=opts.requests, target_ms=TARGET_MS, pages=rows)
    pages = [r for r in rows if not r["page"].startswith("controller")]
    return 0 if all(r["p95_ms"] < TARGET_MS for r in pages) else 1


if __name__ == "__main__":
    sys.exit(main())
