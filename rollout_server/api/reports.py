"""Report ingestion: batched window aggregates from devices, each report id accepted once."""

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
from typing import Annotated, Any, Literal

import msgspec
from flask import Blueprint, Response, current_app, request
from sqlalchemy import DateTime, bindparam, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from monitoring.buckets import BUCKET_COUNT
from rollout_server import db as dbmod
from rollout_server.api.metrics import bump
from rollout_server.auth import current_device
from rollout_server.db import db
from rollout_server.errors import ApiError
from rollout_server.hot_cache import DeviceSnapshot
from rollout_server.models import (
    ERROR_REASONS,
    TOTALLED,
    Model,
    Release,
    Report,
    ReportTotal,
    Rollout,
    utcnow,
)
from rollout_server.validation import (
    NAME,
    count,
    field,
    json_body,
    refuse_nul,
    short_text,
    timestamp,
    utc_time,
)

bp = Blueprint("reports", __name__, url_prefix="/v1")
MAX_BATCH = 100
#: the most rows the writer puts in one transaction (a group of batches; one batch may be more).
MAX_GROUP_ROWS = 1000
MODEL_ID = select(Model.id).where(Model.name == bindparam("name"))
RELEASE_ID = select(Release.id).where(Release.model_id == bindparam("model_id"),
                                      Release.version == bindparam("version"))
ROLLOUT_ID = select(Rollout.id).where(Rollout.id == bindparam("rollout_id"))
SEEN_IDS = select(Report.report_id).where(Report.device_id == bindparam("device_id"),
                                          Report.report_id.in_(bindparam("ids", expanding=True)))
#: a Core insert (executemany): ORM objects would make SQLite insert row by row for their ids,
#: and the ORM's bulk path costs more Python per row than the database does.
INSERT_REPORTS = insert(Report.__table__)


@bp.post("/reports")
def post_reports():
    """Store a batch of reports atomically: all valid or none stored.

    Body: ``{"reports": [report, ...]}``. Returns the ids accepted now and the ids already
    seen (a retry after a lost response is not an error).
    """
    limit = current_app.config["MAX_REPORT_BYTES"]
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(f"report body over {limit} bytes", 413, "payload_too_large")
    device = current_device()
    try:
        rows = _parse_batch(device)
    except ApiError:
        session = db()
        session.rollback()
        bump(session, "reports_rejected")
        session.commit()
        raise
    writer = _writer(current_app)
    try:  # the common case, no id seen before: one INSERT (executemany) and the commit
        writer.insert(rows)
        return _answer([row[0] for row in rows], [])
    except IntegrityError:  # some ids were stored before (a retry after a lost answer)
        pass
    return _store_with_duplicates(device, rows)


