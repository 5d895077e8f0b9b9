"""``GET /v1/artifacts/<sha256>``: artifact download for devices and operators, with HTTP Range.

A device credential downloads only the artifacts of releases it was assigned (as its release or
its shadow candidate; :mod:`rollout_server.device_access`): anything else answers 404, as an
artifact that does not exist would. Any operator token (viewer and up) downloads anything.
Range, If-Range and conditional requests are answered by :func:`flask.send_file`; the ETag is
the sha256, and the content never changes under its name, so responses are cacheable forever.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from rollout_server import device_access
from rollout_server.artifact_store import app_store, is_sha256
from rollout_server.auth import DEVICE_REJECTED, DEVICE_REVOKED, current_device, operator_token
from rollout_server.errors import ApiError, NotFound, Unauthorized, error_body
from rollout_server.hot_cache import DeviceSnapshot

bp = Blueprint("artifacts", __name__)


@bp.get("/v1/artifacts/<sha256>")
def download(sha256: str):
    """The artifact's bytes (200, 206 for a satisfiable Range, 304 when unchanged)."""
    device = _authorize()
    if not is_sha256(sha256):
        raise ApiError("an artifact is named by its sha256: 64 lowercase hex digits", 400, "bad_digest")
    store = app_store(current_app)
    if device is not None and not device_access.of(current_app).may_download(device.id, sha256):
        raise NotFound(f"no artifact {sha256}")  # the same answer as a missing one: no oracle
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


def _authorize() -> DeviceSnapshot | None:
    """The device whose credential the request carries, or None for an operator token of any
    role; else 401 (a revoked or rejected device's credential is told so, as on every device
    route; a pending device gets 403 ``device_pending``)."""
    try:
        return current_device()
    except Unauthorized as refused:
        if getattr(refused, "error", None) in (DEVICE_REVOKED, DEVICE_REJECTED):
            raise
        operator_token("viewer")
        return None
