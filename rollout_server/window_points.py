"""Each arm of a rollout per analysis window, stored as the controller analyses the windows.

A chart of a rollout over a day at 10,000 devices would otherwise read 14 million reports per
poll. When the controller claims a window (once per window, whatever the number of replicas), it
sums the reports of the windows since its last claim per arm into :class:`WindowPoint` rows: the
error and load-failure counts, labelled and correct inferences, distinct reporting devices and the
latency p50/p95 of the arm's merged sketches. Windows are the grid of ``ANALYSIS_WINDOW_SECONDS``
on each report's window end. The window before the last claim is summed again, so a report that
arrives up to a window late is in its point; one later than that is in the guards' numbers (they
read the stage's reports) but not in the chart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from typing import Any

from sqlalchemy import Integer, cast, delete, func, select
from sqlalchemy.orm import Session

from edgeship.contract.reports import ERROR_REASONS
from edgeship.contract.sketch import LatencySketch
from rollout_server.device_rows import merged_sketches  # the controller's merge of stored sketches
from rollout_server.models import Report, WindowPoint

ARMS = ("canary", "stable")
#: what a chart can draw of each point (and the live page's JSON keys)
SERIES = ("error_rate", "p50_ms", "p95_ms", "accuracy", "load_failures", "devices", "inferences")
#: the stored columns a chart reads
_STORED = ("window_end", "arm", "inferences", "labelled", "correct", "load_failures", "errors", "devices",
           "p50_ms", "p95_ms")
#: the most windows summed in one claim (a controller that was down for days starts a day back)
MAX_CATCH_UP_WINDOWS = 1440


def record_window_points(session: Session, rollout_id: int, previous: dt.datetime | None,
                         now: dt.datetime, window_seconds: float) -> int:
    """Sum the windows from the one before ``previous`` (the last claim) through the one holding
    ``now`` into points, replacing those windows' earlier points; returns the points written.

    With no earlier claim, it starts :data:`MAX_CATCH_UP_WINDOWS` back (the rollout's reports are
    read by index from its first one)."""
    width = max(1.0, float(window_seconds))
    last = math.floor(now.timestamp() / width)
    first = last - MAX_CATCH_UP_WINDOWS
    if previous is not None:
        first = max(first, math.floor(previous.timestamp() / width) - 1)
    since = dt.datetime.fromtimestamp(first * width, dt.timezone.utc)
    window = _window_index(session, width)
    load = sum(getattr(Report, f"err_{reason}") for reason in ("load_failed", "golden_mismatch"))
    errors = sum(getattr(Report, f"err_{reason}") for reason in ERROR_REASONS)
    rows = session.execute(
        select(window, Report.cohort, func.sum(Report.inferences), func.sum(Report.labelled),
               func.sum(Report.correct), func.sum(load), func.sum(errors),
               func.count(func.distinct(Report.device_id)),
               func.aggregate_strings(Report.latency_sketch, ","))
        .where(Report.rollout_id == rollout_id, Report.window_end >= since, Report.cohort.in_(ARMS))
        .group_by(window, Report.cohort)).all()
    session.execute(delete(WindowPoint).where(WindowPoint.rollout_id == rollout_id,
                                              WindowPoint.window_end > int(first * width)))
    points = []
    for index, arm, inferences, labelled, correct, load_failures, error_count, devices, sketches in rows:
        p50, p95 = _quantiles(sketches)
        points.append(WindowPoint(
            rollout_id=rollout_id, window_end=int((int(index) + 1) * width), arm=arm,
            inferences=int(inferences or 0), labelled=int(labelled or 0), correct=int(correct or 0),
            load_failures=int(load_failures or 0), errors=int(error_count or 0), devices=int(devices),
            p50_ms=p50, p95_ms=p95))
    session.add_all(points)
    return len(points)


def rollout_series(session: Session, rollout_id: int, since: float | None = None,
                   limit: int = MAX_CATCH_UP_WINDOWS) -> dict[str, Any]:
    """``{"t": [window end, epoch s], "canary": {series: [...]}, "stable": {...}}`` of the rollout's
    last ``limit`` stored windows, only those ending at ``since`` or later when given (a page that
    already holds the older ones); an arm without reports in a window has ``None`` there."""
    columns = [getattr(WindowPoint, name) for name in _STORED]
    query = select(*columns).where(WindowPoint.rollout_id == rollout_id)
    if since is not None:
        query = query.where(WindowPoint.window_end >= since)
    newest = (select(WindowPoint.window_end).where(WindowPoint.rollout_id == rollout_id)
              .group_by(WindowPoint.window_end).order_by(WindowPoint.window_end.desc()).limit(limit))
    oldest = session.scalars(select(func.min(newest.subquery().c.window_end))).one()
    if oldest is not None:
        query = query.where(WindowPoint.window_end >= oldest)
    by_time: dict[int, dict[str, dict[str, Any]]] = {}
    for row in session.execute(query).tuples():  # plain rows: 2,880 for a day, no ORM objects
        point = dict(zip(_STORED, row, strict=True))
        by_time.setdefault(point["window_end"], {})[point["arm"]] = chart_values(point)
    times = sorted(by_time)
    out: dict[str, Any] = {"t": times}
    for arm in ARMS:
        values = [by_time[t].get(arm) or dict.fromkeys(SERIES) for t in times]
        out[arm] = {name: [v[name] for v in values] for name in SERIES}
    return out


def chart_values(point: dict[str, Any]) -> dict[str, float | int | None]:
    """What a chart draws of one stored point (its columns by name)."""
    inferences, labelled = point["inferences"], point["labelled"]
    return {
        "error_rate": point["errors"] / inferences if inferences else None,
        "p50_ms": point["p50_ms"], "p95_ms": point["p95_ms"],
        "accuracy": point["correct"] / labelled if labelled else None,
        "load_failures": point["load_failures"], "devices": point["devices"], "inferences": inferences,
    }


def _quantiles(sketches: str | None) -> tuple[float | None, float | None]:
    """p50 and p95 in ms of the arm's sketches (stored JSON joined by ","); a sketch that cannot be
    read costs the window its latency only (each was checked on arrival)."""
    sketch = LatencySketch()
    if sketches:
        with contextlib.suppress(ValueError, TypeError):
            sketch = LatencySketch(merged_sketches(sketches))
    p50, p95 = sketch.quantile(0.5), sketch.quantile(0.95)
    return (1000 * p50 if p50 is not None else None, 1000 * p95 if p95 is not None else None)


def _window_index(session: Session, width: float) -> Any:
    """``floor(epoch(window_end) / width)`` in the session's SQL dialect: a report ending exactly on
    a boundary counts in the window that starts there (SQLite: to the millisecond)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.floor(func.extract("epoch", Report.window_end) / width)
    # SQLite stores "YYYY-MM-DD HH:MM:SS[.ffffff]" in UTC; julianday keeps the fraction
    epoch = func.round((func.julianday(Report.window_end) - 2440587.5) * 86400.0, 3)
    return cast(epoch / width, Integer)  # truncation is floor: epochs here are positive