def _answer(accepted: list[str], duplicates: list[str]) -> Response:
    return Response(json.dumps({"accepted": accepted, "duplicates": duplicates}, separators=(",", ":")),
                    200, mimetype="application/json")


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

    On SQLite, writers take turns before they start the transaction: the threads of a process on
    a lock, the processes on an ``flock`` of ``<database>.ingest-lock``. A writer that instead
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
        #: PostgreSQL: rows and totals in one autocommit statement (:func:`_insert_and_add_sql`)
        self.postgres = dialect.name == "postgresql"
        self.postgres_sql = _insert_and_add_sql(dialect, columns) if self.postgres else None
        if self.postgres:  # the rows go as JSON (see _write_postgres): datetimes as ISO 8601 text
            processors = [_json_time if isinstance(REPORTS.c[name].type, DateTime) else None
                          for name in columns]
        else:
            processors = [_faster(REPORTS.c[name].type.dialect_impl(dialect).bind_processor(dialect))
                          for name in columns]
        self.processors = [(i, f) for i, f in enumerate(processors[:-1]) if f is not None]
        self.received_processor = processors[-1]
        self.lock = threading.Lock() if dialect.name == "sqlite" else contextlib.nullcontext()
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
        """This writer's turn on SQLite (see the class docstring); no wait on PostgreSQL."""
        with self.lock:
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

        Group commit: batches that arrive while another thread of the process writes are
        written together, in one transaction, by one of them (the leader); each caller returns
        once the transaction holding its batch committed. A group holds whole batches, up to
        :data:`MAX_GROUP_ROWS` rows (more only for one batch alone). If that transaction fails on an id
        stored before, every batch of the group is written again in its own transaction, so a
        batch is still stored all or none and only the batch with the stored id gets the
        IntegrityError.
        """
        entry = _Pending(self._params(rows), {} if self.postgres else report_totals(rows))
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
            with self._mutex:  # the batches waiting, up to MAX_GROUP_ROWS rows (at least one batch)
                size = 0
                for taken, entry in enumerate(self._pending):
                    size += len(entry.params)
                    if taken and size > MAX_GROUP_ROWS:
                        break
                else:
                    taken = len(self._pending)
                group, self._pending = self._pending[:taken], self._pending[taken:]
            self._write_group(group)
        with self._mutex:  # hand over: the next waiting batch leads, else nobody does
            if self._pending:
                self._pending[0].wake.set()
            else:
                self._leading = False

    def _write_group(self, group: list[_Pending]) -> None:
        try:
            try:
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
            for row in rows:
                values = list(row)
                for i, process in self.processors:
                    values[i] = process(values[i])
                values.append(received)
                params.append(values)
        else:
            params = [(*row, received) for row in rows]
        return params

    def totals_params(self, totals: dict[tuple[Any, ...], list[Any]]) -> list[tuple[Any, ...]]:
        """Parameters of :attr:`totals_sql` adding ``totals`` to this process's shard."""
        shard = os.getpid() % TOTAL_SHARDS
        return [(*key, shard, *sums) for key, sums in totals.items()]

    def _write(self, params: list[Any], totals: dict[tuple[Any, ...], list[Any]]) -> None:
        """Insert the rows and add their totals, in one transaction."""
        if self.postgres:
            self._write_postgres(params)
            return
        if self.lock_path is None:
            with self._turn(), self.engine.begin() as connection:
                connection.exec_driver_sql(self.sql, params)
                for added in self.totals_params(totals):  # mostly one key: execute, not executemany
                    connection.exec_driver_sql(self.totals_sql, added)
            return
        with self._turn():
            pooled = self._held()
            connection = pooled.dbapi_connection
            try:
                connection.executemany(self.sql, params)  # pysqlite begins the transaction first
                for added in self.totals_params(totals):
                    connection.execute(self.totals_sql, added)
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
            connection.execute(self.postgres_sql, (rows, os.getpid() % TOTAL_SHARDS))
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

    def __init__(self, params: list[Any], totals: dict[tuple[Any, ...], list[Any]]) -> None:
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


def _writer(app) -> ReportWriter:
    writer = app.extensions.get("edgeship.report_writer")
    if writer is None:
        writer = app.extensions.setdefault("edgeship.report_writer",
                                           ReportWriter(app.extensions["edgeship.engine"]))
    return writer


def _store_with_duplicates(device: DeviceSnapshot, rows: list[tuple[Any, ...]]):
    """Store the reports not stored before and count the others as duplicates."""
    session = db()
    seen = set(session.scalars(SEEN_IDS, {"device_id": device.id, "ids": [row[0] for row in rows]}))
    fresh = [row for row in rows if row[0] not in seen]
    try:
        if fresh:
            session.execute(INSERT_REPORTS, [dict(zip(COLUMNS, row, strict=True)) for row in fresh])
            writer = _writer(current_app)
            for added in writer.totals_params(report_totals(fresh)):
                session.connection().exec_driver_sql(writer.totals_sql, added)
        if seen:
            bump(session, "reports_duplicate", len(seen))
        session.commit()
    except IntegrityError:  # a concurrent retry of the same batch won the race
        session.rollback()
        raise ApiError("some reports were stored concurrently; retry the batch", 409, "conflict") from None
    return _answer([row[0] for row in fresh], sorted(seen))


