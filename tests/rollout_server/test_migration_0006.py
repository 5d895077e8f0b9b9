"""Migration 0006 (rollout notifications: events, webhook subscriptions, deliveries) on SQLite and
PostgreSQL: it adds the three tables and the index the dispatcher reads by, and goes down and up."""

from __future__ import annotations

import pytest

pytest.importorskip("alembic")

from alembic import command
from sqlalchemy import inspect

from rollout_server.db import alembic_config, make_engine, upgrade_schema
from tests.rollout_server.test_migrations import schema_diff, sqlite_url

TABLES = {"events", "webhook_subscriptions", "webhook_deliveries"}


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def delivery_indexes(url: str) -> dict[str, list[str]]:
    engine = make_engine(url)
    try:
        return {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("webhook_deliveries")}
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_0006_adds_the_webhook_tables_and_goes_down_and_up_again(backend, tmp_path, request):
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    upgrade_schema(url, "0005")
    assert not TABLES & tables(url)
    upgrade_schema(url, "0006")
    assert tables(url) >= TABLES
    # each webhook's oldest pending delivery is found along this index
    assert delivery_indexes(url)["ix_webhook_deliveries_subscription_status"] == ["subscription_id", "status",
                                                                                  "id"]
    command.downgrade(alembic_config(url), "0005")
    assert not TABLES & tables(url)
    upgrade_schema(url)
    assert schema_diff(url) == []
