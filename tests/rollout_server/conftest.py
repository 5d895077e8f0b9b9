"""Fixtures for the rollout server: a fresh app per test, its first-start tokens, devices."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

pytest.importorskip("flask")

from rollout_server.app import create_app
from rollout_server.auth import FIRST_START_FILE
from rollout_server.db import session_scope
from rollout_server.models import Model, Release, Variant
from tests.rollout_server.postgres import postgresql_server

ROOT = Path(__file__).resolve().parents[2]


#: settings of every test app whose reports are dated on fixed days (a rollout's timeline from
#: ``test_rollouts.T0``): the server refuses windows older than 14 days by its real clock, so
#: without this such tests start failing two weeks after the day they were written. The age
#: bound has its own tests (test_report_claims.py), dated from the real clock.
FIXED_DAYS: dict[str, Any] = {"REPORT_MAX_AGE_SECONDS": 20 * 365 * 86400}


@pytest.fixture
def app(request, tmp_path: Path):
    """The app on SQLite; on PostgreSQL for tests parametrized with :data:`BOTH_BACKENDS`."""
    config = {"DATA_DIR": str(tmp_path / "server"), "CONTROLLER_ENABLED": False, **FIXED_DAYS}
    if getattr(request, "param", "sqlite") == "postgresql":
        config["DATABASE_URL"] = request.getfixturevalue("pg_url")
    return create_app(config)


#: run a test that uses ``app`` on SQLite and on PostgreSQL (the session's server).
BOTH_BACKENDS = pytest.mark.parametrize("app", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def tokens(app) -> dict[str, str]:
    text = (Path(app.config["DATA_DIR"]) / FIRST_START_FILE).read_text()
    pairs = dict(line.split("=", 1) for line in text.split())
    return {"admin": pairs["EDGESHIP_ADMIN_TOKEN"], "enroll": pairs["EDGESHIP_ENROLL_TOKEN"]}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fake_manifest(version: str, variants: list[dict]) -> dict:
    """A manifest-shaped dict for tests that seed the database directly (not signed)."""
    return {
        "schema": "edgeship.manifest/v1", "model": "digits-cnn", "version": version,
        "task": {"kind": "classification",
                 "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32"}],
                 "outputs": [{"name": "output", "shape": [1, 10], "dtype": "float32"}]},
        "reference": {"format": "torch", "sha256": "0" * 64, "params": 1, "macs": 1},
        "golden": {"file": "golden.npz", "sha256": "f" * 64, "count": 4},
        "variants": variants,
    }


def variant_entry(variant_id: str, runtime: str, p50: float, sha: str, validation: str = "passed",
                  size: int = 1000, peak: int = 50_000_000) -> dict:
    fmt = {"onnxruntime": "onnx", "litert": "tflite", "coreml": "coreml"}[runtime]
    return {"id": variant_id, "format": fmt, "precision": "int8", "compression": [],
            "file": f"{variant_id}.bin", "sha256": sha, "size_bytes": size,
            "runtime": {"name": runtime, "min_version": "1.0"}, "validation": validation,
            "metrics": {"agreement": 1.0, "latency_ms": {"p50": p50, "p95": p50}, "peak_rss_bytes": peak}}


def seed_release(app, version: str, variants: list[dict], stable: bool = False) -> int:
    """Insert a release (and the model) straight into the database; returns the release id."""
    with session_scope(app) as session:
        model = session.query(Model).filter_by(name="digits-cnn").one_or_none()
        if model is None:
            model = Model(name="digits-cnn")
            session.add(model)
            session.flush()
        release = Release(model_id=model.id, version=version, manifest=fake_manifest(version, variants),
                          signed_by="test")
        session.add(release)
        session.flush()
        for entry in variants:
            session.add(Variant(
                release_id=release.id, variant_id=entry["id"], format=entry["format"],
                precision=entry["precision"], runtime=entry["runtime"]["name"],
                runtime_min_version=entry["runtime"]["min_version"], validation=entry["validation"],
                sha256=entry["sha256"], size_bytes=entry["size_bytes"],
                peak_rss_bytes=entry["metrics"]["peak_rss_bytes"],
            ))
        if stable:
            model.stable_release_id = release.id
        return release.id


def register(client, enroll: str, device_class: str = "rpi4", runtimes: dict | None = None,
             ram_bytes: int = 4 * 2**30) -> tuple[str, str]:
    response = client.post("/v1/devices/register", json={
        "enrollment_token": enroll, "device_class": device_class, "arch": "aarch64",
        "os": "Raspberry Pi OS 12", "ram_bytes": ram_bytes,
        "runtimes": runtimes if runtimes is not None else {"onnxruntime": "1.20.1", "litert": "2.3.0"},
    })
    assert response.status_code == 201, response.json
    return response.json["device_id"], response.json["credential"]


@contextlib.contextmanager
def serving(app) -> Iterator[int]:
    """``app`` served by werkzeug in a thread on a free loopback port; yields the port."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def live_server(app) -> Iterator[str]:
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


def edgeship(*args: Any, token: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("EDGESHIP_TOKEN", None)
    if token:
        env["EDGESHIP_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "edgeship.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


@pytest.fixture(scope="session")
def postgresql():
    yield from postgresql_server()


@pytest.fixture
def pg_url(postgresql) -> str:
    """A fresh, empty database on the session's server."""
    return postgresql.create_database()


def running_rollout(app, live_server: str, tokens: dict, stages: list, guards: dict, *, canary: int,
                    stable: int) -> dict:
    """A running rollout of v2 against v1 (both seeded) and enrolled devices' credentials by the
    cohort the server's bucketing gave them: ``{"id", "stable": [...], "canary": [...]}``.

    The rollout's salt is random, so devices are enrolled until the arms hold ``canary`` and
    ``stable`` devices, not as a fixed fleet whose canary share may by chance be too small.
    """
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
    client = app.test_client()
    created = requests.post(f"{live_server}/v1/rollouts", headers=auth(tokens["admin"]), timeout=30, json={
        "model": "digits-cnn", "candidate_version": "2", "stages": stages, "guards": guards})
    assert created.status_code == 201, created.text
    cohorts: dict[str, list[str]] = {"stable": [], "canary": []}
    while len(cohorts["canary"]) < canary or len(cohorts["stable"]) < stable:
        assert sum(map(len, cohorts.values())) < 20 * (canary + stable)
        device, credential = register(client, tokens["enroll"])
        answer = requests.get(f"{live_server}/v1/devices/{device}/assignment?model=digits-cnn",
                              headers=auth(credential), timeout=30).json()
        cohorts[answer["cohort"]].append(credential)
    return {"id": created.json()["id"], **cohorts}