def _parse_batch(device: DeviceSnapshot) -> list[tuple[Any, ...]]:
    known = current_app.extensions.setdefault("edgeship.known_ids", {})
    raw = request.get_data(cache=True)
    refuse_nul(raw)
    rows = _fast_rows(raw, device, known) if request.is_json else None
    if rows is None:
        items = field(json_body(), "reports", list)
        if not 1 <= len(items) <= MAX_BATCH:
            raise ApiError(f"field 'reports' must hold 1 to {MAX_BATCH} reports")
        rows = [_parse(item, i, device) for i, item in enumerate(items)]
    if len({row[0] for row in rows}) != len(rows):
        raise ApiError("report ids repeat within the batch")
    return rows


def _parse(item: Any, index: int, device: DeviceSnapshot) -> tuple[Any, ...]:
    if not isinstance(item, dict):
        raise ApiError(f"reports[{index}] must be an object")
    try:
        values = _report(item, device)
    except ApiError as err:
        raise ApiError(f"reports[{index}]: {err.detail}", err.status, err.error) from None
    return tuple(values[name] for name in COLUMNS)


def _known_id(key: tuple[Any, ...], statement: Any, params: dict[str, Any]) -> int | None:
    """The id ``statement`` finds, remembered by the app once found.

    Models, releases and rollouts are never renamed or deleted, so a found id stays true; misses are not
    remembered, so a model or release published later is found at once.
    """
    known = current_app.extensions.setdefault("edgeship.known_ids", {})
    found = known.get(key)
    if found is None:
        found = db().scalar(statement, params)
        if found is not None:
            if len(known) >= 4096:
                known.clear()
            known[key] = found
    return found


def _report(data: dict[str, Any], device: DeviceSnapshot) -> dict[str, Any]:
    """One validated report as column values of a ``reports`` row."""
    name = short_text(data, "model", pattern=NAME)
    model_id = _known_id(("model", name), MODEL_ID, {"name": name})
    if model_id is None:
        raise ApiError("field 'model' names no known model")
    version = short_text(data, "version", max_length=64)
    release_id = _known_id(("release", model_id, version), RELEASE_ID,
                           {"model_id": model_id, "version": version})
    if release_id is None:
        raise ApiError(f"field 'version': {name} has no release {version!r}")
    rollout_id = field(data, "rollout_id", int, required=False)
    if rollout_id is not None and (not 0 <= rollout_id < 2**31 or _known_id(
            ("rollout", rollout_id), ROLLOUT_ID, {"rollout_id": rollout_id}) is None):
        raise ApiError("field 'rollout_id' names no rollout")
    cohort = short_text(data, "cohort", max_length=8)
    if cohort not in ("stable", "canary"):
        raise ApiError("field 'cohort' must be 'stable' or 'canary'")
    start, end = timestamp(data, "window_start"), timestamp(data, "window_end")
    if end < start:
        raise ApiError("window_end is before window_start")
    errors = field(data, "errors", dict, required=False, default={})
    unknown = set(errors) - set(ERROR_REASONS)
    if unknown:
        raise ApiError(f"field 'errors' has unknown reasons {sorted(unknown)}; known: {list(ERROR_REASONS)}")
    error_counts = {reason: count(errors, reason, required=False) for reason in ERROR_REASONS}
    latency = field(data, "latency_counts", list)
    if len(latency) != BUCKET_COUNT or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 10**12 for c in latency
    ):
        raise ApiError(f"field 'latency_counts' must be {BUCKET_COUNT} non-negative integers")
    inferences = count(data, "inferences")
    if sum(latency) > inferences:
        raise ApiError("latency_counts hold more samples than inferences")
    latency_sum = field(data, "latency_sum_seconds", (int, float), required=False, default=0.0)
    if not 0 <= latency_sum <= 1e9:
        raise ApiError("field 'latency_sum_seconds' must be between 0 and 1e9")
    labelled, correct = count(data, "labelled", required=False), count(data, "correct", required=False)
    shadow, agree = count(data, "shadow_samples", required=False), count(data, "shadow_agree", required=False)
    if correct > labelled or agree > shadow:
        raise ApiError("correct must not exceed labelled, nor shadow_agree shadow_samples")
    return dict(
        report_id=short_text(data, "id", max_length=64), device_id=device.id, model_id=model_id,
        release_id=release_id, variant_id=short_text(data, "variant", max_length=64),
        rollout_id=rollout_id, cohort=cohort, device_class=device.device_class,
        window_start=start, window_end=end, inferences=inferences, labelled=labelled, correct=correct,
        shadow_samples=shadow, shadow_agree=agree,
        peak_rss_bytes=count(data, "peak_rss_bytes", required=False) or None,
        dropped_windows=count(data, "dropped_windows", required=False, maximum=10**6),
        latency_sum_seconds=float(latency_sum),
        **{f"err_{reason}": n for reason, n in error_counts.items()},
        **{f"lat_{i}": n for i, n in enumerate(latency)},
    )


