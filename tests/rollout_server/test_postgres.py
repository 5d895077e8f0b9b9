"""The rollout server on a real PostgreSQL: the app's rollout flow, and two replicas on one database.

Migrations are tested in ``test_migrations.py``.

The server is a throwaway cluster started once per session (:mod:`tests.rollout_server.postgres`);
each test gets a fresh, empty database. Skipped when PostgreSQL's server binaries are missing,
except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flask")
pytest.importorskip("alembic")

from sqlalchemy import func, select, text

from edgeship.contract.latency import histogram
from edgeship.contract.sketch import LatencySketch, bucket_of
from rollout_server.app import create_app
from rollout_server.auth import FIRST_START_FILE
from rollout_server.config import DEFAULTS
from rollout_server.controller import step_all
from rollout_server.db import session_scope
from rollout_server.models import AuditEntry, Model, Rollout, Verdict
from tests.processes import stop_processes
from tests.rollout_server.conftest import FIXED_DAYS, auth, register, seed_release, variant_entry
from tests.rollout_server.postgres import free_port
from tests.rollout_server.test_migrations import HEAD, schema_diff, versions
from tests.rollout_server.test_rollouts import (
    FLEET_SIZE,
    GUARDS,
    STAGES,
    T0,
    assignments,
    create,
    run_until_decided,
    start_stage_at,
)

# --- the app on PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def app(pg_url, tmp_path):
    """Overrides conftest's SQLite app: the same factory on PostgreSQL."""
    return create_app({"DATABASE_URL": pg_url, "DATA_DIR": str(tmp_path / "server"),
                       "CONTROLLER_ENABLED": False, **FIXED_DAYS})


@pytest.fixture
def fleet(app, client, tokens):
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
    # FLEET_SIZE, not fewer: device ids are random, and with 120 the canary had fewer devices
    # than the load-failure guard's minimum in 0.6% of runs, so its stage held (test_rollouts.py)
    return [register(client, tokens["enroll"], device_class="rpi4" if i % 2 else "android")
            for i in range(FLEET_SIZE)]


def test_the_app_on_postgresql_ramps_and_promotes_a_good_candidate(app, client, tokens, fleet):
    assert app.config["DATABASE_URL"].startswith("postgresql+psycopg://")
    response = create(client, tokens)
    assert response.status_code == 201, response.json
    rollout_id = response.json["id"]
    canary = {d for d, a in assignments(client, fleet).items() if a["cohort"] == "canary"}
    assert 0 < len(canary) < 40
    phases: list = []
    run_until_decided(app, client, tokens, fleet, rollout_id, {"stable": 0.01, "canary": 0.01},
                      windows=11, seed=0, phases=phases)
    assert phases[-1][0] == "promoted", phases
    assert ("running", 50.0) in phases
    with session_scope(app) as session:
        assert session.scalars(select(Model)).one().stable_release.version == "2"
    assert {a["version"] for a in assignments(client, fleet).values()} == {"2"}
    # a replayed report is refused by the database's unique constraint, not stored twice
    device, credential = fleet[0]
    body = client.get(f"/v1/devices/{device}/assignment?model=digits-cnn", headers=auth(credential)).json
    report = {"id": "replayed", "model": "digits-cnn", "version": body["version"],
              "variant": body["variant"]["id"], "rollout_id": None, "cohort": body["cohort"],
              "window_start": T0.isoformat(), "window_end": (T0 + dt.timedelta(seconds=30)).isoformat(),
              "inferences": 10, "errors": {}, "latency_counts": histogram([0.004] * 10)}
    first = client.post("/v1/reports", json={"reports": [report]}, headers=auth(credential))
    second = client.post("/v1/reports", json={"reports": [report]}, headers=auth(credential))
    assert first.json["accepted"] == ["replayed"] and second.json["duplicates"] == ["replayed"]
    with session_scope(app) as session:
        assert session.scalar(text("SELECT count(*) FROM reports WHERE report_id = 'replayed'")) == 1
    # a schema-2 report: its sketch is stored and summed into latency_totals in the same statement
    sketch = LatencySketch()
    sketch.add_all([0.004] * 7 + [0.0002] * 3)
    v2 = {**report, "id": "sketched", "schema": 2, "latency": sketch.to_wire()}
    del v2["latency_counts"]
    assert client.post("/v1/reports", json={"reports": [v2]}, headers=auth(credential)).status_code == 200
    with session_scope(app) as session:
        stored = session.scalar(text("SELECT latency_sketch FROM reports WHERE report_id = 'sketched'"))
        assert LatencySketch.from_wire(json.loads(stored)) == sketch
        totals = dict(session.execute(
            text("SELECT bucket, sum(count) FROM latency_totals GROUP BY bucket")).all())
        assert totals == {bucket_of(0.004): 7, bucket_of(0.0002): 3}


