"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from rollout_server.db import db
from rollout_server.errors import ApiError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """The database answers."""
    try:
        db().execute(text("SELECT 1"))
    except Exception as err:
        raise ApiError(f"database unavailable: {type(err).__name__}", 503, "not_ready") from None
    return jsonify(status="ready")
