"""Enrollment tokens' policies, checked at registration (docs/protocol.md §2.1).

A token may expire, may enroll at most ``max_uses`` devices and only some device classes, and
may say whether its devices wait for an operator (``admission``). Each refusal has its own
``error``, so an operator reading the device's log knows which new token it needs. The use is
counted by a conditional ``UPDATE`` in the registration's transaction: two registrations racing
for the last use cannot both get it (PostgreSQL re-checks the condition after the row lock,
SQLite has one writer), and a registration that fails later gives its use back by rolling back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from rollout_server.clock import as_utc, expired
from rollout_server.errors import Forbidden, Unauthorized
from rollout_server.models import Token

ENROLLMENT_EXPIRED, ENROLLMENT_EXHAUSTED, ENROLLMENT_SCOPE = (
    "enrollment_expired", "enrollment_exhausted", "enrollment_scope")
#: server setting ``DEVICE_ADMISSION`` and a token's ``admission``: admit at once, or wait.
ADMISSIONS = ("auto", "manual")


def check_policy(token: Token, device_class: str, now: dt.datetime) -> None:
    """Refuse a registration the token's expiry or class scope does not allow.

    Raises:
        Unauthorized: ``enrollment_expired``.
        Forbidden: ``enrollment_scope`` (the device's class is not among the token's).
    """
    if expired(token.expires_at, now):
        raise Unauthorized(f"enrollment token {token.name!r} expired at "
                           f"{as_utc(token.expires_at).isoformat()}; the device needs a new one",
                           error=ENROLLMENT_EXPIRED)
    if token.device_classes is not None and device_class not in token.device_classes:
        raise Forbidden(f"enrollment token {token.name!r} enrolls only device classes "
                        f"{', '.join(token.device_classes)}, not {device_class!r}", error=ENROLLMENT_SCOPE)


def take_use(session: Session, token: Token) -> None:
    """Count one registration against the token's ``max_uses``, in the session's transaction.

    Raises:
        Unauthorized: ``enrollment_exhausted`` (every use was taken, maybe a moment ago).
    """
    taken = session.execute(
        update(Token).where(Token.id == token.id, or_(Token.max_uses.is_(None), Token.uses < Token.max_uses))
        .values(uses=Token.uses + 1).execution_options(synchronize_session=False)
    ).rowcount
    if not taken:
        raise Unauthorized(f"enrollment token {token.name!r} has enrolled its {token.max_uses} device(s); "
                           "the device needs a new one", error=ENROLLMENT_EXHAUSTED)


def starts_pending(token: Token, config: Mapping[str, Any]) -> bool:
    """Whether a device enrolled with ``token`` waits for an operator: the token's ``admission``,
    else the server's ``DEVICE_ADMISSION``."""
    return (token.admission or config["DEVICE_ADMISSION"]) == "manual"
