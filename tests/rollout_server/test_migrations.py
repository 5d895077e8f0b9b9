"""Alembic migrations on SQLite and on a real PostgreSQL: schema equals the models, round trip,
concurrent first starts migrate once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("flask")
pytest.importorskip("alembic")

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from rollout_server.db import alembic_config, make_engine, upgrade_schema
from rollout_server.models import Base

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


# --- migrations ---------------------------------------------------------------------------------


def schema_diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def versions(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(text("SELECT version_num FROM alembic_version")))
    finally:
        engine.dispose()


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'edgeship.db'}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migrated_schema_matches_the_models(backend, tmp_path, request):
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    upgrade_schema(url)
    assert schema_diff(url) == []
    assert versions(url) == [HEAD]
    engine = make_engine(url)
    try:
        fks = inspect(engine).get_foreign_keys("models")
    finally:
        engine.dispose()
    # the Model <-> Release cycle: the model's stable release is a real foreign key on both
    assert [(fk["constrained_columns"], fk["referred_table"]) for fk in fks] == [(["stable_release_id"],
                                                                                    "releases")]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_downgrade_to_nothing_and_upgrade_again(backend, tmp_path, request):
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    upgrade_schema(url)
    command.downgrade(alembic_config(url), "base")  # env.py's own connection, as from the CLI
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade_schema(url)
    assert schema_diff(url) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_first_starts_migrate_once(backend, tmp_path, request):
    """Six workers bring one empty database to head at the same moment: no error, one version."""
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait(timeout=30)
            upgrade_schema(url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert versions(url) == [HEAD]
    assert schema_diff(url) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_first_starts_create_one_set_of_tokens(backend, tmp_path, request):
    """Four workers start the app on one empty database at once: one admin and one enrollment
    token, each counter row once, no error."""
    from rollout_server.app import create_app
    from rollout_server.models import Counter, Token

    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            create_app({"DATA_DIR": str(tmp_path / f"worker-{i}"), "DATABASE_URL": url,
                        "CONTROLLER_ENABLED": False})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            roles = sorted(r for (r,) in connection.execute(text(f"SELECT role FROM {Token.__tablename__}")))
            names = [n for (n,) in connection.execute(text(f"SELECT name FROM {Counter.__tablename__}"))]
    finally:
        engine.dispose()
    assert roles == ["admin", "enroll"]
    assert len(names) == len(set(names)) > 0
    assert len(list(tmp_path.glob("worker-*/first-start-tokens.txt"))) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_a_database_with_reports_fills_their_totals(backend, tmp_path, request):
    """0002 sums the reports stored before it into ``report_totals`` (shard 0)."""
    from rollout_server.app import create_app
    from tests.rollout_server.conftest import auth, register, seed_release, variant_entry
    from tests.rollout_server.test_devices_and_reports import report
    from tests.rollout_server.test_report_ingestion import assert_totals_match_reports

    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    app = create_app({"DATA_DIR": str(tmp_path / "server"), "DATABASE_URL": url, "CONTROLLER_ENABLED": False})
    seed_release(app, "1", [variant_entry("tflite-int8", "litert", 0.4, "b" * 64)], stable=True)
    client = app.test_client()
    enroll = dict(line.split("=", 1) for line in (tmp_path / "server" / "first-start-tokens.txt")
                  .read_text().split())["EDGESHIP_ENROLL_TOKEN"]
    for device_class, cohort in (("rpi4", "stable"), ("rpi5", "canary"), ("rpi4", "stable")):
        _, credential = register(client, enroll, device_class=device_class)
        batch = [report(cohort=cohort, inferences=90 + i, labelled=20 + i) for i in range(3)]
        response = client.post("/v1/reports", json={"reports": batch}, headers=auth(credential))
        assert response.status_code == 200, response.json
    app.extensions["edgeship.engine"].dispose()
    command.downgrade(alembic_config(url), "0001")
    engine = make_engine(url)
    try:
        assert "report_totals" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    upgrade_schema(url)
    assert versions(url) == [HEAD]
    assert_totals_match_reports(app)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_0004_indexes_reports_by_device_and_window_end(backend, tmp_path, request):
    """0004 adds ``ix_reports_device_id_window_end`` (the baseline read's), its downgrade drops it."""
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")

    def report_indexes() -> dict[str, list[str]]:
        engine = make_engine(url)
        try:
            return {index["name"]: index["column_names"] for index in inspect(engine).get_indexes("reports")}
        finally:
            engine.dispose()

    upgrade_schema(url, "0003")
    assert "ix_reports_device_id_window_end" not in report_indexes()
    upgrade_schema(url, "0004")
    assert report_indexes()["ix_reports_device_id_window_end"] == ["device_id", "window_end"]
    command.downgrade(alembic_config(url), "0003")
    assert "ix_reports_device_id_window_end" not in report_indexes()
    upgrade_schema(url)
    assert report_indexes()["ix_reports_device_id_window_end"] == ["device_id", "window_end"]
    assert schema_diff(url) == []
