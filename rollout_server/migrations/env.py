"""Alembic environment: the models' metadata, and the database the server would use.

Called two ways:

* by :func:`rollout_server.db.upgrade_schema` at server start, which passes an open connection
  (already inside a transaction that holds the migration lock) in ``config.attributes``;
* from the command line (``python -m rollout_server.migrations ...``), which connects to the
  app's ``DATABASE_URL``: ``sqlalchemy.url`` if set, else what :func:`rollout_server.config.apply_config`
  derives from the ``EDGESHIP_*`` environment (the SQLite file in the data directory by default).
"""

from __future__ import annotations

from pathlib import Path

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from rollout_server.models import Base

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from flask import Flask

    from rollout_server.config import apply_config

    app = Flask("rollout_server.migrations")
    apply_config(app, None)
    Path(app.config["DATA_DIR"]).mkdir(parents=True, exist_ok=True)  # as the server does
    return app.config["DATABASE_URL"]


def configure(connection: Connection | None = None, url: str | None = None) -> None:
    dialect = connection.dialect.name if connection is not None else url.split(":", 1)[0].split("+")[0]
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later revisions get "move and copy" batch operations.
        render_as_batch=dialect == "sqlite",
        compare_type=True,
        literal_binds=connection is None,
        dialect_opts={"paramstyle": "named"} if connection is None else {},
    )


def run_migrations_offline() -> None:
    """``--sql``: print the DDL instead of running it."""
    configure(url=database_url())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    from rollout_server.db import MIGRATION_LOCK_KEY, make_engine

    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            configure(connection)
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":  # the lock the servers take at start
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                       {"key": MIGRATION_LOCK_KEY})
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
