"""What the fleet page shows: devices by class, runtime, admission; what they run; who is silent
or failing; who waits for admission. Aggregates in SQL (a fleet of 100,000 devices is one page),
lists capped at :data:`LIST_LIMIT` rows each.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from edgeship.contract.reports import ERROR_REASONS
from rollout_server import clock
from rollout_server.models import Device, Model, Release, Report

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
    for (runtimes,) in session.execute(select(Device.runtimes).where(live)):
        for name in sorted(runtimes or {}):  # JSON: counted here, not in SQL (SQLite and PostgreSQL differ)
            view.by_runtime[name] += 1
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
    """Devices per model, version, variant, cohort and class among the reports since ``since``."""
    rows = session.execute(
        select(Model.name, Release.version, Report.variant_id, Report.cohort, Report.device_class,
               func.count(func.distinct(Report.device_id)), func.sum(Report.inferences))
        .join(Model, Model.id == Report.model_id).outerjoin(Release, Release.id == Report.release_id)
        .where(Report.window_end >= since)
        .group_by(Model.name, Release.version, Report.variant_id, Report.cohort, Report.device_class)
        .order_by(Model.name, Release.version, Report.cohort, Report.device_class))
    return [{"model": m, "version": v or "?", "variant": variant, "cohort": cohort, "device_class": cls,
             "devices": devices, "inferences": int(inferences or 0)}
            for m, v, variant, cohort, cls, devices, inferences in rows]


def _failing(session: Session, since: dt.datetime) -> list[dict[str, Any]]:
    """Devices with errors in their reports since ``since``, most errors first."""
    errors = sum(getattr(Report, f"err_{reason}") for reason in ERROR_REASONS)
    per_reason = [func.sum(getattr(Report, f"err_{reason}")) for reason in ERROR_REASONS]
    rows = session.execute(
        select(Report.device_id, Report.device_class, func.sum(errors), func.sum(Report.inferences),
               *per_reason)
        .where(Report.window_end >= since).group_by(Report.device_id, Report.device_class)
        .having(func.sum(errors) > 0).order_by(func.sum(errors).desc()).limit(LIST_LIMIT))
    out = []
    for device_id, device_class, total, inferences, *reasons in rows:
        counts = {reason: int(n or 0) for reason, n in zip(ERROR_REASONS, reasons, strict=True) if n}
        out.append({"device_id": device_id, "device_class": device_class, "errors": int(total or 0),
                    "inferences": int(inferences or 0), "reasons": counts})
    return out


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
