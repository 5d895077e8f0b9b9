"""A durable outbox: reports wait in SQLite until the server has them.

The agent loop adds each interval's reports; the sender takes the oldest, posts them and acks
the ids the server accepted (or had already seen)::

    outbox = Outbox(state_dir / "outbox.db")
    outbox.add(windows.close())
    batch = outbox.take(100)
    outbox.ack(response["accepted"] + response["duplicates"])

The outbox is bounded (count and JSON bytes); when full it drops the oldest reports and counts
them, and the next report added carries that count in ``dropped_windows``, so the server sees
every loss. The count lives in the database and survives restarts. A corrupt file is moved
aside and a fresh outbox started: losing queued reports beats a device that never reports.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: the server's bound on one report's ``dropped_windows``; any excess waits for the next report.
MAX_DROPPED_PER_REPORT = 10**6
#: SQLite result codes that mean the file is not a usable database.
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS reports ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL,"
    " size_bytes INTEGER NOT NULL, dropped_windows INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class OutboxError(Exception):
    """The outbox could not read or write its file (disk full, I/O error, permissions).

    The outbox stays usable: a failed ``add`` stored nothing and may be retried.
    """


class _Unusable(Exception):
    """The file is corrupt or from an unknown schema: move it aside."""


class Outbox:
    """Reports awaiting delivery, oldest first, in one SQLite file (WAL), safe across threads.

    Args:
        path: the database file; its directory must exist.
        max_reports: most reports kept; older ones are dropped (and counted) beyond it.
        max_bytes: most JSON bytes of reports kept, likewise.
        max_page_count: caps the file at this many SQLite pages (``PRAGMA max_page_count``), so
            it fails with "database or disk is full" as a full disk would; for tests and for
            devices that must bound the file hard. None leaves SQLite's default.
        busy_timeout_seconds: how long a write waits for another connection's lock before it
            fails with an :class:`OutboxError`.

    Raises:
        ValueError: a bound is below 1.
        OutboxError: the file cannot be opened at all (not for corruption: that is recovered).
    """

    def __init__(self, path: Path, max_reports: int = 10_000, max_bytes: int = 8 * 2**20,
                 *, max_page_count: int | None = None, busy_timeout_seconds: float = 10.0) -> None:
        if max_reports < 1 or max_bytes < 1:
            raise ValueError(f"max_reports and max_bytes must be >= 1, got {max_reports}, {max_bytes}")
        self.path = Path(path)
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self._max_page_count = max_page_count
        self._busy_timeout_seconds = busy_timeout_seconds
        self._lock = threading.Lock()
        self._closed = False
        # dropped windows noted while the file could not take them (written with the next add)
        self._unsaved_dropped = 0
        try:
            self._conn = self._open()
        except _Unusable as err:
            try:
                aside = _move_aside(self.path)
            except OSError as move_err:
                raise OutboxError(f"outbox {self.path}: unusable ({err}) and cannot move it aside: "
                                  f"{move_err}") from move_err
            log.warning("outbox %s is unusable (%s); moved it to %s and started a fresh outbox",
                        self.path, err, aside.name)
            try:
                self._conn = self._open()
            except _Unusable as again:
                raise OutboxError(f"outbox {self.path}: a fresh file is unusable too: {again}") from None

    def _open(self) -> sqlite3.Connection:
        try:
            _private(self.path)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_timeout_seconds)
        except (sqlite3.Error, OSError) as err:
            raise OutboxError(f"outbox {self.path}: cannot open: {err}") from err
        try:
            if self._max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count = {int(self._max_page_count)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit survives power loss too (Pis get unplugged); one fsync per interval
            conn.execute("PRAGMA synchronous = FULL")
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                raise _Unusable(f"quick_check: {check}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise _Unusable(f"schema version {version}, this agent knows {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except _Unusable:
            conn.close()
            raise
        except sqlite3.Error as err:
            conn.close()
            if isinstance(err, sqlite3.OperationalError) or _code(err) not in _CORRUPT_CODES:
                raise OutboxError(f"outbox {self.path}: cannot open: {err}") from err
            raise _Unusable(str(err)) from err
        return conn

    def add(self, reports: list[dict[str, Any]]) -> None:
        """Store ``reports`` in one transaction: all of them or none.

        The first report gets the windows dropped since the last report that carried the count
        (added to its own ``dropped_windows``); the count then restarts from 0. The caller's
        dicts are not changed. If the bounds are then exceeded, the oldest reports go.

        Raises:
            ValueError: a report has no ``id`` of 1 to 64 characters, ids repeat, an id is
                already queued, its ``dropped_windows`` is out of range or it is not JSON.
                Nothing is stored nor counted.
            OutboxError: the write failed (e.g. disk full). Nothing is stored nor counted and
                the outbox stays usable: keep the reports and add them again later, or give up
                on them with :meth:`note_dropped` so the server still learns of the loss.
        """
        if not reports:
            return
        prepared = [_prepared(report) for report in reports]
        ids = [report["id"] for report in prepared]
        if len(set(ids)) != len(ids):
            raise ValueError("report ids repeat within the batch")
        with self._lock:
            self._require_open()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._insert(prepared)
                self._make_room()
                self._conn.execute("COMMIT")
            except sqlite3.IntegrityError as err:
                self._rollback()
                raise ValueError(f"a report id is already in the outbox: {err}") from None
            except sqlite3.Error as err:
                self._rollback()
                raise OutboxError(f"outbox {self.path}: cannot store {len(prepared)} reports: {err}") from err
            except BaseException:
                self._rollback()
                raise
            self._unsaved_dropped = 0

    def note_dropped(self, windows: int) -> None:
        """Count windows the caller gave up on (e.g. reports it held while the disk was full).

        The next report added carries them. Never raises for storage: if the file cannot take the
        count now, it is kept in memory until the next successful ``add`` (and lost only if the
        process ends first).

        Raises:
            ValueError: ``windows`` is negative.
        """
        if windows < 0:
            raise ValueError(f"windows must be >= 0, got {windows}")
        if not windows:
            return
        with self._lock:
            self._require_open()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._set_meta("dropped_windows", self._meta("dropped_windows") + windows)
                self._conn.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                self._unsaved_dropped += windows
                log.warning("outbox %s: cannot store %d dropped windows now (%s); kept in memory",
                            self.path, windows, err)

    def _insert(self, prepared: list[dict[str, Any]]) -> None:
        carried = self._meta("dropped_windows") + self._unsaved_dropped
        rows = []
        for report in prepared:
            own = int(report.get("dropped_windows") or 0)
            share = max(0, min(carried, MAX_DROPPED_PER_REPORT - own))
            carried -= share
            report["dropped_windows"] = own + share
            body = json.dumps(report, separators=(",", ":"), allow_nan=False)
            rows.append((report["id"], body, len(body.encode()), report["dropped_windows"]))
        self._conn.executemany(
            "INSERT INTO reports (id, body, size_bytes, dropped_windows) VALUES (?, ?, ?, ?)", rows)
        self._set_meta("dropped_windows", carried)

    def _make_room(self) -> None:
        """Delete the oldest reports until the bounds hold, counting each as dropped."""
        count, total_bytes = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM reports").fetchone()
        if count <= self.max_reports and total_bytes <= self.max_bytes:
            return
        dropped = 0
        last_seq = None
        oldest_first = self._conn.execute(
            "SELECT seq, size_bytes, dropped_windows FROM reports ORDER BY seq").fetchall()
        for seq, size_bytes, carried in oldest_first:
            if count <= self.max_reports and total_bytes <= self.max_bytes:
                break
            count, total_bytes, last_seq = count - 1, total_bytes - size_bytes, seq
            dropped += 1 + carried  # the report itself and the losses it was carrying
        self._conn.execute("DELETE FROM reports WHERE seq <= ?", (last_seq,))
        self._set_meta("dropped_windows", self._meta("dropped_windows") + dropped)
        log.warning("outbox %s full: dropped the %d oldest windows", self.path, dropped)

    def take(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` queued reports, oldest first; they stay queued until acked.

        Raises:
            OutboxError: the read failed.
        """
        with self._lock:
            rows = self._read("SELECT body FROM reports ORDER BY seq LIMIT ?", (limit,))
        return [json.loads(body) for (body,) in rows]

    def ack(self, ids: Iterable[str]) -> int:
        """Delete delivered reports (the server accepted them or had them already).

        Returns:
            How many queued reports were deleted; unknown ids are ignored.

        Raises:
            OutboxError: the write failed; the reports stay queued (the server deduplicates a
                resend).
        """
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            self._require_open()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                before = self._conn.total_changes
                self._conn.executemany("DELETE FROM reports WHERE id = ?", [(i,) for i in ids])
                deleted = self._conn.total_changes - before
                self._conn.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise OutboxError(f"outbox {self.path}: cannot delete delivered reports: {err}") from err
        return deleted

    def __len__(self) -> int:
        with self._lock:
            return self._read("SELECT COUNT(*) FROM reports")[0][0]

    @property
    def dropped_pending(self) -> int:
        """Windows dropped that no queued report carries yet (the next added report will)."""
        with self._lock:
            stored = self._read("SELECT value FROM meta WHERE key = 'dropped_windows'")
        return (stored[0][0] if stored else 0) + self._unsaved_dropped

    def close(self) -> None:
        """Close the database; the outbox is unusable afterwards."""
        with self._lock:
            self._closed = True
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self.path}: closed")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        self._require_open()
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise OutboxError(f"outbox {self.path}: cannot read: {err}") from err

    def _meta(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def _rollback(self) -> None:
        if self._conn.in_transaction:  # SQLite may have rolled back itself (e.g. on SQLITE_FULL)
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("outbox %s: rollback failed", self.path)


def _prepared(report: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``report`` checked to have a usable id and to be JSON."""
    if not isinstance(report, dict):
        raise ValueError(f"a report must be a dict, got {type(report).__name__}")
    report_id = report.get("id")
    if not isinstance(report_id, str) or not 1 <= len(report_id) <= 64:
        raise ValueError(f"a report needs an 'id' of 1 to 64 characters, got {report_id!r}")
    dropped = report.get("dropped_windows") or 0
    if type(dropped) is not int or not 0 <= dropped <= MAX_DROPPED_PER_REPORT:  # bools are not counts
        raise ValueError(f"report {report_id}: dropped_windows must be 0 to {MAX_DROPPED_PER_REPORT}, "
                         f"got {dropped!r}")
    try:
        json.dumps(report, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"report {report_id} is not JSON: {err}") from None
    return dict(report)


def _code(err: sqlite3.Error) -> int | None:
    code = getattr(err, "sqlite_errorcode", None)  # Python 3.11+
    if code is None:  # 3.10: recognise the two corruption messages
        text = str(err)
        if "not a database" in text:
            return 26
        if "malformed" in text:
            return 11
    return code


def _move_aside(path: Path) -> Path:
    """Rename ``path`` (and its WAL) to ``<name>.corrupt-<UTC time>``; drop the shared-memory file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    path.replace(aside)
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        wal.replace(aside.with_name(aside.name + "-wal"))
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
    return aside


def _private(path: Path) -> None:
    """Create the outbox file readable by its owner only (0600), or make an existing one so:
    reports name the device, its model and what it saw. SQLite creates the ``-wal`` and ``-shm``
    files with the database file's mode, so they follow."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
