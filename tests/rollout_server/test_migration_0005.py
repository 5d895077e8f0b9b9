"""Migration 0005 (device admission, token policies, credential rotation, assigned releases) on
SQLite and PostgreSQL: devices and tokens from before it keep working, unchanged, and it goes
down and up again without losing them."""

from __future__ import annotations

import datetime as dt

import pytest

pytest.importorskip("alembic")

from alembic import command
from sqlalchemy import inspect, text

from rollout_server.auth import hash_secret
from rollout_server.db import alembic_config, make_engine, upgrade_schema
from tests.rollout_server.test_migrations import schema_diff, sqlite_url

CREATED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def columns(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def execute(url: str, sql: str, **params) -> list:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(sql), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_0005_keeps_earlier_devices_and_tokens_working(backend, tmp_path, request):
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    upgrade_schema(url, "0004")
    execute(url, "INSERT INTO tokens (name, role, token_hash, revoked, created_at) "
                 "VALUES ('old-enroll', 'enroll', :hash, false, :at)",
            hash=hash_secret("es_enroll"), at=CREATED)
    execute(url, "INSERT INTO devices (id, device_class, arch, os, ram_bytes, runtimes, credential_hash, "
                 "revoked, created_at) VALUES ('dev-1', 'rpi4', 'aarch64', 'Linux', 0, '{}', :hash, false, "
                 ":at)",
            hash=hash_secret("es_device"), at=CREATED)
    upgrade_schema(url, "0005")
    (admission, issued, previous), = execute(
        url, "SELECT admission, credential_issued_at, previous_credential_hash FROM devices")
    assert (admission, issued, previous) == ("accepted", None, None)
    (uses, max_uses, expires), = execute(url, "SELECT uses, max_uses, expires_at FROM tokens")
    assert (uses, max_uses, expires) == (0, None, None)
    assert {"device_id", "release_id", "assigned_at"} <= columns(url, "device_releases")
    upgrade_schema(url)  # the models are head's, which later revisions add to
    assert schema_diff(url) == []

    from rollout_server.app import create_app

    app = create_app({"DATA_DIR": str(tmp_path / "server"), "DATABASE_URL": url, "CONTROLLER_ENABLED": False})
    client = app.test_client()
    listed = client.post("/v1/devices/register", json={
        "enrollment_token": "es_enroll", "device_class": "rpi5", "arch": "aarch64", "os": "Linux",
        "ram_bytes": 0, "runtimes": {}})
    assert listed.status_code == 201 and listed.json["state"] == "active"  # the old token still enrolls
    refused = client.get("/v1/devices/dev-1/assignment?model=m",
                         headers={"Authorization": "Bearer es_device"})
    assert refused.status_code == 404 and refused.json["detail"] == "no model 'm'"  # authenticated
    app.extensions["edgeship.engine"].dispose()

    command.downgrade(alembic_config(url), "0004")  # env.py's own connection, as from the CLI
    assert "admission" not in columns(url, "devices") and "uses" not in columns(url, "tokens")
    assert len(execute(url, "SELECT id FROM devices")) == 2
    upgrade_schema(url)
    assert schema_diff(url) == []
