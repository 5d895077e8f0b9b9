"""The server's wall clock, injectable: token expiry, rotation grace and credential ages read it.

``create_app({"CLOCK": fake})`` with a callable returning an aware UTC datetime lets a test move
time instead of sleeping; without one it is :func:`rollout_server.models.utcnow`.
"""

from __future__ import annotations

import datetime as dt

from flask import current_app

from rollout_server.models import utcnow


def now() -> dt.datetime:
    """The app's time (aware, UTC)."""
    clock = current_app.config.get("CLOCK")
    return clock() if clock is not None else utcnow()


def as_utc(value: dt.datetime) -> dt.datetime:
    """``value`` with its zone: SQLite gives times back without one, and they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def expired(expires_at: dt.datetime | None, at: dt.datetime) -> bool:
    """Whether an optional expiry time has passed at ``at``."""
    return expires_at is not None and as_utc(expires_at) <= at
