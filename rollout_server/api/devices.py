"""Device enrollment and assignment."""

from __future__ import annotations

import hashlib
import json
import uuid

from flask import Blueprint, current_app, jsonify, make_response, request
from sqlalchemy import select

from rollout_server.assignment import choose_variant, cohort_for
from rollout_server.auth import ENROLL, current_device, hash_secret, new_secret
from rollout_server.db import db
from rollout_server.errors import ApiError, NotFound, Unauthorized
from rollout_server.models import Device, Model, Rollout, Token, utcnow
from rollout_server.validation import NAME, count, field, json_body, short_text

bp = Blueprint("devices", __name__, url_prefix="/v1/devices")
ACTIVE_PHASES = ("running", "paused")


@bp.post("/register")
def register():
    """Enroll a device with an enrollment token; returns its id and credential (shown once)."""
    data = json_body()
    token = short_text(data, "enrollment_token", max_length=128)
    enrollment = db().scalar(select(Token).where(Token.token_hash == hash_secret(token)))
    if enrollment is None or enrollment.revoked or enrollment.role != ENROLL:
        raise Unauthorized("unknown or revoked enrollment token")
    runtimes = field(data, "runtimes", dict)
    if len(runtimes) > 16 or not all(
        isinstance(k, str) and 0 < len(k) <= 32 and isinstance(v, str) and 0 < len(v) <= 64
        for k, v in runtimes.items()
    ):
        raise ApiError("field 'runtimes' must map runtime names to version strings (at most 16)")
    credential = new_secret()
    device = Device(
        id=str(uuid.uuid4()),
        device_class=short_text(data, "device_class", max_length=32, pattern=NAME),
        arch=short_text(data, "arch", max_length=32),
        os=short_text(data, "os", max_length=64),
        ram_bytes=count(data, "ram_bytes"),
        runtimes=runtimes,
        credential_hash=hash_secret(credential),
    )
    db().add(device)
    db().commit()
    return jsonify(device_id=device.id, credential=credential), 201


@bp.get("/<device_id>/assignment")
def assignment(device_id: str):
    """The release and variant this device should run now, with an ETag for cheap polling."""
    device = current_device(device_id)
    name = request.args.get("model", "")
    if not NAME.match(name):
        raise ApiError("query parameter 'model' must be a model name")
    session = db()
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise NotFound(f"no model {name!r}")
    rollout = session.scalar(
        select(Rollout).where(Rollout.model_id == model.id, Rollout.phase.in_(ACTIVE_PHASES))
    )
    body = assignment_body(device, model, rollout)
    device.last_seen_at = utcnow()
    session.commit()
    etag = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]
    not_modified = etag in request.if_none_match
    response = make_response("", 304) if not_modified else make_response(jsonify(body), 200)
    response.set_etag(etag)
    response.headers["Cache-Control"] = "private, no-cache"
    return response


def assignment_body(device: Device, model: Model, rollout: Rollout | None) -> dict:
    """The assignment document (no timestamps in it, so the ETag changes only with content)."""
    cohort, release = "stable", model.stable_release
    if rollout is not None and cohort_for(device, rollout) == "canary":
        cohort, release = "canary", rollout.candidate
    elif rollout is not None:
        release = rollout.baseline
    if release is None:
        raise NotFound(f"model {model.name!r} has no stable release yet")
    variant = choose_variant(release, device)
    if variant is None:
        raise ApiError(
            f"no variant of {model.name} {release.version} runs on this device "
            f"(runtimes {sorted(device.runtimes)}, {device.ram_bytes} bytes RAM)", 409, "no_variant")
    entry = next(e for e in release.manifest["variants"] if e["id"] == variant.variant_id)
    body = {
        "model": model.name,
        "version": release.version,
        "cohort": cohort,
        "rollout_id": rollout.id if rollout is not None else None,
        "variant": {k: entry.get(k) for k in ("id", "format", "precision", "file", "sha256",
                                              "size_bytes", "runtime", "io", "validation")},
        "artifact_url": f"/v1/artifacts/{variant.sha256}",
        "golden_url": f"/v1/artifacts/{release.manifest['golden']['sha256']}",
        "manifest": release.manifest,
        "report_interval_seconds": current_app.config["REPORT_INTERVAL_SECONDS"],
    }
    if rollout is not None and rollout.spec.get("shadow") and cohort == "stable":
        shadow = choose_variant(rollout.candidate, device)
        if shadow is not None:
            body["shadow"] = {"version": rollout.candidate.version, "variant_id": shadow.variant_id,
                              "sha256": shadow.sha256, "artifact_url": f"/v1/artifacts/{shadow.sha256}",
                              "sample_share": rollout.spec.get("shadow_share", 0.1)}
    return body