#: the ``reports`` columns a report fills, in the order of the rows :func:`_parse_batch` returns
#: (``id`` is the database's, ``received_at`` the writer's); ``report_id`` first.
COLUMNS: tuple[str, ...] = (
    "report_id", "device_id", "model_id", "release_id", "variant_id", "rollout_id", "cohort",
    "device_class", "window_start", "window_end", "inferences", "labelled", "correct", "shadow_samples",
    "shadow_agree", "peak_rss_bytes", "dropped_windows", "latency_sum_seconds",
    *(f"err_{reason}" for reason in ERROR_REASONS), *(f"lat_{i}" for i in range(BUCKET_COUNT)),
)
REPORTS = Report.__table__
#: ``report_totals`` rows per key: each writing process adds to its own (pid modulo this).
TOTAL_SHARDS = 16
_TOTAL_KEY = ("model_id", "variant_id", "cohort", "device_class")
_key_of = operator.itemgetter(*(COLUMNS.index(name) for name in _TOTAL_KEY))
_summed_of = operator.itemgetter(*(COLUMNS.index(name) for name in TOTALLED))


def report_totals(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[Any]]:
    """Rows (in :data:`COLUMNS` order) summed per ``report_totals`` key: [reports, *TOTALLED]."""
    totals: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        key = _key_of(row)
        sums = totals.get(key)
        if sums is None:
            totals[key] = [1, *_summed_of(row)]
        else:
            totals[key] = [sums[0] + 1, *map(operator.add, sums[1:], _summed_of(row))]
    return totals