def test_the_app_on_postgresql_rolls_back_a_bad_candidate(app, client, tokens, fleet):
    rollout_id = create(client, tokens).json["id"]
    status = run_until_decided(app, client, tokens, fleet, rollout_id, {"stable": 0.01, "canary": 0.08})
    assert status["phase"] == "rolled_back"
    assert {a["version"] for a in assignments(client, fleet).values()} == {"1"}


# --- two replicas on one database ---------------------------------------------------------------

#: each replica caches models and rollouts for this long (rollout_server/hot_cache.py): a change
#: made through one replica reaches devices polling the other one within it, not at once.
CACHE_SECONDS = DEFAULTS["ASSIGNMENT_CACHE_SECONDS"]


def wait_for_replicas() -> None:
    """Let the other replica's assignment cache expire (the staleness bound under test)."""
    time.sleep(CACHE_SECONDS)



def replica_main(url: str, data_dir: str, ready, commands, results, barrier) -> None:
    """One server replica in its own OS process: the app on ``url`` served over real HTTP
    (werkzeug, threaded, as ``edgeship server`` with one worker), and the controller pass
    :func:`step_all` run whenever the test sends a ``now`` — both replicas pass a barrier first,
    so their passes over the same window really race."""
    try:
        import logging

        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        app = create_app({"DATABASE_URL": url, "DATA_DIR": data_dir, "CONTROLLER_ENABLED": False,
                          **FIXED_DAYS})
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ready.put(("ready", os.getpid(), server.port))
    except BaseException:
        ready.put(("error", os.getpid(), traceback.format_exc()))
        return
    while (now := commands.get()) is not None:
        try:
            barrier.wait(timeout=60)
            decisions = step_all(app, now)
            results.put(("ok", os.getpid(), {rid: d.action.value for rid, d in decisions.items()}))
        except BaseException:
            results.put(("error", os.getpid(), traceback.format_exc()))
    server.shutdown()


class Replicas:
    """Two replica processes on one database, started at the same moment on an empty schema."""

    def __init__(self, url: str, root: Path, count: int = 2) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.results, self.barrier = ctx.Queue(), ctx.Queue(), ctx.Barrier(count)
        self.commands = [ctx.Queue() for _ in range(count)]
        self.analysed_by: list[tuple[int, int]] = []  # (rollout id, replica pid) per analysed window
        self.data_dirs = [root / f"replica{i}" for i in range(count)]
        self.processes = [ctx.Process(target=replica_main, daemon=True,
                                      args=(url, str(d), self.ready, q, self.results, self.barrier))
                          for d, q in zip(self.data_dirs, self.commands, strict=True)]
        for process in self.processes:
            process.start()
        self.ports = []
        for _ in range(count):
            status, pid, detail = self.ready.get(timeout=120)
            assert status == "ready", f"replica {pid} failed to start:\n{detail}"
            self.ports.append(detail)
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]

    def step(self, now: dt.datetime) -> list[dict[int, str]]:
        """Every replica runs one controller pass at ``now``; their decisions, one dict each."""
        for commands in self.commands:
            commands.put(now)
        out = []
        for _ in self.commands:
            status, pid, detail = self.results.get(timeout=120)
            assert status == "ok", f"replica {pid}:\n{detail}"
            out.append(detail)
            for rollout_id in detail:
                self.analysed_by.append((rollout_id, pid))
        return out

    def tokens(self) -> dict[str, str]:
        """The first-start tokens (from the replica whose start created them)."""
        files = [d / FIRST_START_FILE for d in self.data_dirs if (d / FIRST_START_FILE).exists()]
        assert files, "no replica wrote first-start tokens"
        pairs = dict(line.split("=", 1) for line in files[0].read_text().split())
        return {"admin": pairs["EDGESHIP_ADMIN_TOKEN"], "enroll": pairs["EDGESHIP_ENROLL_TOKEN"]}

    def close(self) -> None:
        for commands in self.commands:
            commands.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


