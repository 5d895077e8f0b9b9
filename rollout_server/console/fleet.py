"""What the fleet page shows: devices by class, runtime, admission; what they run; who is silent
or failing; who waits for admission. Aggregates in SQL (a fleet of 100,000 devices is one page),
lists capped at :data:`LIST_LIMIT` rows each; what runs and who fails from the reports, as the
controller last summed them (:mod:`rollout_server.fleet_activity`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.orm import Session

from rollout_server import clock, fleet_activity
from rollout_server.models import Device

LIST_LIMIT = fleet_activity.LIST_LIMIT


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
    as_of: dt.datetime | None = None
    as_of_ago: str = ""


def fleet_view(session: Session, now: dt.datetime, recent: dt.timedelta, silent_after: dt.timedelta,
               snapshot_age: dt.timedelta = dt.timedelta(0)) -> FleetView:
    """Read the fleet page's numbers at ``now``; what runs and who fails from the controller's
    snapshot when it is at most ``snapshot_age`` old (:mod:`rollout_server.fleet_activity`)."""
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
    activity = fleet_activity.latest(session, now, recent, max_age=snapshot_age)
    view.running, view.failing, view.as_of = activity["running"], activity["failing"], activity["taken_at"]
    view.as_of_ago = ago(now - view.as_of)
    view.silent_total = session.scalar(select(func.count()).select_from(Device).where(live, is_silent)) or 0
    oldest_first = Device.last_seen_at.asc().nulls_first()
    view.silent = [_device_row(d, now) for d in session.scalars(
        select(Device).where(live, is_silent).order_by(oldest_first).limit(LIST_LIMIT))]
    view.pending = [_device_row(d, now) for d in session.scalars(
        select(Device).where(Device.admission == "pending").order_by(Device.created_at).limit(LIST_LIMIT))]
    return view


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
