"""Admin: operator and enrollment tokens, device revocation, the audit log."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from rollout_server.auth import ENROLL, ROLES, audit, create_token, requires_role
from rollout_server.db import db
from rollout_server.errors import ApiError, NotFound
from rollout_server.models import AuditEntry, Device, Token
from rollout_server.validation import json_body, short_text

bp = Blueprint("admin", __name__, url_prefix="/v1")


@bp.post("/tokens")
@requires_role("admin")
def create():
    """Create an operator token (``role``: viewer, publisher, operator, admin) or an enrollment
    token (``role``: enroll). The secret is in the response only."""
    data = json_body()
    name = short_text(data, "name", max_length=64)
    role = short_text(data, "role", max_length=16)
    if role not in (*ROLES, ENROLL):
        raise ApiError(f"field 'role' must be one of {', '.join((*ROLES, ENROLL))}")
    secret = create_token(db(), name, role)
    audit("token.create", f"token:{name}", role=role)
    db().commit()
    return jsonify(name=name, role=role, token=secret), 201


@bp.get("/tokens")
@requires_role("admin")
def list_tokens():
    tokens = db().scalars(select(Token).order_by(Token.id))
    return jsonify(tokens=[{"id": t.id, "name": t.name, "role": t.role, "revoked": t.revoked,
                            "created_at": t.created_at.isoformat()} for t in tokens])


@bp.post("/tokens/<int(max=2147483647):token_id>/revoke")  # larger ids: 404, not an overflow
@requires_role("admin")
def revoke_token(token_id: int):
    token = db().get(Token, token_id)
    if token is None:
        raise NotFound(f"no token {token_id}")
    token.revoked = True
    audit("token.revoke", f"token:{token.name}")
    db().commit()
    return jsonify(id=token.id, revoked=True)


@bp.post("/devices/<device_id>/revoke")
@requires_role("operator")
def revoke_device(device_id: str):
    device = db().get(Device, device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    device.revoked = True
    audit("device.revoke", f"device:{device_id}")
    db().commit()
    return jsonify(device_id=device_id, revoked=True)


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
