"""Migration 0009 (device attributes) on SQLite and PostgreSQL: devices from before it keep every
field and report no attributes, attributes are stored as JSON, and it goes down and up again
without losing the devices."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("alembic")

from alembic import command

from rollout_server.auth import hash_secret
from rollout_server.db import alembic_config, upgrade_schema
from tests.rollout_server.test_migration_0005 import CREATED, columns, execute
from tests.rollout_server.test_migrations import schema_diff, sqlite_url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_0009_adds_attributes_and_keeps_earlier_devices(backend, tmp_path, request):
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    upgrade_schema(url, "0008")
    execute(url, "INSERT INTO devices (id, device_class, arch, os, ram_bytes, runtimes, credential_hash, "
                 "revoked, created_at, admission) VALUES ('dev-1', 'rpi4', 'aarch64', 'Linux', 0, '{}', "
                 ":hash, false, :at, 'accepted')",
            hash=hash_secret("es_device"), at=CREATED)
    upgrade_schema(url, "0009")
    assert "attributes" in columns(url, "devices")
    assert execute(url, "SELECT id, device_class, attributes FROM devices") == [("dev-1", "rpi4", None)]
    execute(url, "UPDATE devices SET attributes = :value", value=json.dumps({"app_version": "4.2"}))
    (stored,), = execute(url, "SELECT attributes FROM devices")
    assert (json.loads(stored) if isinstance(stored, str) else stored) == {"app_version": "4.2"}

    command.downgrade(alembic_config(url), "0008")
    assert "attributes" not in columns(url, "devices")
    assert execute(url, "SELECT id, credential_hash FROM devices") == [("dev-1", hash_secret("es_device"))]
    upgrade_schema(url)
    assert schema_diff(url) == []
