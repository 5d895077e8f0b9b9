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
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeship.contract.reports import ERROR_REASONS
from edgeship.contract.sketch import LatencySketch
from rollout_server import clock
from rollout_server.analysis import InvalidTransition, Phase, RolloutState
from rollout_server.api.rollouts import ACTIONS
from rollout_server.models import AuditEntry, Report, Rollout

#: the charts cover at most this many analysis windows back from now.
MAX_WINDOWS = 240
ARMS = ("canary", "stable")
SERIES = ("error_rate", "p50_ms", "p95_ms", "accuracy", "load_failures", "devices", "inferences")


@dataclass
class _Bucket:
    """One arm's sums in one window."""

    inferences: int = 0
    errors: int = 0
    load_failures: int = 0
    labelled: int = 0
    correct: int = 0
    devices: set[str] = field(default_factory=set)
    sketch: LatencySketch = field(default_factory=LatencySketch)

    def point(self) -> dict[str, float | int | None]:
        p50, p95 = self.sketch.quantile(0.5), self.sketch.quantile(0.95)
        return {
            "error_rate": self.errors / self.inferences if self.inferences else None,
            "p50_ms": 1000 * p50 if p50 is not None else None,
            "p95_ms": 1000 * p95 if p95 is not None else None,
            "accuracy": self.correct / self.labelled if self.labelled else None,
            "load_failures": self.load_failures, "devices": len(self.devices), "inferences": self.inferences,
        }


def rollout_series(session: Session, rollout_id: int, now: dt.datetime,
                   window_seconds: float) -> dict[str, Any]:
    """``{"window_seconds", "t": [window end, epoch s], "canary": {series: [...]}, "stable": {...}}``."""
    width = max(1.0, float(window_seconds))
    since = now - dt.timedelta(seconds=width * MAX_WINDOWS)
    load_columns = [getattr(Report, f"err_{reason}") for reason in ("load_failed", "golden_mismatch")]
    error_columns = [getattr(Report, f"err_{reason}") for reason in ERROR_REASONS]
    rows = session.execute(
        select(Report.window_end, Report.cohort, Report.device_id, Report.inferences, Report.labelled,
               Report.correct, Report.latency_sketch, *load_columns, *error_columns)
        .where(Report.rollout_id == rollout_id, Report.window_end >= since))
    buckets: dict[float, dict[str, _Bucket]] = defaultdict(lambda: {arm: _Bucket() for arm in ARMS})
    for end, cohort, device, inferences, labelled, correct, sketch, *errors in rows:
        if cohort not in ARMS:
            continue
        at = clock.as_utc(end).timestamp()
        bucket = buckets[math.floor(at / width) * width + width][cohort]
        bucket.inferences += inferences or 0
        bucket.labelled += labelled or 0
        bucket.correct += correct or 0
        bucket.load_failures += sum(e or 0 for e in errors[:2])
        bucket.errors += sum(e or 0 for e in errors[2:])
        bucket.devices.add(device)
        if sketch:
            with contextlib.suppress(ValueError, TypeError):  # checked on arrival; costs its latency only
                bucket.sketch.merge(LatencySketch.from_wire(json.loads(sketch)))
    times = sorted(buckets)
    out: dict[str, Any] = {"window_seconds": width, "t": times}
    for arm in ARMS:
        points = [buckets[t][arm].point() for t in times]
        out[arm] = {name: [p[name] for p in points] for name in SERIES}
    return out


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
