"""What the fleet page shows: devices by class, runtime, admission; what they run; who is silent
or failing; who waits for admission. Aggregates in SQL (a fleet of 100,000 devices is one page),
lists capped at :data:`LIST_LIMIT` rows each.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Text, cast, func, or_, select
from sqlalchemy.orm import Session

from edgeship.contract.reports import ERROR_REASONS
from rollout_server import clock
from rollout_server.models import Device, Model, Release, Report, Rollout

LIST_LIMIT = 50


@dataclass
class FleetView:
    """The fleet page's numbers (``recent``: the window the "runs" and "failing" parts look at)."""

    recent: dt.timedelta
    silent_after: dt.timedelta
    admission: Counter = field(default_factory=Counter)
    by_class: list[dict[str, Any]] = field(default_factory=list)
    by_runtime: Counter = field(default_factory=Counter)
    running: list[dict[str, Any]] = field(default_factory=list)
    silent: list[dict[str, Any]] = field(default_factory=list)
    silent_total: int = 0
    failing: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)


def fleet_view(session: Session, now: dt.datetime, recent: dt.timedelta,
               silent_after: dt.timedelta) -> FleetView:
    """Read the fleet page's numbers at ``now``."""
    view = FleetView(recent=recent, silent_after=silent_after)
    states = (Device.admission, Device.revoked)
    by_admission = select(*states, func.count()).group_by(*states)
    for admission, revoked, count in session.execute(by_admission):
        view.admission["revoked" if revoked and admission != "rejected" else admission] += count
    live = (Device.admission == "accepted") & Device.revoked.is_(False)
    silent_cut = now - silent_after
    is_silent = or_(Device.last_seen_at.is_(None), Device.last_seen_at < silent_cut)
    for device_class, total, silent in session.execute(
            select(Device.device_class, func.count(), func.count().filter(is_silent))
            .where(live).group_by(Device.device_class).order_by(Device.device_class)):
        view.by_class.append({"device_class": device_class, "devices": total, "silent": silent})
    as_text = cast(Device.runtimes, Text)  # devices share a few runtime sets: one row per set
    for runtimes, count in session.execute(select(as_text, func.count()).where(live).group_by(as_text)):
        for name in _runtime_names(runtimes):  # JSON keys: read here (SQLite and PostgreSQL differ)
            view.by_runtime[name] += count
    view.running = _running(session, now - recent)
    view.silent_total = session.scalar(select(func.count()).select_from(Device).where(live, is_silent)) or 0
    oldest_first = Device.last_seen_at.asc().nulls_first()
    view.silent = [_device_row(d, now) for d in session.scalars(
        select(Device).where(live, is_silent).order_by(oldest_first).limit(LIST_LIMIT))]
    view.failing = _failing(session, now - recent)
    view.pending = [_device_row(d, now) for d in session.scalars(
        select(Device).where(Device.admission == "pending").order_by(Device.created_at).limit(LIST_LIMIT))]
    return view


def _running(session: Session, since: dt.datetime) -> list[dict[str, Any]]:
    """Devices per model, version, variant, cohort and class among the reports since ``since``.

    The reports are summed per device first (ids, no join), then those rows per group: no
    ``COUNT(DISTINCT)`` and no join per report."""
    keys = (Report.model_id, Report.release_id, Report.variant_id, Report.cohort, Report.device_class)
    per_device = (select(*keys, func.sum(Report.inferences).label("inferences"))
                  .where(*_recent(since)).group_by(*keys, Report.device_id).subquery())
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


def _failing(session: Session, since: dt.datetime) -> list[dict[str, Any]]:
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
        .where(*_recent(since), errors > 0)
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


def _recent(since: dt.datetime) -> tuple[ColumnElement[bool], ...]:
    """Reports whose window ended at ``since`` or later, as ranges of
    ``ix_reports_rollout_id_window_end``: one per rollout and one outside any (every report is
    in one of them), not a scan of the whole table."""
    return (Report.window_end >= since,
            or_(Report.rollout_id.is_(None), Report.rollout_id.in_(select(Rollout.id).scalar_subquery())))


def _runtime_names(stored: str | None) -> list[str]:
    """The runtime names in a device's stored ``runtimes`` JSON (none for NULL or not an object)."""
    value = json.loads(stored) if stored else None
    return sorted(value) if isinstance(value, dict) else []


def _device_row(device: Device, now: dt.datetime) -> dict[str, Any]:
    seen = clock.as_utc(device.last_seen_at) if device.last_seen_at is not None else None
    return {"device_id": device.id, "device_class": device.device_class, "os": device.os, "arch": device.arch,
            "runtimes": ", ".join(f"{k} {v}" for k, v in sorted((device.runtimes or {}).items())),
            "created_at": clock.as_utc(device.created_at), "last_seen_at": seen,
            "ago": ago(now - seen) if seen is not None else "never"}


def ago(delta: dt.timedelta) -> str:
    """``42 s``, ``5 min``, ``3 h``, ``2 d`` ago (the largest unit that fits)."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
