"""Bearer tokens: operator roles, enrollment tokens and per-device credentials.

Tokens are 32 random bytes (urlsafe base64); only their sha256 is stored. Roles are ordered
``viewer < publisher < operator < admin``; an enrollment token can only register devices and a
device credential only reads its own assignment, downloads the artifacts of releases it was
assigned, posts its reports and rotates itself. Any token may expire; a device credential is
refused for good once its device is revoked or rejected, and answers 403 while the device waits
for an operator (docs/protocol.md §2).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, current_app, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from rollout_server import clock, db_files, hot_cache
from rollout_server.db import db, in_memory
from rollout_server.db_files import FIRST_START_FILE
from rollout_server.errors import Conflict, Forbidden, Unauthorized
from rollout_server.hot_cache import DeviceSnapshot
from rollout_server.models import AuditEntry, Token

ROLES = ("viewer", "publisher", "operator", "admin")
ENROLL = "enroll"
F = TypeVar("F", bound=Callable[..., Any])

#: ``error`` of the device routes' refusals (docs/protocol.md §2.4): the agent acts on each.
DEVICE_REVOKED, DEVICE_REJECTED, DEVICE_PENDING = "device_revoked", "device_rejected", "device_pending"
#: ``Device.admission`` values.
PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"


def new_secret() -> str:
    """A token or device credential: 256 random bits, with a prefix so it never starts with "-"
    (``--token -x...`` would read as an option on any command line) and is easy to spot in a
    leaked file or log."""
    return "es_" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    return value.strip()


def create_token(session: Session, name: str, role: str, **policy: Any) -> str:
    """Create a token and return its secret (shown once, stored hashed)."""
    return issue_token(session, name, role, **policy)[1]


def issue_token(session: Session, name: str, role: str, **policy: Any) -> tuple[Token, str]:
    """Add a token (flushed: it has its id) and return it with its secret.

    ``policy``: :class:`~rollout_server.models.Token` columns such as ``expires_at``,
    ``max_uses``, ``device_classes``, ``admission``.
    """
    if role not in (*ROLES, ENROLL):
        raise ValueError(f"role {role!r} is not one of {', '.join((*ROLES, ENROLL))}")
    secret = new_secret()
    token = Token(name=name, role=role, token_hash=hash_secret(secret), uses=0, **policy)
    session.add(token)
    session.flush()
    return token, secret


def operator_token(minimum: str) -> Token:
    """The request's operator token with at least role ``minimum``."""
    token = db().scalar(select(Token).where(Token.token_hash == hash_secret(bearer())))
    if token is None or token.revoked or token.role == ENROLL:
        raise Unauthorized("unknown or revoked token")
    if clock.expired(token.expires_at, clock.now()):
        raise Unauthorized(f"token {token.name!r} expired at {clock.as_utc(token.expires_at).isoformat()}",
                           error="token_expired")
    if ROLES.index(token.role) < ROLES.index(minimum):
        raise Forbidden(f"role {token.role!r} may not do this; needs {minimum!r} or higher")
    return token


def keep_an_admin(session: Session) -> None:
    """Refuse (409 ``last_admin``) a change that leaves no usable admin token that never expires:
    with none, the server could only be administered again by editing its database. Call it
    after the change is flushed, in its transaction; the admin rows are locked first (PostgreSQL),
    so two concurrent revocations cannot each leave the other's token as the last one."""
    admins = select(Token.id).where(Token.role == "admin", Token.revoked.is_(False),
                                    Token.expires_at.is_(None))
    if not session.scalars(admins.with_for_update()).first():
        raise Conflict("this would leave no admin token that never expires; create another admin token "
                       "without expires_in_seconds first", error="last_admin")


def lock_admins(session: Session) -> None:
    """Lock the admin tokens' rows (PostgreSQL; SQLite has one writer anyway) before a change that
    :func:`keep_an_admin` checks."""
    session.scalars(select(Token.id).where(Token.role == "admin").with_for_update()).all()


def requires_role(minimum: str) -> Callable[[F], F]:
    """Decorator: the view runs only for a valid operator token of role ``minimum`` or above."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.actor = operator_token(minimum)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def current_device(device_id: str | None = None, *, pending_ok: bool = False) -> DeviceSnapshot:
    """The device whose credential the request carries; it may only act as itself.

    Read through the per-process cache (:mod:`rollout_server.hot_cache`): a credential revoked
    by another worker or replica is refused within ``ASSIGNMENT_CACHE_SECONDS``. A credential
    rotated away from is accepted until its grace ends or the new one is first used (which
    retires it). A pending device is refused (403 ``device_pending``) unless ``pending_ok``.
    """
    cache = hot_cache.of(current_app)
    device = cache.device(hash_secret(bearer()))
    if device is None:
        raise Unauthorized("unknown device credential")
    if device.by_previous and (device.previous_expires is None
                               or device.previous_expires <= clock.now().timestamp()):
        raise Unauthorized("unknown device credential")  # rotated away from, and its grace is over
    if device.revoked or device.admission == REJECTED:  # distinct reasons: the agent stops for good
        if device.admission == REJECTED:
            raise Unauthorized("an operator rejected this device", error=DEVICE_REJECTED)
        raise Unauthorized("this device was revoked by an operator", error=DEVICE_REVOKED)
    if device_id is not None and not hmac.compare_digest(device.id.encode(), device_id.encode()):
        raise Forbidden("a device may only act as itself")
    if device.admission == PENDING and not pending_ok:
        raise DevicePending(current_app.config["PENDING_RETRY_SECONDS"])
    if device.has_previous and not device.by_previous:
        cache.retire_previous_credential(device)  # the new credential is in use: the old one is done
    return device


class DevicePending(Forbidden):
    """403 ``device_pending``: registered, waiting for an operator; ask again after ``Retry-After``."""

    error = DEVICE_PENDING

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__("this device waits for an operator to accept it (edgeship devices accept); "
                         "keep the credential and ask again later")
        self.retry_after = int(retry_after_seconds)


def audit(action: str, target: str, **detail: Any) -> None:
    """Record an admin action by the request's operator token (committed with the request)."""
    actor = getattr(g, "actor", None)
    db().add(AuditEntry(actor=actor.name if actor else "system", action=action, target=target,
                        detail=detail))


def ensure_first_tokens(app: Flask, session: Session) -> Path | None:
    """On first start (no tokens yet) create an admin and an enrollment token and write them to
    ``DATA_DIR/first-start-tokens.txt`` (mode 0600). Returns the file, or None if not first.

    A database without tokens in a data directory that was in use (a token file, stored
    artifacts, the database marker) is not a first start but a lost or wrong database: that
    raises :class:`rollout_server.db_files.StartupRefused` instead of minting tokens that would
    lock out every device and operator, and the token file is never overwritten.
    """
    if session.scalar(select(Token.id).limit(1)) is not None:
        return None
    persistent = not in_memory(app.config["DATABASE_URL"])  # an in-memory one is new every start
    if persistent:
        db_files.refuse_reused_data_dir(app, "the database has no tokens")
    admin = create_token(session, "admin", "admin")
    enroll = create_token(session, "enrollment", ENROLL)
    path = Path(app.config["DATA_DIR"]) / FIRST_START_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if persistent else os.O_TRUNC), 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"EDGESHIP_ADMIN_TOKEN={admin}\nEDGESHIP_ENROLL_TOKEN={enroll}\n")
    if persistent:
        db_files.write_marker(app)
    return path
