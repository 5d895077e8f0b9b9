"""The report writer: report rows into ``reports`` and their sums into ``report_totals`` and
``latency_totals``, one transaction per group of batches (SQLite file, PostgreSQL, in-memory
SQLite)."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import operator
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from sqlalchemy import DateTime
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from rollout_server import db as dbmod
from rollout_server.models import DEVICE_TOTALS, TOTALLED, LatencyTotal, Report, ReportTotal, utcnow
from rollout_server.report_rows import COLUMNS

#: the most rows the writer puts in one transaction (a group of batches; one batch may be more).
MAX_GROUP_ROWS = 1000

class ReportWriter:
    """Inserts report rows (tuples in :data:`COLUMNS` order) and adds them to ``report_totals``.

    Plain SQL, prepared once: no SQL compilation and no per-row parameter dicts.

    * **SQLite file:** one executemany of the rows and an upsert of their totals, in one
      transaction. Values pass through the column types' own bind processors (or
      :func:`_iso_datetime` where it stores the same), so rows are stored exactly as a Core insert
      stores them.
    * **PostgreSQL:** one statement, in autocommit, with the rows as one JSON parameter
      (:func:`_insert_and_add_sql`): one round trip per transaction where BEGIN, INSERT, upsert
      and COMMIT took four. (Multi-row VALUES would be 40 parameters per row, and psycopg
      parses a statement of over 50 again at every call; ``unnest`` of one array per column
      makes psycopg adapt 40 lists in Python.)
    * **In-memory SQLite** (tests): through the engine, in a transaction.

    On a file and on PostgreSQL each process holds one connection of the engine's pool for it
    (the process's writers take turns anyway, see :meth:`insert`), pinged before use after
    ``db.PING_IDLE_SECONDS`` idle, and replaced after any error but a stored id.

    On SQLite, writers take turns before they start the transaction: the threads of a process
    through its single leader (:meth:`insert`), the processes on an ``flock`` of
    ``<database>.ingest-lock``. A writer that instead
    waits in SQLite's busy handler sleeps 1, 2, 5, 10, ... ms between attempts; one waiting on
    the lock runs as soon as it is free. (Only an ordering aid: SQLite's own locking still
    guards the data, and writers of other tables do not take these locks.)
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        columns = (*COLUMNS, "received_at")
        marks = ", ".join("?" if dialect.paramstyle == "qmark" else "%s" for _ in columns)
        self.sql = f"INSERT INTO {REPORTS.name} ({', '.join(columns)}) VALUES ({marks})"
        self.totals_sql = _totals_upsert(dialect.paramstyle)
        self.latency_sql = _latency_upsert(dialect.paramstyle)
        #: PostgreSQL: rows and totals in one autocommit statement (:func:`_insert_and_add_sql`)
        self.postgres = dialect.name == "postgresql"
        self.postgres_sql = _insert_and_add_sql(dialect, columns) if self.postgres else None
        if self.postgres:  # the rows go as JSON (see _write_postgres): datetimes as ISO 8601 text
            processors = [_json_time if isinstance(REPORTS.c[name].type, DateTime) else None
                          for name in columns]
        else:
            processors = [_faster(REPORTS.c[name].type.dialect_impl(dialect).bind_processor(dialect))
                          for name in columns]
        #: (index, bind processor, whether the column is a time) of the row values to convert
        self.processors = [(i, f, isinstance(REPORTS.c[columns[i]].type, DateTime))
                           for i, f in enumerate(processors[:-1]) if f is not None]
        self.received_processor = processors[-1]
        database = engine.url.database if dialect.name == "sqlite" else None
        in_memory = not database or database == ":memory:" or engine.url.query.get("mode") == "memory"
        self.lock_path = None if in_memory else f"{database}.ingest-lock"
        self._lock_file: tuple[int, Any] | None = None  # (pid, file): one per process
        self._connection: tuple[int, Any] | None = None  # (pid, pooled connection): SQLite file, PostgreSQL
        self._used = 0.0  # when the held connection was last handed out (time.monotonic)
        self._mutex = threading.Lock()
        self._pending: list[_Pending] = []
        self._leading = False

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn on a SQLite file (see the class docstring); no wait on PostgreSQL
        or in memory. Only the process's leader takes it (:meth:`insert`), one at a time."""
        if self.lock_path is None:
            yield
            return
        if self._lock_file is None or self._lock_file[0] != os.getpid():  # opened after a fork
            self._lock_file = (os.getpid(), open(self.lock_path, "a"))  # noqa: SIM115 (kept open)
        handle = self._lock_file[1]
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` in one transaction: all or none (IntegrityError if an id was stored).

        Group commit: batches that arrive while another thread of the process writes, or waits
        for its turn, are written together, in one transaction, by one of them (the leader);
        each caller returns once the transaction holding its batch committed. The leader takes
        its turn first and only then chooses the group, so batches that came while it waited
        for the turn (another process writing) join it: fewer, larger transactions, each of
        which costs the other processes a reload of their SQLite page caches. A group holds
        whole batches, up to :data:`MAX_GROUP_ROWS` rows (more only for one batch alone). If
        that transaction fails on an id stored before, every batch of the group is written again
        in its own transaction, so a batch is still stored all or none and only the batch with
        the stored id gets the IntegrityError.
        """
        entry = _Pending(self._params(rows), Totals() if self.postgres else report_totals(rows))
        with self._mutex:
            self._pending.append(entry)
            lead = not self._leading
            self._leading = True
        if not lead:
            entry.wake.wait()
        if not entry.done:  # the leader, or promoted to it by the previous leader
            self._lead(entry)
        if entry.error is not None:
            raise entry.error

    def _lead(self, own: _Pending) -> None:
        while not own.done:
            try:
                with self._turn():
                    self._write_group(self._take_group())
            except BaseException as error:  # taking the turn failed (its lock file): so do they
                if not own.done:
                    self._write_group(self._take_group(), error)
        with self._mutex:  # hand over: the next waiting batch leads, else nobody does
            if self._pending:
                self._pending[0].wake.set()
            else:
                self._leading = False

    def _take_group(self) -> list[_Pending]:
        """The batches waiting now, up to MAX_GROUP_ROWS rows (at least one batch)."""
        with self._mutex:
            size = 0
            for taken, entry in enumerate(self._pending):
                size += len(entry.params)
                if taken and size > MAX_GROUP_ROWS:
                    break
            else:
                taken = len(self._pending)
            group, self._pending = self._pending[:taken], self._pending[taken:]
        return group

    def _write_group(self, group: list[_Pending], failed: BaseException | None = None) -> None:
        """Write ``group`` in one transaction (or each batch in its own after a stored id), in
        the caller's turn; or, given why it ``failed`` before, give each batch that error."""
        try:
            try:
                if failed is not None:
                    raise failed
                self._write([params for entry in group for params in entry.params],
                            merge_totals(entry.totals for entry in group))
            except IntegrityError as err:
                if len(group) == 1:
                    group[0].error = err
                    return
                for entry in group:  # find the batch(es) with a stored id; store the others
                    try:
                        self._write(entry.params, entry.totals)
                    except BaseException as error:
                        entry.error = error
            except BaseException as error:
                for entry in group:
                    entry.error = error
        finally:
            for entry in group:
                entry.done = True
                entry.wake.set()

    def _params(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        received = utcnow()
        if self.received_processor is not None:
            received = self.received_processor(received)
        if self.processors:
            params = []
            times: dict[tuple[Any, Any], Any] = {}  # a batch's windows mostly share their bounds
            for row in rows:
                values = list(row)
                for i, process, is_time in self.processors:
                    if is_time:  # rows hold UTC datetimes: equal ones are stored alike
                        key = (process, values[i])
                        value = times.get(key)
                        if value is None:
                            value = times[key] = process(values[i])
                        values[i] = value
                    else:
                        values[i] = process(values[i])
                values.append(received)
                params.append(values)
        else:
            params = [(*row, received) for row in rows]
        return params

    def add_totals(self, connection: Any, totals: Totals) -> None:
        """Add ``totals`` to this process's shard, in ``connection``'s transaction (SQLAlchemy)."""
        for added in self.totals_params(totals):  # mostly one key: execute, not executemany
            connection.exec_driver_sql(self.totals_sql, added)
        latency = self.latency_params(totals)
        if latency:
            connection.exec_driver_sql(self.latency_sql, latency)

    def totals_params(self, totals: Totals) -> list[tuple[Any, ...]]:
        """Parameters of :attr:`totals_sql` adding ``totals`` to this process's shard."""
        shard = os.getpid() % TOTAL_SHARDS
        return [(*key, shard, *sums) for key, sums in totals.reports.items()]

    def latency_params(self, totals: Totals) -> list[tuple[Any, ...]]:
        """Parameters of :attr:`latency_sql` (executemany) adding the sketch buckets of ``totals``."""
        shard = os.getpid() % TOTAL_SHARDS
        return [(*key, shard, bucket, count) for (*key, bucket), count in totals.latency.items()]

    def _write(self, params: list[Any], totals: Totals) -> None:
        """Insert the rows and add their totals, in one transaction."""
        if self.postgres:
            self._write_postgres(params)
            return
        if self.lock_path is None:
            with self.engine.begin() as connection:
                connection.exec_driver_sql(self.sql, params)
                self.add_totals(connection, totals)
            return
        pooled = self._held()
        connection = pooled.dbapi_connection
        try:
            connection.executemany(self.sql, params)  # pysqlite begins the transaction first
            for added in self.totals_params(totals):
                connection.execute(self.totals_sql, added)
            latency = self.latency_params(totals)
            if latency:
                connection.executemany(self.latency_sql, latency)
            connection.commit()
        except BaseException as err:
            self._failed(err, _rollback(connection))
            raise

    def _write_postgres(self, params: list[Any]) -> None:
        """One autocommit statement (:func:`_insert_and_add_sql`): one round trip per group.

        The process's writers take turns anyway (one leader at a time), so they share one
        connection, held out of the pool like SQLite's and set to autocommit once.
        """
        pooled = self._held()
        connection = pooled.dbapi_connection
        try:
            if not connection.autocommit:
                connection.autocommit = True
            rows = json.dumps(params, separators=(",", ":"))
            shard = os.getpid() % TOTAL_SHARDS
            connection.execute(self.postgres_sql, (rows, shard, shard))
        except BaseException as err:  # autocommit: a failed statement left nothing to roll back
            self._failed(err, not connection.closed)
            raise

    def _held(self) -> Any:
        """This process's pooled connection for writing reports, taken from the pool once and
        held; pinged first when unused for ``db.PING_IDLE_SECONDS`` (a database restart or an
        idle timeout may have closed it) and replaced if the ping fails, as the pool does."""
        now = time.monotonic()
        if self._connection is not None and self._connection[0] == os.getpid() \
                and now - self._used > dbmod.PING_IDLE_SECONDS \
                and dbmod.ping(self._connection[1].dbapi_connection) is not None:
            self._connection[1].invalidate()
            self._connection = None
        if self._connection is None or self._connection[0] != os.getpid():  # none yet, or forked
            self._connection = (os.getpid(), self.engine.raw_connection())
        self._used = now
        return self._connection[1]

    def _failed(self, err: BaseException, still_usable: bool) -> None:
        """After a failed write: an id stored before becomes SQLAlchemy's IntegrityError (the
        connection stays); anything else drops the connection (a fresh one for the next write)."""
        if still_usable and isinstance(err, self.engine.dialect.loaded_dbapi.IntegrityError):
            raise IntegrityError(self.sql, None, err) from err
        pooled = self._connection[1] if self._connection else None
        self._connection = None
        if pooled is not None:
            pooled.invalidate()


#: datetimes a bind processor of a datetime column must store as :func:`_iso_datetime` does
#: before that one may stand in for it (naive and aware, at the ends of the range).
_PROBE_TIMES = (dt.datetime(2026, 1, 2, 3, 4, 5, 6), dt.datetime(1, 1, 1),
                dt.datetime(9999, 12, 31, 23, 59, 59),
                dt.datetime(2026, 6, 30, 12, 0, 0, 999999, tzinfo=dt.timezone.utc))


def _iso_datetime(value: dt.datetime | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` (SQLAlchemy's SQLite storage format), in C."""
    return None if value is None else value.isoformat(" ", "microseconds")[:26]


def _faster(processor: Any) -> Any:
    """:func:`_iso_datetime` where it stores what ``processor`` stores (SQLite's datetimes, which
    SQLAlchemy formats field by field in Python, three per row), else ``processor``."""
    if processor is None:
        return None
    try:
        same = all(processor(value) == _iso_datetime(value) for value in _PROBE_TIMES)
    except Exception:  # not a datetime column
        return processor
    return _iso_datetime if same else processor


class _Pending:
    """A batch waiting for its transaction."""

    __slots__ = ("done", "error", "params", "totals", "wake")

    def __init__(self, params: list[Any], totals: Totals) -> None:
        self.params = params
        self.totals = totals
        self.wake = threading.Event()
        self.done = False
        self.error: BaseException | None = None


def _rollback(connection: Any) -> bool:
    try:
        connection.rollback()
    except Exception:
        return False
    return True


def writer_for(app: Flask) -> ReportWriter:
    """The app's report writer (one per process)."""
    writer = app.extensions.get("edgeship.report_writer")
    if writer is None:
        writer = app.extensions.setdefault("edgeship.report_writer",
                                           ReportWriter(app.extensions["edgeship.engine"]))
    return writer


REPORTS = Report.__table__
#: ``report_totals`` rows per key: each writing process adds to its own (pid modulo this).
TOTAL_SHARDS = 16
_TOTAL_KEY = ("model_id", "variant_id", "cohort", "device_class")
_key_of = operator.itemgetter(*(COLUMNS.index(name) for name in _TOTAL_KEY))
_summed_of = operator.itemgetter(*(COLUMNS.index(name) for name in TOTALLED))
_optional_of = operator.itemgetter(*(COLUMNS.index(source) for source, _ in DEVICE_TOTALS.values()))
_OPTIONAL_KINDS = tuple(kind for _, kind in DEVICE_TOTALS.values())


def _optional_sums(row: tuple[Any, ...]) -> list[Any]:
    """A row's contribution to the :data:`DEVICE_TOTALS` columns."""
    return [(float(value) if value is not None else 0.0) if kind == "sum"
            else int(value is not None) if kind == "count" else int(value is True)
            for value, kind in zip(_optional_of(row), _OPTIONAL_KINDS, strict=True)]
_SKETCH = COLUMNS.index("latency_sketch")


@dataclass
class Totals:
    """What a group of rows adds: per ``report_totals`` key ``[reports, *TOTALLED]``; per key and
    sketch bucket, the latencies of schema-2 reports (``latency_totals``)."""

    reports: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    latency: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def add(self, other: Totals) -> None:
        for key, sums in other.reports.items():
            into = self.reports.get(key)
            if into is None:
                self.reports[key] = list(sums)
            else:
                for j, value in enumerate(sums):
                    into[j] += value
        for key, count in other.latency.items():
            self.latency[key] = self.latency.get(key, 0) + count


def report_totals(rows: list[tuple[Any, ...]]) -> Totals:
    """Rows (in :data:`COLUMNS` order) summed per ``report_totals`` key and sketch bucket."""
    totals = Totals()
    reports, latency = totals.reports, totals.latency
    for row in rows:
        key = _key_of(row)
        sums = reports.get(key)
        added = [*_summed_of(row), *_optional_sums(row)]
        if sums is None:
            reports[key] = [1, *added]
        else:
            reports[key] = [sums[0] + 1, *map(operator.add, sums[1:], added)]
        sketch = row[_SKETCH]
        if sketch is not None:
            for bucket, count in json.loads(sketch)["buckets"]:
                latency[(*key, bucket)] = latency.get((*key, bucket), 0) + count
    return totals


def merge_totals(parts: Iterable[Totals]) -> Totals:
    """The sum of several :func:`report_totals` results."""
    merged = Totals()
    for part in parts:
        merged.add(part)
    return merged


def _json_time(value: dt.datetime) -> str:
    """A datetime of a report row as JSON text for PostgreSQL (ISO 8601; a naive one is UTC, as
    everywhere here)."""
    return value.isoformat() if value.tzinfo else f"{value.isoformat()}+00:00"


def _cast(name: str, dialect: Any) -> str:
    """The SQL type a JSON value becomes for column ``name``: strings as ``text``, so a value
    too long for the column fails the insert (a cast to ``varchar(n)`` would cut it)."""
    compiled = REPORTS.c[name].type.compile(dialect=dialect)
    return "text" if compiled.startswith("VARCHAR") else compiled


def _insert_and_add_sql(dialect: Any, columns: tuple[str, ...]) -> str:
    """PostgreSQL: insert reports and add them to ``report_totals``, in one statement.

    One statement is atomic on its own, so it runs in autocommit: one round trip per batch
    (BEGIN, INSERT, upsert and COMMIT were four). Its parameters are the rows as one JSON
    array of arrays (values in ``columns`` order), then the writer's shard twice (for
    ``report_totals`` and for ``latency_totals``, which sums the stored sketches' buckets).
    """
    table = ReportTotal.__tablename__
    key = ", ".join(_TOTAL_KEY)
    added = ("reports", *TOTALLED, *DEVICE_TOTALS)
    optional = ", ".join(_optional_sql(source, kind) for source, kind in DEVICE_TOTALS.values())
    sources = ", ".join(dict.fromkeys(source for source, _ in DEVICE_TOTALS.values()))
    values = ", ".join(f"(r->>{i})::{_cast(name, dialect)}" for i, name in enumerate(columns))
    updates = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in added)
    latency = LatencyTotal.__tablename__
    bucket = "(b->>0)::integer"
    return (f"WITH new AS (INSERT INTO {REPORTS.name} ({', '.join(columns)}) "
            f"SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r "
            f"RETURNING {key}, {', '.join(TOTALLED)}, {sources}, latency_sketch), "
            f"added AS (INSERT INTO {table} ({key}, shard, {', '.join(added)}) "
            f"SELECT {key}, %s, count(*), {', '.join(f'sum({name})' for name in TOTALLED)}, {optional} "
            f"FROM new GROUP BY {key} "
            f"ON CONFLICT ({key}, shard) DO UPDATE SET {updates}) "
            f"INSERT INTO {latency} ({key}, shard, bucket, count) "
            f"SELECT {key}, %s, {bucket}, sum((b->>1)::bigint) "
            f"FROM new CROSS JOIN LATERAL jsonb_array_elements(new.latency_sketch::jsonb->'buckets') AS b "
            f"WHERE new.latency_sketch IS NOT NULL GROUP BY {key}, {bucket} "
            f"ON CONFLICT ({key}, shard, bucket) DO UPDATE SET count = {latency}.count + excluded.count")


def _optional_sql(source: str, kind: str) -> str:
    """SQL of one :data:`DEVICE_TOTALS` column over the inserted rows (as :func:`_optional_sums`)."""
    if kind == "sum":
        return f"coalesce(sum({source}), 0)"
    if kind == "count":
        return f"count({source})"
    return f"count(*) FILTER (WHERE {source})"


def _latency_upsert(paramstyle: str) -> str:
    """INSERT ... ON CONFLICT DO UPDATE adding to a ``latency_totals`` row (SQLite and PostgreSQL)."""
    table = LatencyTotal.__tablename__
    columns = (*_TOTAL_KEY, "shard", "bucket", "count")
    marks = ", ".join("?" if paramstyle == "qmark" else "%s" for _ in columns)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(columns[:-1])}) DO UPDATE SET count = {table}.count + excluded.count")


def _totals_upsert(paramstyle: str) -> str:
    """INSERT ... ON CONFLICT DO UPDATE adding to a ``report_totals`` row (SQLite and PostgreSQL)."""
    table = ReportTotal.__tablename__
    key = (*_TOTAL_KEY, "shard")
    added = ("reports", *TOTALLED, *DEVICE_TOTALS)
    marks = ", ".join("?" if paramstyle == "qmark" else "%s" for _ in (*key, *added))
    updates = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in added)
    return (f"INSERT INTO {table} ({', '.join((*key, *added))}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")
