"""``GET /openapi.json``: the OpenAPI document of this server (no authentication)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from rollout_server.openapi import openapi_document

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI 3 document (:mod:`rollout_server.openapi`)."""
    response = jsonify(openapi_document())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