class HttpFleet:
    """Devices talking real HTTP; device ``i`` talks to replica ``i % 2`` (a load balancer)."""

    def __init__(self, urls: list[str], enroll: str, size: int) -> None:
        import requests

        self.sessions = [requests.Session() for _ in urls]
        self.urls = urls
        self.devices: list[tuple[str, str]] = []
        self.cohorts: dict[str, dict] = {}
        for i in range(size):
            response = self._call(i, "post", "/v1/devices/register", json={
                "enrollment_token": enroll, "device_class": "rpi4" if i % 2 else "android",
                "arch": "aarch64", "os": "Raspberry Pi OS 12", "ram_bytes": 4 * 2**30,
                "runtimes": {"onnxruntime": "1.20.1", "litert": "2.3.0"}})
            assert response.status_code == 201, response.text
            self.devices.append((response.json()["device_id"], response.json()["credential"]))

    def _call(self, i: int, method: str, path: str, **kwargs):
        k = i % len(self.urls)
        return self.sessions[k].request(method, self.urls[k] + path, timeout=30, **kwargs)

    def check_in(self) -> dict[str, dict]:
        """Every device asks for its assignment."""
        for i, (device, credential) in enumerate(self.devices):
            response = self._call(i, "get", f"/v1/devices/{device}/assignment?model=digits-cnn",
                                  headers=auth(credential))
            assert response.status_code == 200, response.text
            self.cohorts[device] = response.json()
        return self.cohorts

    def report(self, end: dt.datetime, error_rate: dict[str, float], seed: int, per_device: int = 200):
        """Every device posts one window, errors drawn with its cohort's rate."""
        rng = np.random.default_rng(seed)
        for i, (device, credential) in enumerate(self.devices):
            body = self.cohorts[device]
            errors = round(per_device * error_rate[body["cohort"]])  # exact: see test_rollouts
            report = {"id": str(uuid.uuid4()), "model": "digits-cnn", "version": body["version"],
                      "variant": body["variant"]["id"], "rollout_id": body["rollout_id"],
                      "cohort": body["cohort"], "window_start": (end - dt.timedelta(seconds=30)).isoformat(),
                      "window_end": end.isoformat(), "inferences": per_device,
                      "errors": {"runtime_error": errors},
                      "latency_counts": histogram(
                          rng.lognormal(np.log(0.004), 0.2, size=per_device - errors)),
                      "labelled": per_device // 2, "correct": round(per_device // 2 * 0.97)}
            response = self._call(i, "post", "/v1/reports", json={"reports": [report]},
                                  headers=auth(credential))
            assert response.status_code == 200, response.text


def drive(replicas: Replicas, fleet: HttpFleet, admin: str, rollout_id: int, app,
          error_rate: dict[str, float], seed: int, quiet_windows: int = 2,
          max_windows: int = 14) -> list[tuple[str, float]]:
    """Step window after window until the rollout ends: first ``quiet_windows`` with no reports
    (the rollout holds), then every device reports before each pass. Checks that every window
    was analysed by exactly one of the racing replicas. Returns (phase, canary %) per window.

    Devices check in the cache TTL after a change (the rollout's creation, a new stage): the
    replica that did not make the change may serve the old assignment until then."""
    import requests

    start = T0 + dt.timedelta(hours=seed)
    start_stage_at(app, rollout_id, start)
    wait_for_replicas()
    fleet.check_in()
    phases: list[tuple[str, float]] = []
    for window in range(1, max_windows + 1):
        now = start + dt.timedelta(seconds=60 * window)
        if window > quiet_windows:
            fleet.report(now, error_rate, seed=seed + window)
        decisions = replicas.step(now)
        assert sum(rollout_id in d for d in decisions) == 1, decisions  # one replica analysed it
        status = requests.get(f"{replicas.urls[window % 2]}/v1/rollouts/{rollout_id}",
                              headers=auth(admin), timeout=30).json()
        phases.append((status["phase"], status["canary_percent"]))
        if status["phase"] != "running":
            break
        if len(phases) < 2 or phases[-1] != phases[-2]:
            wait_for_replicas()
            fleet.check_in()  # a new stage: devices pick up their (sticky) cohort
    return phases


def check_exactly_once(app, rollout_id: int, windows: int) -> dict[str, int]:
    """One set of verdicts and one decision per analysed window; returns the controller's audit
    entries (its transitions) as action → count."""
    with session_scope(app) as session:
        rows = session.execute(select(Verdict.window_end, Verdict.stage_index, Verdict.guard,
                                      Verdict.scope, Verdict.decision)
                               .where(Verdict.rollout_id == rollout_id)).all()
        audit = session.execute(select(AuditEntry.action, func.count())
                                .where(AuditEntry.target == f"rollout:{rollout_id}",
                                       AuditEntry.actor == "controller")
                                .group_by(AuditEntry.action)).all()
    by_window: dict[dt.datetime, list] = {}
    for row in rows:
        by_window.setdefault(row.window_end, []).append(row)
    assert len(by_window) == windows, sorted(by_window)
    for window_end, verdicts in by_window.items():
        assert len({(v.guard, v.scope) for v in verdicts}) == len(verdicts), (window_end, verdicts)
        assert len({v.decision for v in verdicts}) == 1, (window_end, verdicts)
        assert len({v.stage_index for v in verdicts}) == 1, (window_end, verdicts)
    return dict(audit)


def test_two_replicas_on_one_postgresql_advance_each_rollout_exactly_once(pg_url, tmp_path):
    replicas = Replicas(pg_url, tmp_path)  # both migrate an empty database at the same moment
    try:
        assert versions(pg_url) == [HEAD] and schema_diff(pg_url) == []
        tokens = replicas.tokens()
        app = create_app({"DATABASE_URL": pg_url, "DATA_DIR": str(tmp_path / "seeder"),
                          "CONTROLLER_ENABLED": False, **FIXED_DAYS})
        seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
        seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
        seed_release(app, "3", [variant_entry("onnx-int4", "onnxruntime", 0.4, "c" * 64)])
        fleet = HttpFleet(replicas.urls, tokens["enroll"], size=FLEET_SIZE)  # see the fleet fixture
        import requests

        def create_rollout(version: str) -> int:
            response = requests.post(f"{replicas.urls[0]}/v1/rollouts", headers=auth(tokens["admin"]),
                                     json={"model": "digits-cnn", "candidate_version": version,
                                           "stages": STAGES, "guards": GUARDS}, timeout=30)
            assert response.status_code == 201, response.text
            return response.json()["id"]

        # a good candidate: 10% -> 50% -> 100% -> promoted, each step taken once
        good = create_rollout("2")
        phases = drive(replicas, fleet, tokens["admin"], good, app, {"stable": 0.01, "canary": 0.01}, seed=1)
        assert phases[-1][0] == "promoted", phases
        assert ("running", 10.0) in phases and ("running", 50.0) in phases, phases
        audit = check_exactly_once(app, good, windows=len(phases))
        advances = len({10.0} | {percent for phase, percent in phases if phase == "running"}) - 1
        assert audit == {"rollout.advance": advances, "rollout.promote": 1}, (audit, phases)
        with session_scope(app) as session:
            assert session.scalars(select(Model)).one().stable_release.version == "2"

        # a bad candidate against the new stable: rolled back once, everyone back on 2
        bad = create_rollout("3")
        phases = drive(replicas, fleet, tokens["admin"], bad, app, {"stable": 0.01, "canary": 0.08}, seed=50)
        assert phases[-1][0] == "rolled_back", phases
        audit = check_exactly_once(app, bad, windows=len(phases))
        assert audit == {"rollout.rollback": 1}, (audit, phases)
        wait_for_replicas()  # within the TTL of the rollback every device, on either replica, is back
        assert {a["version"] for a in fleet.check_in().values()} == {"2"}
        with session_scope(app) as session:
            assert session.scalars(select(Model)).one().stable_release.version == "2"
            assert [r.phase for r in session.scalars(select(Rollout).order_by(Rollout.id))] == [
                "promoted", "rolled_back"]
        # a window already analysed is not analysed again by either replica
        assert replicas.step(T0 + dt.timedelta(hours=50, seconds=60)) == [{}, {}]
        wins = Counter(pid for _, pid in replicas.analysed_by)
        print(f"windows analysed per replica process: {dict(wins)}")  # both usually win some
    finally:
        replicas.close()


# --- `edgeship server` on PostgreSQL ------------------------------------------------------------


def test_edgeship_server_processes_start_together_on_an_empty_postgresql(pg_url, tmp_path):
    """The real command, twice at once (one with two uvicorn workers): both migrate safely and serve."""
    import requests

    ports = [free_port(), free_port()]
    env = {**os.environ, "EDGESHIP_CONTROLLER_INTERVAL_SECONDS": "3600"}
    logs = [tmp_path / f"server{i}.log" for i in range(2)]
    processes = []
    for i, (port, log) in enumerate(zip(ports, logs, strict=True)):
        with open(log, "w") as out:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "edgeship.cli", "server", "--db", pg_url, "--port", str(port),
                 "--data-dir", str(tmp_path / f"server{i}"), *(["--workers", "2"] if i else [])],
                env=env, stdout=out, stderr=subprocess.STDOUT))
    try:
        for process, port, log in zip(processes, ports, logs, strict=True):
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.2)
        assert versions(pg_url) == [HEAD]
        assert schema_diff(pg_url) == []
    finally:
        stop_processes(*processes)
