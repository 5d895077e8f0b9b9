"""``GET /v1/artifacts/<sha256>``: artifact download for devices and operators, with HTTP Range.

Any registered device credential or any operator token (viewer and up) may download. Range,
If-Range and conditional requests are answered by :func:`flask.send_file`; the ETag is the
sha256, and the content never changes under its name, so responses are cacheable forever.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from rollout_server.artifact_store import app_store, is_sha256
from rollout_server.auth import current_device, operator_token
from rollout_server.errors import ApiError, NotFound, Unauthorized, error_body

bp = Blueprint("artifacts", __name__)


@bp.get("/v1/artifacts/<sha256>")
def download(sha256: str):
    """The artifact's bytes (200, 206 for a satisfiable Range, 304 when unchanged)."""
    _authorize()
    if not is_sha256(sha256):
        raise ApiError("an artifact is named by its sha256: 64 lowercase hex digits", 400, "bad_digest")
    store = app_store(current_app)
    if not store.has(sha256):
        raise NotFound(f"no artifact {sha256}")
    path = store.path_for(sha256)
    try:
        response = send_file(path, mimetype="application/octet-stream", conditional=True, etag=sha256,
                             max_age=365 * 24 * 3600, download_name=sha256)
    except RequestedRangeNotSatisfiable:
        response = jsonify(error_body("range_not_satisfiable",
                                      f"the range lies outside the artifact's {path.stat().st_size} bytes"))
        response.status_code = 416
        response.headers["Content-Range"] = f"bytes */{path.stat().st_size}"
        return response
    response.headers["Cache-Control"] = "private, max-age=31536000, immutable"
    return response


def _authorize() -> None:
    """A device credential or an operator token of any role; else 401 (a revoked device's
    credential is told so, ``device_revoked``, as on every device route)."""
    try:
        current_device()
    except Unauthorized as refused:
        if getattr(refused, "error", None) == "device_revoked":
            raise
        operator_token("viewer")
