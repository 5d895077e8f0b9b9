"""What a rollout's page shows: its stages with when each began, canary against stable per analysis
window (the charts' series), the guards' verdicts and the audit trail.

The series are computed from the stored reports of the rollout, bucketed by the server's analysis
window (``ANALYSIS_WINDOW_SECONDS``) on each report's window end, over the last
:data:`MAX_WINDOWS` windows: error rate, latency p50/p95 (merged schema-2 sketches), accuracy on
labelled inferences, load and golden failures, and reporting devices, per arm.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from edgeship.contract.reports import ERROR_REASONS
from edgeship.contract.sketch import LatencySketch
from rollout_server import clock
from rollout_server.analysis import InvalidTransition, Phase, RolloutState
from rollout_server.api.rollouts import ACTIONS
from rollout_server.device_rows import merged_sketches  # the controller's merge of stored sketches
from rollout_server.models import AuditEntry, Report, Rollout

#: the charts cover at most this many analysis windows back from now.
MAX_WINDOWS = 240
ARMS = ("canary", "stable")
SERIES = ("error_rate", "p50_ms", "p95_ms", "accuracy", "load_failures", "devices", "inferences")


def rollout_series(session: Session, rollout_id: int, now: dt.datetime,
                   window_seconds: float) -> dict[str, Any]:
    """``{"window_seconds", "t": [window end, epoch s], "canary": {series: [...]}, "stable": {...}}``.

    One ``GROUP BY`` (window, arm) in SQL: sums, distinct devices, and the arm's sketches joined
    as text and merged at once (numpy), never a row per report in Python.
    """
    width = max(1.0, float(window_seconds))
    since = now - dt.timedelta(seconds=width * MAX_WINDOWS)
    window = _window_index(session, width)
    load = sum(getattr(Report, f"err_{reason}") for reason in ("load_failed", "golden_mismatch"))
    errors = sum(getattr(Report, f"err_{reason}") for reason in ERROR_REASONS)
    rows = session.execute(
        select(window, Report.cohort, func.sum(Report.inferences), func.sum(Report.labelled),
               func.sum(Report.correct), func.sum(load), func.sum(errors),
               func.count(func.distinct(Report.device_id)),
               func.aggregate_strings(Report.latency_sketch, ","))
        .where(Report.rollout_id == rollout_id, Report.window_end >= since, Report.cohort.in_(ARMS))
        .group_by(window, Report.cohort))
    points: dict[float, dict[str, dict[str, Any]]] = {}
    for index, cohort, *sums, devices, sketches in rows:
        at = float(index) * width + width
        points.setdefault(at, {})[cohort] = _point(*(int(n or 0) for n in sums), int(devices), sketches)
    times = sorted(points)
    out: dict[str, Any] = {"window_seconds": width, "t": times}
    for arm in ARMS:
        arm_points = [points[t].get(arm) or _point(0, 0, 0, 0, 0, 0, None) for t in times]
        out[arm] = {name: [p[name] for p in arm_points] for name in SERIES}
    return out


def _window_index(session: Session, width: float) -> Any:
    """``floor(epoch(window_end) / width)`` in the session's SQL dialect: a report ending exactly on
    a boundary counts in the window that starts there, as before (SQLite: to the millisecond)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.floor(func.extract("epoch", Report.window_end) / width)
    # SQLite stores "YYYY-MM-DD HH:MM:SS[.ffffff]" in UTC; julianday keeps the fraction
    epoch = func.round((func.julianday(Report.window_end) - 2440587.5) * 86400.0, 3)
    return cast(epoch / width, Integer)  # truncation is floor: epochs here are positive


def _point(inferences: int, labelled: int, correct: int, load_failures: int, errors: int, devices: int,
           sketches: str | None) -> dict[str, float | int | None]:
    """One arm's chart values in one window from its sums and its sketches (stored JSON joined by
    ","); a sketch that cannot be read costs the window its latency only (checked on arrival)."""
    sketch = LatencySketch()
    if sketches:
        with contextlib.suppress(ValueError, TypeError):
            sketch = LatencySketch(merged_sketches(sketches))
    p50, p95 = sketch.quantile(0.5), sketch.quantile(0.95)
    return {
        "error_rate": errors / inferences if inferences else None,
        "p50_ms": 1000 * p50 if p50 is not None else None,
        "p95_ms": 1000 * p95 if p95 is not None else None,
        "accuracy": correct / labelled if labelled else None,
        "load_failures": load_failures, "devices": devices, "inferences": inferences,
    }


def stage_timeline(session: Session, rollout: Rollout) -> list[dict[str, Any]]:
    """Each stage: percent, minimum duration, and when it began (from the audit trail), with
    ``state`` ``done`` / ``current`` / ``next``."""
    state = RolloutState.from_dict(rollout.state)
    began = [clock.as_utc(e.at) for e in session.scalars(
        select(AuditEntry).where(AuditEntry.target == f"rollout:{rollout.id}",
                                 AuditEntry.action.in_(("rollout.start", "rollout.advance")))
        .order_by(AuditEntry.id))]
    active = state.phase.is_active
    timeline = []
    for index, stage in enumerate(state.stages):
        if state.phase is Phase.PROMOTED or index < state.stage_index:
            where = "done"
        elif index == state.stage_index and active:
            where = "current"
        else:
            where = "next"
        timeline.append({"index": index + 1, "percent": stage.percent, "state": where,
                         "min_minutes": stage.min_duration_seconds / 60, "min_samples": stage.min_samples,
                         "began_at": began[index] if index < len(began) else None})
    return timeline


def audit_trail(session: Session, rollout_id: int, limit: int = 200) -> list[AuditEntry]:
    """The rollout's audit entries, newest first."""
    return list(session.scalars(select(AuditEntry).where(AuditEntry.target == f"rollout:{rollout_id}")
                                .order_by(AuditEntry.id.desc()).limit(limit)))


def allowed_actions(row: Rollout) -> list[str]:
    """The manual actions the rollout's phase allows now (the buttons shown)."""
    state = RolloutState.from_dict(row.state)
    allowed = []
    for name, act in ACTIONS.items():
        try:
            act(state, clock.now().timestamp())
        except InvalidTransition:
            continue
        allowed.append(name)
    return allowed