def merge_totals(parts: Iterable[dict[tuple[Any, ...], list[Any]]]) -> dict[tuple[Any, ...], list[Any]]:
    """The sum of several :func:`report_totals` results."""
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for part in parts:
        for key, sums in part.items():
            into = merged.get(key)
            if into is None:
                merged[key] = list(sums)
            else:
                for j, value in enumerate(sums):
                    into[j] += value
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
    array of arrays (values in ``columns`` order), then the writer's shard.
    """
    table = ReportTotal.__tablename__
    key = ", ".join(_TOTAL_KEY)
    added = ("reports", *TOTALLED)
    values = ", ".join(f"(r->>{i})::{_cast(name, dialect)}" for i, name in enumerate(columns))
    updates = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in added)
    return (f"WITH new AS (INSERT INTO {REPORTS.name} ({', '.join(columns)}) "
            f"SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r "
            f"RETURNING {key}, {', '.join(TOTALLED)}) "
            f"INSERT INTO {table} ({key}, shard, {', '.join(added)}) "
            f"SELECT {key}, %s, count(*), {', '.join(f'sum({name})' for name in TOTALLED)} "
            f"FROM new GROUP BY {key} "
            f"ON CONFLICT ({key}, shard) DO UPDATE SET {updates}")


def _totals_upsert(paramstyle: str) -> str:
    """INSERT ... ON CONFLICT DO UPDATE adding to a ``report_totals`` row (SQLite and PostgreSQL)."""
    table = ReportTotal.__tablename__
    key = (*_TOTAL_KEY, "shard")
    added = ("reports", *TOTALLED)
    marks = ", ".join("?" if paramstyle == "qmark" else "%s" for _ in (*key, *added))
    updates = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in added)
    return (f"INSERT INTO {table} ({', '.join((*key, *added))}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


_MAX_COUNT = 10**12
_Count = Annotated[int, msgspec.Meta(ge=0, le=_MAX_COUNT)]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class _PlainReport(msgspec.Struct):
    """A report every field of which is plainly fine (the fast path's type and range checks).

    Unknown fields are ignored, as :func:`_report` ignores them; cross-field checks and the
    lookups of model, release and rollout are :func:`_fast_rows`'s.
    """

    id: _Id
    model: str
    version: str
    variant: _Id
    cohort: Literal["stable", "canary"]
    window_start: str
    window_end: str
    inferences: _Count
    latency_counts: Annotated[list[_Count], msgspec.Meta(min_length=BUCKET_COUNT, max_length=BUCKET_COUNT)]
    rollout_id: Annotated[int, msgspec.Meta(ge=0, lt=2**31)] | None = None
    errors: dict[str, _Count | None] | None = None
    latency_sum_seconds: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = None
    labelled: _Count | None = None
    correct: _Count | None = None
    shadow_samples: _Count | None = None
    shadow_agree: _Count | None = None
    peak_rss_bytes: _Count | None = None
    dropped_windows: Annotated[int, msgspec.Meta(ge=0, le=10**6)] | None = None


class _PlainBatch(msgspec.Struct):
    reports: Annotated[list[_PlainReport], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


_DECODE_PLAIN = msgspec.json.Decoder(_PlainBatch).decode
_REASONS = frozenset(ERROR_REASONS)


def _fast_rows(body: bytes, device: DeviceSnapshot, known: dict) -> list[tuple[Any, ...]] | None:
    """The rows :func:`_parse` would build from a batch whose every report is plainly fine and
    whose models, releases and rollouts this process found before; None otherwise (then each
    report goes through :func:`_parse`, which names what is wrong).

    The JSON is decoded and type- and range-checked in one C pass (msgspec) into
    :class:`_PlainReport`; what is left is Python's. It accepts a subset of what :func:`_parse`
    accepts and builds the same values (tests check both agree, and that it refuses every kind
    of bad field :func:`_parse` refuses).
    """
    try:
        reports = _DECODE_PLAIN(body).reports
    except msgspec.DecodeError:  # malformed JSON, or a field of a wrong type or out of range
        return None
    rows = []
    for r in reports:
        model_id = known.get(("model", r.model))  # keys of found ids passed the full checks
        release_id = known.get(("release", model_id, r.version))
        if model_id is None or release_id is None:
            return None
        rollout_id = r.rollout_id
        if rollout_id is not None and known.get(("rollout", rollout_id)) is None:
            return None
        try:
            start, end = utc_time(r.window_start), utc_time(r.window_end)
        except ValueError:
            return None
        latency, inferences = r.latency_counts, r.inferences
        if end < start or sum(latency) > inferences:
            return None
        errors = r.errors
        if errors is None:
            error_counts = [0] * len(ERROR_REASONS)
        elif not _REASONS.issuperset(errors):
            return None
        else:
            error_counts = [errors.get(reason) or 0 for reason in ERROR_REASONS]
        labelled, correct = r.labelled or 0, r.correct or 0
        shadow, agree = r.shadow_samples or 0, r.shadow_agree or 0
        if correct > labelled or agree > shadow:
            return None
        rows.append((r.id, device.id, model_id, release_id, r.variant, rollout_id, r.cohort,
                     device.device_class, start, end, inferences, labelled, correct, shadow, agree,
                     r.peak_rss_bytes or None, r.dropped_windows or 0, float(r.latency_sum_seconds or 0.0),
                     *error_counts, *latency))
    return rows
