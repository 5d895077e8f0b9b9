"""Admin: operator and enrollment tokens (create, list, revoke, rotate) and the audit log.

The device routes (list, accept, reject, revoke) are :mod:`rollout_server.api.device_admin`,
registered under this blueprint. Every change is written to the audit log.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from rollout_server import clock
from rollout_server.api import device_admin
from rollout_server.auth import ENROLL, ROLES, audit, issue_token, keep_an_admin, lock_admins, requires_role
from rollout_server.db import db
from rollout_server.enrollment import ADMISSIONS
from rollout_server.errors import ApiError, NotFound
from rollout_server.models import AuditEntry, Token
from rollout_server.validation import DEVICE_CLASS, field, json_body, short_text

bp = Blueprint("admin", __name__, url_prefix="/v1")
bp.register_blueprint(device_admin.bp)

#: the longest lifetime a token may be given (10 years), and the longest rotation overlap.
MAX_LIFETIME_SECONDS = 10 * 365 * 86400
MAX_OVERLAP_SECONDS = 7 * 86400
MAX_USES = 10**9
TOKEN_ID = "<int(max=2147483647):token_id>"  # larger ids: 404, not an overflow


@bp.post("/tokens")
@requires_role("admin")
def create():
    """Create an operator token (``role``: viewer, publisher, operator, admin) or an enrollment
    token (``role``: enroll), optionally expiring (``expires_in_seconds``); an enrollment token
    may also take ``max_uses``, ``device_classes`` and ``admission``. The secret is in the
    response only."""
    data = json_body()
    name = short_text(data, "name", max_length=64)
    role = short_text(data, "role", max_length=16)
    if role not in (*ROLES, ENROLL):
        raise ApiError(f"field 'role' must be one of {', '.join((*ROLES, ENROLL))}")
    policy = _policy(data, role)
    token, secret = issue_token(db(), name, role, **policy)
    audit("token.create", f"token:{name}", id=token.id, role=role, **_policy_detail(token))
    db().commit()
    return jsonify(id=token.id, name=name, role=role, token=secret, **_policy_view(token)), 201


@bp.get("/tokens")
@requires_role("admin")
def list_tokens():
    """Every token (never its secret), with its expiry, and for enrollment tokens their uses."""
    now = clock.now()
    tokens = db().scalars(select(Token).order_by(Token.id))
    return jsonify(tokens=[{"id": t.id, "name": t.name, "role": t.role, "revoked": t.revoked,
                            "expired": clock.expired(t.expires_at, now),
                            "created_at": t.created_at.isoformat(), **_policy_view(t)} for t in tokens])


@bp.post(f"/tokens/{TOKEN_ID}/revoke")
@requires_role("admin")
def revoke_token(token_id: int):
    """Revoke a token; 409 ``last_admin`` if no admin token that never expires would remain."""
    session = db()
    lock_admins(session)
    token = _token(token_id)
    token.revoked = True
    session.flush()
    keep_an_admin(session)
    audit("token.revoke", f"token:{token.name}", id=token.id)
    session.commit()
    return jsonify(id=token.id, revoked=True)


@bp.post(f"/tokens/{TOKEN_ID}/rotate")
@requires_role("admin")
def rotate_token(token_id: int):
    """Replace a token by a new secret with the same name, role and policy.

    The old one is revoked at once, or with ``overlap_seconds`` expires that much later (its
    holders switch meanwhile). The new one lives ``expires_in_seconds`` if given, else as long
    as the old one was given (never expiring if it never did). An enrollment token's use count
    starts again at 0.
    """
    data = _optional_body()
    session = db()
    lock_admins(session)
    old = _token(token_id)
    if old.revoked:
        raise ApiError(f"token {token_id} is revoked; create a new one instead", 409, "conflict")
    now = clock.now()
    if clock.expired(old.expires_at, now):
        raise ApiError(f"token {token_id} has expired; create a new one instead", 409, "conflict")
    overlap = _seconds(data, "overlap_seconds", MAX_OVERLAP_SECONDS, minimum=0) or 0
    lifetime = _seconds(data, "expires_in_seconds", MAX_LIFETIME_SECONDS)
    if lifetime is None and old.expires_at is not None:
        lifetime = (clock.as_utc(old.expires_at) - clock.as_utc(old.created_at)).total_seconds()
    expires_at = now + dt.timedelta(seconds=lifetime) if lifetime else None
    new, secret = issue_token(session, old.name, old.role, created_at=now, expires_at=expires_at,
                              max_uses=old.max_uses, device_classes=old.device_classes,
                              admission=old.admission)
    if overlap:
        old.expires_at = min(clock.as_utc(old.expires_at), now + dt.timedelta(seconds=overlap)) \
            if old.expires_at is not None else now + dt.timedelta(seconds=overlap)
    else:
        old.revoked = True
    session.flush()
    keep_an_admin(session)
    audit("token.rotate", f"token:{old.name}", id=old.id, new_id=new.id, overlap_seconds=overlap)
    session.commit()
    return jsonify(id=new.id, name=new.name, role=new.role, token=secret, replaced=old.id,
                   replaced_until=clock.as_utc(old.expires_at).isoformat() if overlap else None,
                   **_policy_view(new)), 201


@bp.get("/audit")
@requires_role("admin")
def audit_log():
    """The newest audit entries first; ``?limit=`` (default 100, at most 1000)."""
    try:
        limit = min(max(int(request.args.get("limit", 100)), 1), 1000)
    except ValueError:
        raise ApiError("query parameter 'limit' must be an integer") from None
    entries = db().scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
    return jsonify(entries=[{"at": e.at.isoformat(), "actor": e.actor, "action": e.action,
                             "target": e.target, "detail": e.detail} for e in entries])


# -- helpers -------------------------------------------------------------------------------------

def _token(token_id: int) -> Token:
    token = db().get(Token, token_id)
    if token is None:
        raise NotFound(f"no token {token_id}")
    return token


def _optional_body() -> dict[str, Any]:
    """The JSON object body, or ``{}`` when there is none."""
    if not request.content_length and not request.headers.get("Transfer-Encoding"):
        return {}
    return json_body()


def _seconds(data: dict[str, Any], key: str, maximum: int, minimum: int = 1) -> int | None:
    value = field(data, key, int, required=False)
    if value is not None and not minimum <= value <= maximum:
        raise ApiError(f"field {key!r} must be between {minimum} and {maximum} seconds")
    return value


def _policy(data: dict[str, Any], role: str) -> dict[str, Any]:
    """The token columns the create body sets: an expiry for any token; uses, classes and
    admission for enrollment tokens only (400 on an operator token)."""
    lifetime = _seconds(data, "expires_in_seconds", MAX_LIFETIME_SECONDS)
    now = clock.now()
    policy: dict[str, Any] = {"created_at": now,
                              "expires_at": now + dt.timedelta(seconds=lifetime) if lifetime else None}
    enroll_only = [key for key in ("max_uses", "device_classes", "admission") if data.get(key) is not None]
    if role != ENROLL:
        if enroll_only:
            raise ApiError(f"field {enroll_only[0]!r} applies to enrollment tokens (role 'enroll') only")
        return policy
    max_uses = field(data, "max_uses", int, required=False)
    if max_uses is not None and not 1 <= max_uses <= MAX_USES:
        raise ApiError(f"field 'max_uses' must be between 1 and {MAX_USES}")
    classes = field(data, "device_classes", list, required=False)
    if classes is not None and (not 1 <= len(classes) <= 64 or not all(
            isinstance(c, str) and 0 < len(c) <= 32 and DEVICE_CLASS.match(c) for c in classes)):
        raise ApiError("field 'device_classes' must list 1 to 64 device classes")
    admission = short_text(data, "admission", max_length=16, required=False)
    if admission is not None and admission not in ADMISSIONS:
        raise ApiError(f"field 'admission' must be one of {', '.join(ADMISSIONS)}")
    return {**policy, "max_uses": max_uses, "admission": admission,
            "device_classes": sorted(set(classes)) if classes is not None else None}


def _policy_view(token: Token) -> dict[str, Any]:
    """What the API shows of a token's policy."""
    view: dict[str, Any] = {
        "expires_at": clock.as_utc(token.expires_at).isoformat() if token.expires_at else None}
    if token.role == ENROLL:
        view.update(uses=token.uses or 0, max_uses=token.max_uses, device_classes=token.device_classes,
                    admission=token.admission)
    return view


def _policy_detail(token: Token) -> dict[str, Any]:
    """The policy for the audit log (only what is set)."""
    return {k: v for k, v in _policy_view(token).items() if v is not None and k != "uses"}
