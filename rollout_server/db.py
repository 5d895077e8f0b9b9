"""Engine and per-request sessions. SQLite by default (WAL, busy timeout); PostgreSQL by URL.

The schema is Alembic's (``rollout_server/migrations``): :func:`init_db` brings the database to
head at start, under a lock, so replicas and workers starting together migrate once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, g
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from rollout_server import db_files

if TYPE_CHECKING:
    from alembic.config import Config


#: the largest part of a SQLite database file read through ``mmap`` (address space, not memory).
SQLITE_MMAP_BYTES = 1 << 30


def make_engine(url: str, busy_timeout: float = 30, create: bool = True) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout (seconds a write waits for
    another's lock) so workers can share it. ``create=False``: a SQLite file is opened, never
    created (``mode=rw``; see :mod:`rollout_server.db_files`)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False})
        if not create and not in_memory(url):

            @event.listens_for(engine, "do_connect")
            def _open_existing(_dialect, _record, cargs, cparams) -> None:
                cargs[0] = Path(os.path.abspath(cargs[0])).as_uri() + "?mode=rw"
                cparams["uri"] = True

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # reads through a memory map instead of a read() per page: a connection's page cache
            # is dropped whenever another connection wrote, so each write transaction reads its
            # B-tree pages again (durability is unchanged: writes still go through the WAL)
            cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
            cursor.close()

        return engine
    engine = create_engine(url, pool_size=10, max_overflow=10)
    _ping_idle_connections(engine)
    return engine


#: a pooled connection unused for longer than this is pinged before it is handed out again.
PING_IDLE_SECONDS = 5.0


def _ping_idle_connections(engine: Engine) -> None:
    """``pool_pre_ping``, but only for connections that sat idle in the pool for
    :data:`PING_IDLE_SECONDS` (those are the ones a database restart or an idle timeout left
    dead): a connection in steady use is handed out without the extra round trip. A dead
    connection found by the ping is replaced (the pool retries the checkout); one that dies
    while in use fails that request, and the engine then drops the whole pool as usual."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection, record) -> None:
        record.info["edgeship.idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection, record, _proxy) -> None:
        idle_since = record.info.get("edgeship.idle_since")
        if idle_since is None or time.monotonic() - idle_since <= PING_IDLE_SECONDS:
            return
        failure = ping(dbapi_connection)
        if failure is not None:
            raise DisconnectionError(f"pooled connection failed its ping: {failure}") from failure


def ping(dbapi_connection: Any) -> Exception | None:
    """``SELECT 1`` on a DB-API connection: None if it answered, else what went wrong."""
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.rollback()
    except Exception as err:  # any failure: a connection not worth keeping
        return err
    return None


#: key of the PostgreSQL advisory lock held while the schema is migrated (any constant would do;
#: this one spells "edgeship" in ASCII).
MIGRATION_LOCK_KEY = 0x6564676573686970


def alembic_config(url: str | None = None) -> Config:
    """An alembic Config for the package's migrations (found as package data, so it also works
    from an installed wheel); ``url`` overrides the database the env script would derive."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("rollout_server") / "migrations"))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _migration_engine(url: str) -> Engine:
    """A short-lived engine for the upgrade. On SQLite its transactions start with
    ``BEGIN IMMEDIATE`` (the database's write lock) and include the DDL, so concurrent first
    starts wait for each other instead of racing; pysqlite would otherwise run DDL outside any
    transaction."""
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _manual_transactions(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None
            # batch operations of later revisions copy and drop tables, which enforced foreign
            # keys would refuse (and the pragma cannot change inside a transaction)
            dbapi_connection.execute("PRAGMA foreign_keys=OFF")

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def upgrade_schema(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` with alembic, in one transaction that holds a
    lock first: a PostgreSQL transaction-level advisory lock, SQLite's write lock. Several
    workers or replicas starting together thus migrate one after the other; the later ones find
    the schema at head and do nothing."""
    from alembic import command

    engine = _migration_engine(url)
    try:
        with _sqlite_file_lock(engine), engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """On SQLite, an exclusive ``flock`` on ``<database>.migrate-lock`` around the upgrade: on a
    brand-new file, connections racing to switch it to WAL get "database is locked" at once,
    without waiting for the busy timeout, so first starts take turns before connecting at all."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or engine.url.query.get("mode") == "memory":
        yield
        return
    import fcntl

    fd = os.open(f"{database}.migrate-lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def startup_lock(session: Session) -> Iterator[None]:
    """Hold the migration lock for the first-start writes in ``session`` (tokens, counter rows),
    so workers and replicas starting together on an empty database create them once.

    Commit the session inside the block: on PostgreSQL the lock is transaction-level (released at
    commit), on SQLite it is the ``flock`` the migration takes.
    """
    bind = session.get_bind()
    with _sqlite_file_lock(bind):
        if bind.dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        yield


def in_memory(url: str) -> bool:
    """True for an in-memory SQLite URL (tests): nothing on disk, empty at every start."""
    return url.startswith("sqlite") and (url.split("?")[0] in ("sqlite://", "sqlite:///:memory:")
                                         or "mode=memory" in url)


def init_db(app: Flask) -> None:
    """Migrate the schema to head (first start: create it, 0600), create the engine, check
    the database file before each request that may write, and close sessions after requests."""
    url = app.config["DATABASE_URL"]
    busy_timeout = float(app.config["DATABASE_BUSY_TIMEOUT_SECONDS"])
    path = db_files.sqlite_path(url)
    if path is not None:
        db_files.refuse_missing_database(app)
        db_files.secure_database_files(path)
    engine = make_engine(url, busy_timeout, create=False)
    if in_memory(url):  # one process, one connection per thread: migrate through the app's engine
        from alembic import command

        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    else:
        upgrade_schema(url)
    if path is not None:
        db_files.remember_database_file(app)
        app.before_request(db_files.check_database_file)
    app.extensions["edgeship.engine"] = engine
    app.extensions["edgeship.sessions"] = sessionmaker(engine, expire_on_commit=False)

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


def db() -> Session:
    """The request's session (created on first use, closed at teardown)."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["edgeship.sessions"]()
    return g.db_session


@contextmanager
def session_scope(app: Flask) -> Iterator[Session]:
    """A session outside a request (controller loop, CLI): commit on success, else roll back."""
    session = app.extensions["edgeship.sessions"]()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
