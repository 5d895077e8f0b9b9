"""Operators and devices: list them, accept or reject the pending ones, revoke any.

A device's ``state`` as the API shows it is one of :data:`STATES`: ``pending`` (registered,
waiting for an operator, no assignment), ``active``, ``rejected`` (refused while pending) and
``revoked`` (refused after it was admitted, or while pending). Rejected and revoked are final:
the device must enroll again, as a new device, with a new enrollment token (docs/protocol.md
§2.4). Every change is audited; the cache hooks make other processes see it within
``ASSIGNMENT_CACHE_SECONDS``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy import ColumnElement, and_, or_, select

from rollout_server import clock
from rollout_server.auth import ACCEPTED, PENDING, REJECTED, audit, requires_role
from rollout_server.db import db
from rollout_server.errors import ApiError, Conflict, NotFound
from rollout_server.models import Device
from rollout_server.validation import DEVICE_CLASS

bp = Blueprint("device_admin", __name__, url_prefix="/devices")

STATES = ("pending", "active", "rejected", "revoked")
MAX_LIST = 1000
MAX_SECONDS = 10 * 365 * 86400


def state_of(device: Device) -> str:
    """The device's state as the API names it (see the module docstring)."""
    if device.admission == REJECTED:
        return "rejected"
    if device.revoked:
        return "revoked"
    return "active" if device.admission == ACCEPTED else "pending"


def _state_filter(state: str) -> ColumnElement[bool]:
    not_revoked = Device.revoked.is_(False)
    return {
        "pending": and_(Device.admission == PENDING, not_revoked),
        "active": and_(Device.admission == ACCEPTED, not_revoked),
        "rejected": Device.admission == REJECTED,
        "revoked": and_(Device.revoked.is_(True), Device.admission != REJECTED),
    }[state]


@bp.get("")
@requires_role("viewer")
def list_devices():
    """Devices, oldest first; filters ``state``, ``device_class``, ``seen_within_seconds``,
    ``not_seen_for_seconds`` (never seen counts as not seen), and ``limit`` / ``offset``."""
    args = request.args
    query = select(Device)
    state = args.get("state")
    if state is not None:
        if state not in STATES:
            raise ApiError(f"query parameter 'state' must be one of {', '.join(STATES)}")
        query = query.where(_state_filter(state))
    device_class = args.get("device_class")
    if device_class is not None:
        if not DEVICE_CLASS.match(device_class) or len(device_class) > 32:
            raise ApiError("query parameter 'device_class' must be a device class")
        query = query.where(Device.device_class == device_class)
    now = clock.now()
    within = _int_arg("seen_within_seconds", 1, MAX_SECONDS)
    if within is not None:
        query = query.where(Device.last_seen_at >= now - dt.timedelta(seconds=within))
    unseen = _int_arg("not_seen_for_seconds", 1, MAX_SECONDS)
    if unseen is not None:
        query = query.where(or_(Device.last_seen_at.is_(None),
                                Device.last_seen_at < now - dt.timedelta(seconds=unseen)))
    limit = _int_arg("limit", 1, MAX_LIST) or 100
    offset = _int_arg("offset", 0, 2**31 - 1) or 0
    devices = db().scalars(query.order_by(Device.created_at, Device.id).limit(limit).offset(offset))
    return jsonify(devices=[_view(d) for d in devices])


@bp.post("/<device_id>/accept")
@requires_role("operator")
def accept_device(device_id: str):
    """Admit a pending device (an active one: no change); 409 for a rejected or revoked one."""
    return jsonify(_view(change_device(device_id, "accept")))


@bp.post("/<device_id>/reject")
@requires_role("operator")
def reject_device(device_id: str):
    """Refuse a pending device for good (a rejected one: no change); 409 for an active or revoked
    one (revoke those)."""
    return jsonify(_view(change_device(device_id, "reject")))


@bp.post("/<device_id>/revoke")
@requires_role("operator")
def revoke_device(device_id: str):
    """Refuse a device's credential for good, whatever its state (again: no change)."""
    return jsonify(_view(change_device(device_id, "revoke")))


#: what an operator may do to a device (the API's routes and the console's buttons)
DEVICE_ACTIONS = ("accept", "reject", "revoke")


def change_device(device_id: str, action: str) -> Device:
    """Accept, reject or revoke a device as the request's operator, audited, and commit.

    Raises:
        NotFound: no such device. Conflict: the action does not apply in the device's state.
    """
    device = _device(device_id)
    before = state_of(device)
    if action == "accept":
        if before in ("rejected", "revoked"):
            raise Conflict(f"device {device_id} is {before}: it must enroll again with a new "
                           "enrollment token")
        if before == "pending":
            device.admission = ACCEPTED
            audit("device.accept", f"device:{device_id}", device_class=device.device_class)
    elif action == "reject":
        if before in ("active", "revoked"):
            raise Conflict(f"device {device_id} is {before}, not pending; revoke it instead")
        if before == "pending":
            device.admission, device.revoked = REJECTED, True
            audit("device.reject", f"device:{device_id}", device_class=device.device_class)
    elif action == "revoke":
        if not device.revoked:
            device.revoked = True
            audit("device.revoke", f"device:{device_id}", was=before)
    else:
        raise NotFound(f"no action {action!r}; one of {', '.join(DEVICE_ACTIONS)}")
    db().commit()
    return device


# -- helpers -------------------------------------------------------------------------------------

def _device(device_id: str) -> Device:
    device = db().get(Device, device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    return device


def _int_arg(name: str, minimum: int, maximum: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(f"query parameter {name!r} must be an integer") from None
    if not minimum <= value <= maximum:
        raise ApiError(f"query parameter {name!r} must be between {minimum} and {maximum}")
    return value


def _time(value: dt.datetime | None) -> str | None:
    return clock.as_utc(value).isoformat() if value is not None else None


def _view(device: Device) -> dict[str, Any]:
    return {
        "device_id": device.id, "state": state_of(device), "revoked": bool(device.revoked),
        "device_class": device.device_class, "arch": device.arch, "os": device.os,
        "ram_bytes": device.ram_bytes, "runtimes": device.runtimes,
        "created_at": _time(device.created_at), "last_seen_at": _time(device.last_seen_at),
        "credential_issued_at": _time(device.credential_issued_at or device.created_at),
        "enrollment_token_id": device.enrollment_token_id,
    }
