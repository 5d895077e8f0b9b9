"""What the fleet runs and who fails, from the recent reports, taken once per analysis window.

Reading the last minutes of reports costs time proportional to the fleet (150,000 rows at
10,000 devices reporting every minute: a third of a second on SQLite). The controller's pass
takes this snapshot once per analysis window, whatever the number of replicas (a conditional
``UPDATE`` claims it, as a rollout's window is claimed), and the fleet page reads the stored
rows; without a fresh snapshot (no controller runs, or it lags) the page computes it itself.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgeship.contract.reports import ERROR_REASONS
from rollout_server.clock import as_utc
from rollout_server.models import FleetSnapshot, Model, Release, Report, Rollout

#: rows kept in each list of the snapshot
LIST_LIMIT = 50
NAME = "fleet"


def take_if_due(session: Session, now: dt.datetime, every: dt.timedelta, recent: dt.timedelta) -> bool:
    """Take the snapshot of the last ``recent`` at ``now`` unless one was taken less than
    ``every`` ago (here or by another process); True when this call took it."""
    claimed = session.execute(update(FleetSnapshot)
                              .where(FleetSnapshot.name == NAME, FleetSnapshot.taken_at <= now - every)
                              .values(taken_at=now)).rowcount == 1
    if not claimed:
        if session.get(FleetSnapshot, NAME) is not None:
            return False
        try:
            with session.begin_nested():
                session.add(FleetSnapshot(name=NAME, taken_at=now, body={}))
        except IntegrityError:  # another process took the first one
            return False
    session.get(FleetSnapshot, NAME).body = activity(session, now, recent)
    return True


def latest(session: Session, now: dt.datetime, recent: dt.timedelta,
           max_age: dt.timedelta) -> dict[str, Any]:
    """The stored snapshot when it covers ``recent`` and is younger than ``max_age``, else one
    computed now: ``{"taken_at", "recent_seconds", "running", "failing"}``."""
    stored = session.get(FleetSnapshot, NAME)
    if (stored is not None and stored.body and stored.body.get("recent_seconds") == recent.total_seconds()
            and now - as_utc(stored.taken_at) <= max_age):
        return {**stored.body, "taken_at": as_utc(stored.taken_at)}
    return {**activity(session, now, recent), "taken_at": now}


def activity(session: Session, now: dt.datetime, recent: dt.timedelta) -> dict[str, Any]:
    """Devices per model, version, variant, cohort and class, and the failing devices, among the
    reports whose window ended in the last ``recent`` (JSON-ready)."""
    since = now - recent
    return {"recent_seconds": recent.total_seconds(), "running": running(session, since),
            "failing": failing(session, since)}


def running(session: Session, since: dt.datetime) -> list[dict[str, Any]]:
    """Devices per model, version, variant, cohort and class among the reports since ``since``.

    The reports are summed per device first (ids, no join), then those rows per group: no
    ``COUNT(DISTINCT)`` and no join per report."""
    keys = (Report.model_id, Report.release_id, Report.variant_id, Report.cohort, Report.device_class)
    per_device = (select(*keys, func.sum(Report.inferences).label("inferences"))
                  .where(*recent_reports(since)).group_by(*keys, Report.device_id).subquery())
    c = per_device.c
    rows = session.execute(
        select(Model.name, Release.version, c.variant_id, c.cohort, c.device_class, func.count(),
               func.sum(c.inferences))
        .join(Model, Model.id == c.model_id).outerjoin(Release, Release.id == c.release_id)
        .group_by(Model.name, Release.version, c.variant_id, c.cohort, c.device_class)
        .order_by(Model.name, Release.version, c.cohort, c.device_class))
    return [{"model": m, "version": v or "?", "variant": variant, "cohort": cohort, "device_class": cls,
             "devices": devices, "inferences": int(inferences or 0)}
            for m, v, variant, cohort, cls, devices, inferences in rows]


def failing(session: Session, since: dt.datetime) -> list[dict[str, Any]]:
    """Devices with errors in their reports since ``since``, most errors first.

    Only the reports with errors are grouped to find them (most reports have none); their
    inferences are then summed over all their recent reports, for those devices only. Grouped by
    class first: by device first, SQLite (without statistics: the server runs no ``ANALYZE``)
    would walk the whole table in device order to save a sort, not the last minutes by time.
    """
    errors = sum(getattr(Report, f"err_{reason}") for reason in ERROR_REASONS)
    per_reason = [func.sum(getattr(Report, f"err_{reason}")) for reason in ERROR_REASONS]
    rows = session.execute(
        select(Report.device_id, Report.device_class, func.sum(errors), *per_reason)
        .where(*recent_reports(since), errors > 0)
        .group_by(Report.device_class, Report.device_id)  # class first: see the docstring
        .order_by(func.sum(errors).desc(), Report.device_id).limit(LIST_LIMIT)).all()
    inferences = dict(session.execute(
        select(Report.device_id, func.sum(Report.inferences))
        .where(Report.window_end >= since, Report.device_id.in_({row[0] for row in rows}))
        .group_by(Report.device_id)).all()) if rows else {}
    out = []
    for device_id, device_class, total, *reasons in rows:
        counts = {reason: int(n or 0) for reason, n in zip(ERROR_REASONS, reasons, strict=True) if n}
        out.append({"device_id": device_id, "device_class": device_class, "errors": int(total or 0),
                    "inferences": int(inferences.get(device_id) or 0), "reasons": counts})
    return out


def recent_reports(since: dt.datetime) -> tuple[ColumnElement[bool], ...]:
    """Reports whose window ended at ``since`` or later, as ranges of
    ``ix_reports_rollout_id_window_end``: one per rollout and one outside any (every report is
    in one of them), not a scan of the whole table."""
    return (Report.window_end >= since,
            or_(Report.rollout_id.is_(None), Report.rollout_id.in_(select(Rollout.id).scalar_subquery())))
