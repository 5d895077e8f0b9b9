"""Fixtures for the monitoring tests: Prometheus' binaries, a seeded rollout server, live servers.

``promtool`` and ``prometheus`` come from Debian's ``prometheus`` package (``make system-deps``
installs it as root). Missing: with ``CI`` set the tests that need them fail, otherwise they
skip with the reason (:func:`tests.skip_policy.missing`, checked before anything else).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.skip_policy import missing, require_module

INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus (Debian) — make system-deps does this"
MODEL = "digits-cnn"


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH; skips the test when missing, or fails it under CI."""
    path = shutil.which(name)
    if path is None:
        missing(f"Prometheus tests: {name} not found on PATH ({INSTALL_HINT})")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_binary("prometheus")


def seed_fleet(app) -> None:
    """Enough data for every catalogue metric: a stable release, a rolled-back rollout, a running
    rollout, one device with a report from its cohort (carrying every optional device value), and
    a rejected report batch."""
    from rollout_server.db import session_scope
    from rollout_server.models import Rollout
    from tests.rollout_server.conftest import auth, register, seed_release, variant_entry
    from tests.rollout_server.test_devices_and_reports import report

    seed_release(app, "1", [variant_entry("tflite-int8", "litert", 0.4, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.3, "b" * 64)])
    client = app.test_client()
    first_start = (Path(app.config["DATA_DIR"]) / "first-start-tokens.txt").read_text()
    tokens = dict(line.split("=", 1) for line in first_start.split())
    admin = auth(tokens["EDGESHIP_ADMIN_TOKEN"])

    def start_rollout() -> int:
        response = client.post("/v1/rollouts", json={"model": MODEL, "candidate_version": "2"}, headers=admin)
        assert response.status_code == 201, response.json
        return response.json["id"]

    rolled_back = start_rollout()
    with session_scope(app) as session:  # as the controller leaves a rollback (no analysis needed here)
        rollout = session.get(Rollout, rolled_back)
        rollout.phase = "rolled_back"
        rollout.state = {**rollout.state, "phase": "rolled_back"}
    start_rollout()
    device, credential = register(client, tokens["EDGESHIP_ENROLL_TOKEN"], device_class="rpi5")
    assignment = client.get(f"/v1/devices/{device}/assignment?model={MODEL}", headers=auth(credential)).json
    body = report(version=assignment["version"], variant=assignment["variant"]["id"],
                  cohort=assignment["cohort"], rollout_id=assignment["rollout_id"],
                  peak_rss_bytes=150 * 2**20, load_seconds=0.8, cpu_temp_celsius=-4.5, throttled=False)
    response = client.post("/v1/reports", json={"reports": [body]}, headers=auth(credential))
    assert response.status_code == 200, response.json
    refused = client.post("/v1/reports", json={"reports": [report(cohort="beta")]}, headers=auth(credential))
    assert refused.status_code == 400


@pytest.fixture(scope="session")
def seeded_app(tmp_path_factory: pytest.TempPathFactory):
    """A rollout server (SQLite in a temporary directory, no controller thread) with :func:`seed_fleet`."""
    require_module("flask")
    from rollout_server.app import create_app

    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("server")), "CONTROLLER_ENABLED": False})
    seed_fleet(app)
    return app


@pytest.fixture(scope="session")
def seeded_server(seeded_app) -> Iterator[str]:
    """The seeded app served by werkzeug in a thread; yields ``host:port``."""
    from tests.rollout_server.conftest import serving

    with serving(seeded_app) as port:
        yield f"127.0.0.1:{port}"
