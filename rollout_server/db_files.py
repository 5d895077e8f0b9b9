"""The database's files on disk: private, never silently recreated, and checked before writes.

Why: a SQLite file deleted under a running server is still open, so writes kept succeeding into
a file no one could see, and the next start made an empty database and new first-start tokens
over the old token file: every device got 401 and the operator lost the admin token. So:

* the files are created 0600 (SQLite gives ``-wal`` and ``-shm`` the main file's mode), and an
  older database's files are narrowed to 0600 at start;
* the app's engine opens the file with ``mode=rw``, which never creates it (the migration, at
  start, is the one place a database file is made);
* the file's identity (device, inode) is remembered at start, and every request that may write
  first checks the path still names that file (:func:`check_database_file`): a deleted or
  replaced file answers 503 ``database_unavailable`` instead of writing where nothing survives;
* a start that finds an empty (or missing) database in a data directory that has been in use
  (:func:`data_dir_in_use`) refuses to start (:class:`StartupRefused`) instead of minting tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, current_app, request
from sqlalchemy.engine import make_url

from edgeship.contract.errors import EdgeshipError
from rollout_server.errors import ServiceUnavailable

#: what the files of a SQLite database are called, next to the database file itself.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")
#: written at first start: this data directory has a database (its kind and where, no password).
MARKER_FILE = "database-created.txt"
#: the tokens of a first start, written once (rollout_server/auth.py)
FIRST_START_FILE = "first-start-tokens.txt"
#: methods that never write (through the API; an assignment poll's last_seen_at aside).
READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class StartupRefused(EdgeshipError):
    """The server will not start on this database and data directory (the message says why and
    what to do)."""


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (absolute), or None (PostgreSQL, in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or parsed.query.get("mode") == "memory" \
            or database.startswith("file:"):
        return None
    return Path(os.path.abspath(database))


def secure_database_files(path: Path) -> None:
    """Create the database file 0600 if missing (before SQLite would create it 0644) and narrow
    the mode of existing database files to 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for suffix in SQLITE_SUFFIXES:
        name = Path(f"{path}{suffix}")
        try:
            if name.stat().st_mode & 0o077:
                name.chmod(0o600)
        except FileNotFoundError:
            pass


def remember_database_file(app: Flask) -> None:
    """Note which file the database is (device, inode), for :func:`check_database_file`."""
    path = sqlite_path(app.config["DATABASE_URL"])
    if path is not None:
        stat = path.stat()
        app.extensions["edgeship.database_file"] = (path, (stat.st_dev, stat.st_ino))


def database_file_problem(app: Flask) -> str | None:
    """Why the database file cannot be trusted with writes (deleted, replaced), or None. The
    reason names no path (``/readyz`` answers anyone); the log gets the path."""
    known = app.extensions.get("edgeship.database_file")
    if known is None:
        return None
    path, identity = known
    try:
        stat = path.stat()
    except OSError as err:
        problem = f"the database file is gone ({err.strerror}): restore it, then restart the server"
    else:
        if (stat.st_dev, stat.st_ino) == identity:
            return None
        problem = "the database file was replaced while the server ran: restart the server"
    app.logger.error("%s (%s)", problem, path)
    return problem


def check_database_file() -> None:
    """``before_request``: a request that may write gets 503 while the database file is gone
    or replaced (its writes would land in a file nothing reads again)."""
    if request.method in READ_ONLY_METHODS:
        return
    problem = database_file_problem(current_app)
    if problem is not None:
        raise ServiceUnavailable(f"{problem}; nothing was written", "database_unavailable")


def data_dir_in_use(data_dir: Path) -> list[str]:
    """Signs that ``data_dir`` has served a database before: the first-start token file, the
    database marker, stored artifacts. Empty for a new directory."""
    signs = [name for name in (FIRST_START_FILE, MARKER_FILE) if (data_dir / name).exists()]
    artifacts = data_dir / "artifacts"
    if artifacts.is_dir() and any(p.is_file() for p in artifacts.glob("[0-9a-f][0-9a-f]/*")):
        signs.append("artifacts/")
    return signs


def refuse_reused_data_dir(app: Flask, why: str) -> None:
    """Raise :class:`StartupRefused` if the data directory was in use; ``why`` says what is
    wrong with the database (missing, empty)."""
    data_dir = Path(app.config["DATA_DIR"])
    signs = data_dir_in_use(data_dir)
    if signs:
        raise StartupRefused(
            f"{why}, but the data directory {data_dir} has been in use ({', '.join(signs)}): "
            "refusing to start, so no new tokens replace the ones your devices and operators "
            "hold. Restore the database (or point --db/EDGESHIP_DATABASE_URL at the right one); "
            "to really start afresh, move the data directory aside.")


def refuse_missing_database(app: Flask) -> None:
    """Before the migration creates it: a SQLite file that is missing where a data directory
    has been in use was deleted or moved, not never made."""
    path = sqlite_path(app.config["DATABASE_URL"])
    if path is not None and not path.exists():
        refuse_reused_data_dir(app, f"the database file {path} does not exist")


def write_marker(app: Flask) -> None:
    """At first start: note in the data directory that it has a database now (0600)."""
    url = make_url(app.config["DATABASE_URL"]).render_as_string(hide_password=True)
    path = Path(app.config["DATA_DIR"]) / MARKER_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{url}\n")
