"""Report ingestion: batched window aggregates from devices, each report id accepted once."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, request
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from edgeship.contract.latency import BUCKET_COUNT
from edgeship.contract.reports import (
    ERROR_REASONS,
    MAX_BATCH,
    MAX_LOAD_SECONDS,
    REPORT_SCHEMAS,
    TEMPERATURE_RANGE,
)
from edgeship.contract.sketch import LatencySketch
from rollout_server import hot_cache
from rollout_server.auth import current_device
from rollout_server.body_limits import read_body, too_deep
from rollout_server.counters import bump
from rollout_server.db import db
from rollout_server.errors import ApiError
from rollout_server.hot_cache import DeviceSnapshot
from rollout_server.models import Model, Release, Report, Rollout, utcnow
from rollout_server.report_checks import ReportLimits, ReportRefused, check_rows
from rollout_server.report_rows import COLUMNS, NO_V1_LATENCY, fast_rows, sketch_text
from rollout_server.report_writer import report_totals, writer_for
from rollout_server.validation import (
    NAME,
    count,
    field,
    json_body,
    refuse_nul,
    short_text,
    timestamp,
)

bp = Blueprint("reports", __name__, url_prefix="/v1")
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
    device = current_device()  # a declared length over MAX_REPORT_BYTES was refused before
    try:
        rows = _parse_batch(device)
        limits = ReportLimits.from_config(current_app.config)
        check_rows(rows, device, utcnow(), limits, hot_cache.of(current_app).rollout)
    except ApiError as err:
        session = db()
        session.rollback()
        bump(session, "reports_rejected")
        if isinstance(err, ReportRefused):
            bump(session, f"reports_refused_{err.error}")
        session.commit()
        raise
    writer = writer_for(current_app)
    try:  # the common case, no id seen before: one INSERT (executemany) and the commit
        writer.insert(rows)
        return _answer([row[0] for row in rows], [])
    except IntegrityError:  # some ids were stored before (a retry after a lost answer)
        pass
    return _store_with_duplicates(device, rows)


def _answer(accepted: list[str], duplicates: list[str]) -> Response:
    return Response(json.dumps({"accepted": accepted, "duplicates": duplicates}, separators=(",", ":")),
                    200, mimetype="application/json")


def _store_with_duplicates(device: DeviceSnapshot, rows: list[tuple[Any, ...]]):
    """Store the reports not stored before and count the others as duplicates."""
    session = db()
    seen = set(session.scalars(SEEN_IDS, {"device_id": device.id, "ids": [row[0] for row in rows]}))
    fresh = [row for row in rows if row[0] not in seen]
    try:
        if fresh:
            session.execute(INSERT_REPORTS, [dict(zip(COLUMNS, row, strict=True)) for row in fresh])
            writer_for(current_app).add_totals(session.connection(), report_totals(fresh))
        if seen:
            bump(session, "reports_duplicate", len(seen))
        session.commit()
    except IntegrityError:  # a concurrent retry of the same batch won the race
        session.rollback()
        raise ApiError("some reports were stored concurrently; retry the batch", 409, "conflict") from None
    return _answer([row[0] for row in fresh], sorted(seen))


def _parse_batch(device: DeviceSnapshot) -> list[tuple[Any, ...]]:
    known = current_app.extensions.setdefault("edgeship.known_ids", {})
    raw = read_body()  # 413 past MAX_REPORT_BYTES, counted as a chunked body arrives
    refuse_nul(raw)
    try:
        rows = fast_rows(raw, device, known) if request.is_json else None
    except RecursionError:  # msgspec skips unknown fields by recursing; the slow path checks depth
        raise too_deep() from None
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
    inferences = count(data, "inferences")
    latency, sketch = _latency(data, inferences)
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
        latency_sketch=sketch,
        load_seconds=_number(data, "load_seconds", 0.0, MAX_LOAD_SECONDS),
        cpu_temp_celsius=_number(data, "cpu_temp_celsius", *TEMPERATURE_RANGE),
        throttled=field(data, "throttled", bool, required=False),
    )


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float | None:
    """An optional number in [low, high]; None when absent."""
    value = field(data, key, (int, float), required=False)
    if value is None:
        return None
    if not low <= value <= high:
        raise ApiError(f"field {key!r} must be between {low:g} and {high:g}")
    return float(value)


def _latency(data: dict[str, Any], inferences: int) -> tuple[list[int] | tuple[int, ...], str | None]:
    """The ``lat_*`` column values and the stored sketch of a report of either schema."""
    schema = field(data, "schema", int, required=False, default=1)
    if schema not in REPORT_SCHEMAS:
        raise ApiError(f"field 'schema' must be one of {list(REPORT_SCHEMAS)} (absent means 1)")
    if schema == 1:
        if data.get("latency") is not None:
            raise ApiError("field 'latency' (a sketch) needs \"schema\": 2; schema 1 sends 'latency_counts'")
        latency = field(data, "latency_counts", list)
        if len(latency) != BUCKET_COUNT or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 10**12 for c in latency
        ):
            raise ApiError(f"field 'latency_counts' must be {BUCKET_COUNT} non-negative integers")
        if sum(latency) > inferences:
            raise ApiError("latency_counts hold more samples than inferences")
        return latency, None
    if data.get("latency_counts") is not None:
        raise ApiError("a schema-2 report sends its latencies in 'latency' (a sketch), not 'latency_counts'")
    try:
        sketch = LatencySketch.from_wire(field(data, "latency", dict), max_total=inferences)
    except ValueError as err:
        raise ApiError(f"field 'latency': {err}") from None
    return NO_V1_LATENCY, sketch_text(sketch)
