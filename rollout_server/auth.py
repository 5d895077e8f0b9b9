"""Bearer tokens: operator roles, enrollment tokens and per-device credentials.

Tokens are 32 random bytes (urlsafe base64); only their sha256 is stored. Roles are ordered
``viewer < publisher < operator < admin``; an enrollment token can only register devices and a
device credential only reads its own assignment, downloads artifacts and posts its reports.
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

from rollout_server import db_files, hot_cache
from rollout_server.db import db, in_memory
from rollout_server.db_files import FIRST_START_FILE
from rollout_server.errors import Forbidden, Unauthorized
from rollout_server.hot_cache import DeviceSnapshot
from rollout_server.models import AuditEntry, Token

ROLES = ("viewer", "publisher", "operator", "admin")
ENROLL = "enroll"
F = TypeVar("F", bound=Callable[..., Any])


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


def create_token(session: Session, name: str, role: str) -> str:
    """Create a token and return its secret (shown once, stored hashed)."""
    if role not in (*ROLES, ENROLL):
        raise ValueError(f"role {role!r} is not one of {', '.join((*ROLES, ENROLL))}")
    secret = new_secret()
    session.add(Token(name=name, role=role, token_hash=hash_secret(secret)))
    return secret


def operator_token(minimum: str) -> Token:
    """The request's operator token with at least role ``minimum``."""
    token = db().scalar(select(Token).where(Token.token_hash == hash_secret(bearer())))
    if token is None or token.revoked or token.role == ENROLL:
        raise Unauthorized("unknown or revoked token")
    if ROLES.index(token.role) < ROLES.index(minimum):
        raise Forbidden(f"role {token.role!r} may not do this; needs {minimum!r} or higher")
    return token


def requires_role(minimum: str) -> Callable[[F], F]:
    """Decorator: the view runs only for a valid operator token of role ``minimum`` or above."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.actor = operator_token(minimum)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def current_device(device_id: str | None = None) -> DeviceSnapshot:
    """The device whose credential the request carries; it may only act as itself.

    Read through the per-process cache (:mod:`rollout_server.hot_cache`): a credential revoked
    by another worker or replica is refused within ``ASSIGNMENT_CACHE_SECONDS``.
    """
    device = hot_cache.of(current_app).device(hash_secret(bearer()))
    if device is None:
        raise Unauthorized("unknown device credential")
    if device.revoked:  # a distinct reason: the agent stops instead of enrolling itself again
        raise Unauthorized("this device was revoked by an operator", error="device_revoked")
    if device_id is not None and not hmac.compare_digest(device.id.encode(), device_id.encode()):
        raise Forbidden("a device may only act as itself")
    return device


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
