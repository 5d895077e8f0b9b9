"""When a rollout may move forward: a start time and allowed windows (weekdays 09:00-17:00 in a
time zone). Pure: the controller asks :meth:`Schedule.hold_reason` with its clock's time and
passes the answer to ``decide(..., hold=...)``.

Usage::

    schedule = Schedule.from_dict({"start_at": "2026-12-08T09:00:00+01:00",
                                   "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"],
                                                "from": "09:00", "to": "17:00", "tz": "Europe/Berlin"}]})
    schedule.hold_reason(now)   # None, or "outside the allowed windows; next opens at ..."

Only forward moves wait (start, advance, approval request, promotion); rollbacks and pauses
never do (docs/decisions/2026-12-07-rollout-gates.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: every status read checks them all
MAX_WINDOWS = 32
#: a window's ``to`` may be 24:00 (the end of its day)
END_OF_DAY = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Window:
    """An allowed window, repeated every listed day (the day it opens, in ``tz``).

    Attributes:
        days: indexes into :data:`DAYS` (0 = Monday).
        opens: time of day it opens, as a duration from midnight.
        closes: time of day it closes (up to 24:00); before ``opens``: the next day (overnight).
        tz: IANA time zone name, e.g. ``Europe/Berlin``.
    """

    days: tuple[int, ...]
    opens: dt.timedelta
    closes: dt.timedelta
    tz: str

    @classmethod
    def from_dict(cls, data: Any) -> Window:
        """``{"days"?: ["mon", ...], "from": "09:00", "to": "17:00", "tz"?: "UTC"}``.

        Raises:
            ValueError: naming the field.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"must be an object, got {data!r}")
        unknown = sorted(set(data) - {"days", "from", "to", "tz"})
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(map(str, unknown))}")
        days = data.get("days", list(DAYS))
        if not isinstance(days, list) or not days or not all(d in DAYS for d in days):
            raise ValueError(f"days must be a non-empty list from {list(DAYS)}, got {days!r}")
        tz = data.get("tz", "UTC")
        if not isinstance(tz, str) or tz not in time_zones():  # never a path ZoneInfo would open
            raise ValueError(f"tz: unknown time zone {tz!r} (an IANA name such as 'Europe/Berlin')")
        opens, closes = _time(data, "from"), _time(data, "to")
        if opens == closes or opens >= END_OF_DAY:
            raise ValueError(f"from and to must differ and from must be before 24:00, got "
                             f"{data.get('from')!r}-{data.get('to')!r}")
        return cls(tuple(sorted({DAYS.index(d) for d in days})), opens, closes, tz)

    def to_dict(self) -> dict[str, Any]:
        return {"days": [DAYS[d] for d in self.days], "from": _clock(self.opens), "to": _clock(self.closes),
                "tz": self.tz}

    def spans(self, around: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
        """Its open intervals (aware datetimes) from the day before ``around`` to a week after."""
        zone = ZoneInfo(self.tz)
        first = around.astimezone(zone).date() - dt.timedelta(days=1)
        out = []
        for offset in range(9):
            day = first + dt.timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            midnight = dt.datetime.combine(day, dt.time(), zone)
            close_day = self.closes if self.closes > self.opens else self.closes + dt.timedelta(days=1)
            out.append((_local(midnight, self.opens, zone), _local(midnight, close_day, zone)))
        return out


@dataclass(frozen=True)
class Schedule:
    """A rollout's schedule: when it may start, and the windows it may move forward in (none: any time)."""

    start_at: dt.datetime | None = None  # UTC
    windows: tuple[Window, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Schedule:
        """``{"start_at"?: ISO time, "windows"?: [window, ...]}``; a time without offset is UTC.

        Raises:
            ValueError: naming the field, e.g. ``windows[0].tz: unknown time zone ...``.
        """
        data = data or {}
        start_at = data.get("start_at")
        if start_at is not None:
            if not isinstance(start_at, str):
                raise ValueError(f"start_at must be an ISO 8601 time, got {start_at!r}")
            try:
                start_at = dt.datetime.fromisoformat(start_at)
                if start_at.tzinfo is None:
                    start_at = start_at.replace(tzinfo=dt.timezone.utc)
                start_at = start_at.astimezone(dt.timezone.utc)
            except (ValueError, OverflowError):  # OverflowError: an offset beyond year 1 or 9999
                raise ValueError(f"start_at must be an ISO 8601 time, got {data['start_at']!r}") from None
        raw = data.get("windows")
        if raw is None:
            raw = []
        if not isinstance(raw, list) or len(raw) > MAX_WINDOWS:
            raise ValueError(f"windows must be a list of at most {MAX_WINDOWS} windows, got {raw!r}")
        windows = []
        for i, item in enumerate(raw):
            try:
                windows.append(Window.from_dict(item))
            except ValueError as exc:
                raise ValueError(f"windows[{i}]: {exc}") from None
        return cls(start_at, tuple(windows))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the inverse of :meth:`from_dict`); ``start_at`` in UTC."""
        return {"start_at": None if self.start_at is None else self.start_at.isoformat(),
                "windows": [w.to_dict() for w in self.windows]}

    def is_open(self, now: dt.datetime) -> bool:
        """Whether ``now`` lies in an allowed window (always, without windows)."""
        return not self.windows or any(a <= now < b for w in self.windows for a, b in w.spans(now))

    def next_opening(self, now: dt.datetime) -> dt.datetime | None:
        """The first window opening after ``now`` (in its window's zone); None without windows."""
        openings = [a for w in self.windows for a, _ in w.spans(now) if a > now]
        return min(openings, default=None)

    def hold_reason(self, now: dt.datetime) -> str | None:
        """Why nothing may move forward at ``now`` (before ``start_at``, outside every window), or None."""
        if self.start_at is not None and now < self.start_at:
            return f"scheduled to start at {self.start_at.isoformat()}"
        if self.is_open(now):
            return None
        opening = self.next_opening(now)
        return "outside the allowed windows; next opens at " + (opening.isoformat() if opening else "never")


@cache
def time_zones() -> frozenset[str]:
    """The IANA zone names this system knows (read once: it lists the tz database's files)."""
    return frozenset(available_timezones())


def _time(data: Mapping[str, Any], name: str) -> dt.timedelta:
    value = data.get(name)
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 2 or not all(p.isdigit() and len(p) == 2 for p in parts):
        raise ValueError(f"{name} must be a time HH:MM, got {value!r}")
    hours, minutes = int(parts[0]), int(parts[1])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{name} must be a time from 00:00 to 24:00, got {value!r}")
    return dt.timedelta(hours=hours, minutes=minutes)


def _clock(value: dt.timedelta) -> str:
    minutes = int(value.total_seconds()) // 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _local(midnight: dt.datetime, offset: dt.timedelta, zone: ZoneInfo) -> dt.datetime:
    """Wall-clock ``midnight + offset`` in ``zone`` (not elapsed time: a DST day still opens at 09:00)."""
    naive = midnight.replace(tzinfo=None) + offset
    return naive.replace(tzinfo=zone)

