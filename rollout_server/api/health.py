"""Liveness and readiness.

``/readyz`` is what a load balancer or an orchestrator asks before sending traffic, so it checks
what requests need, not only that the database answers a ``SELECT 1`` (which it still did with
its lock held for 36 s, its file deleted, or the artifact directory unwritable):

* **database**: the file is the one the server opened (:mod:`rollout_server.db_files`) and a write
  transaction can begin within :data:`PROBE_SECONDS` (SQLite: ``BEGIN IMMEDIATE``, the write
  lock; PostgreSQL: a transaction id, which a read-only server or standby refuses);
* **artifacts**: a file can be created, written, synced and deleted in the store.

Each failure is named in ``checks`` and in ``detail`` (503 ``not_ready``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flask import Blueprint, Flask, current_app, jsonify

from rollout_server.artifact_store import TMP_DIR
from rollout_server.db_files import database_file_problem
from rollout_server.errors import error_body

bp = Blueprint("health", __name__)

#: how long the readiness write probe waits for the database's write lock (seconds).
PROBE_SECONDS = 1.0


@bp.get("/healthz")
def healthz():
    """The process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """The database accepts a write and the artifact store is writable; 503 naming what is not."""
    app = current_app._get_current_object()
    checks = {"database": _database_problem(app) or "ok", "artifacts": _artifacts_problem(app) or "ok"}
    failed = {name: result for name, result in checks.items() if result != "ok"}
    if not failed:
        return jsonify(status="ready", checks=checks)
    detail = "; ".join(f"{name}: {result}" for name, result in failed.items())
    return jsonify({**error_body("not_ready", detail), "checks": checks}), 503


def _database_problem(app: Flask) -> str | None:
    problem = database_file_problem(app)
    if problem is not None:
        return problem
    engine = app.extensions["edgeship.engine"]
    try:
        if engine.dialect.name == "sqlite":
            _sqlite_write_lock(engine, app.config["DATABASE_BUSY_TIMEOUT_SECONDS"])
        else:
            with engine.begin() as connection:
                if engine.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(PROBE_SECONDS * 1000)}")
                    connection.exec_driver_sql("SELECT txid_current()")
                else:
                    connection.exec_driver_sql("SELECT 1")
    except Exception as err:  # any failure is the answer, not an error of this request
        app.logger.error("database not writable: %s", _first_line(err))
        return f"cannot write ({_first_line(err)})"
    return None


def _sqlite_write_lock(engine, busy_timeout: float) -> None:
    """Take SQLite's write lock (``BEGIN IMMEDIATE``) and let it go, waiting at most
    :data:`PROBE_SECONDS`; the connection's own busy timeout is put back after."""
    pooled = engine.raw_connection()
    try:
        cursor = pooled.dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(PROBE_SECONDS * 1000)}")
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("ROLLBACK")
            cursor.execute(f"PRAGMA busy_timeout = {int(float(busy_timeout) * 1000)}")
        finally:
            cursor.close()
    except BaseException:
        pooled.invalidate()  # its busy timeout may still be the probe's
        raise
    finally:
        pooled.close()


def _artifacts_problem(app: Flask) -> str | None:
    """A file made, written, synced and deleted where a publish writes: the store itself (new
    ``<sha256[:2]>`` directories) and its staging directory."""
    root = Path(app.config["DATA_DIR"]) / "artifacts"
    try:
        for directory in (root, root / TMP_DIR):
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".ready-", suffix=".part", dir=directory)
            try:
                os.write(fd, b"ready")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
    except OSError as err:
        app.logger.error("artifact store not writable: %s", err)
        return f"cannot write the artifact store ({err.strerror or type(err).__name__})"
    return None


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__
