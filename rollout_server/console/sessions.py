"""Console sessions: an operator token, checked once at sign-in, becomes a server-side session.

The browser holds only a random session secret in an HttpOnly, SameSite=Strict cookie (Secure
under TLS); the server keeps its hash, the token it came from, a CSRF token and two deadlines
(absolute and idle). Every page re-reads the token, so revoking or expiring the token ends its
sessions at once, and signing out deletes the row: a copied cookie is worth nothing afterwards.
Sessions live in the database, so any replica answers any page.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from dataclasses import dataclass

from flask import Request, Response, current_app
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from rollout_server import clock
from rollout_server.auth import ENROLL, ROLES, hash_secret
from rollout_server.models import ConsoleSession, Token

COOKIE = "edgeship_console"
#: the sign-in form's CSRF cookie (double submit: there is no session yet to hold a token).
LOGIN_COOKIE = "edgeship_console_login"
PATH = "/console"
#: write ``last_seen_at`` at most this often (each page would otherwise be a write).
TOUCH_EVERY = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class SignedIn:
    """Who a page is for: the session's row id, its token's name and role, its CSRF token."""

    session_id: int
    name: str
    role: str
    csrf: str
    expires_at: dt.datetime

    def may(self, minimum: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(minimum)


def lifetimes() -> tuple[dt.timedelta, dt.timedelta]:
    """(absolute, idle) session lifetimes from ``CONSOLE_SESSION_HOURS`` / ``CONSOLE_IDLE_MINUTES``."""
    config = current_app.config
    return (dt.timedelta(hours=float(config["CONSOLE_SESSION_HOURS"])),
            dt.timedelta(minutes=float(config["CONSOLE_IDLE_MINUTES"])))


def operator_by_secret(session: Session, secret: str, now: dt.datetime) -> Token | None:
    """The usable operator token whose secret this is (not enrollment, not revoked, not expired)."""
    token = session.scalar(select(Token).where(Token.token_hash == hash_secret(secret.strip())))
    if token is None or token.revoked or token.role == ENROLL or clock.expired(token.expires_at, now):
        return None
    return token


def start(session: Session, token: Token, now: dt.datetime) -> str:
    """A new session for ``token``; returns the cookie's secret (shown to no one else)."""
    absolute, _ = lifetimes()
    secret = secrets.token_urlsafe(32)
    expires = now + absolute
    if token.expires_at is not None:
        expires = min(expires, clock.as_utc(token.expires_at))
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))  # sweep old rows
    session.add(ConsoleSession(session_hash=hash_secret(secret), token_id=token.id,
                               csrf_token=secrets.token_urlsafe(32), created_at=now, last_seen_at=now,
                               expires_at=expires))
    return secret


def current(session: Session, request: Request, now: dt.datetime) -> SignedIn | None:
    """The request's live session, or None (no cookie, unknown, expired, idle, token gone)."""
    secret = request.cookies.get(COOKIE, "")
    if not secret:
        return None
    row = session.scalar(select(ConsoleSession).where(ConsoleSession.session_hash == hash_secret(secret)))
    if row is None:
        return None
    _, idle = lifetimes()
    token = session.get(Token, row.token_id)
    if (clock.expired(row.expires_at, now) or clock.as_utc(row.last_seen_at) + idle <= now or token is None
            or token.revoked or clock.expired(token.expires_at, now)):
        session.delete(row)
        return None
    if now - clock.as_utc(row.last_seen_at) >= TOUCH_EVERY:
        row.last_seen_at = now
    return SignedIn(row.id, token.name, token.role, row.csrf_token, clock.as_utc(row.expires_at))


def end(session: Session, signed_in: SignedIn) -> None:
    """Sign out: the row goes, so the cookie is dead even if someone copied it."""
    session.execute(delete(ConsoleSession).where(ConsoleSession.id == signed_in.session_id))


def csrf_ok(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a form's CSRF field with the expected token."""
    return bool(expected) and given is not None and hmac.compare_digest(expected, given)


def set_cookie(response: Response, name: str, value: str, secure: bool, max_age: int | None) -> None:
    """HttpOnly, SameSite=Strict, path ``/console``; Secure when the page came over TLS."""
    response.set_cookie(name, value, max_age=max_age, path=PATH, secure=secure, httponly=True,
                        samesite="Strict")


def clear_cookie(response: Response, name: str, secure: bool) -> None:
    response.set_cookie(name, "", max_age=0, expires=0, path=PATH, secure=secure, httponly=True,
                        samesite="Strict")
