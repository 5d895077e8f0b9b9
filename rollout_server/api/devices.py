"""Device enrollment and assignment."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid

from flask import Blueprint, current_app, jsonify, make_response, request
from sqlalchemy import select

from rollout_server.assignment import ReleaseInfo, VariantInfo, choose_variant, cohort_for, release_info
from rollout_server.auth import ENROLL, current_device, hash_secret, new_secret
from rollout_server.db import db
from rollout_server.errors import ApiError, NotFound, Unauthorized
from rollout_server.models import Device, Model, Rollout, Token, utcnow
from rollout_server.validation import DEVICE_CLASS, NAME, count, field, json_body, short_text

bp = Blueprint("devices", __name__, url_prefix="/v1/devices")
ACTIVE_PHASES = ("running", "paused")
LAST_SEEN_RESOLUTION_SECONDS = 60
#: assignment bodies by everything they depend on; releases are immutable, so entries only
#: go stale by key (a new rollout id, phase change via the share, a new stable release).
_DOCUMENTS: dict[tuple, tuple[bytes, str]] = {}
_DOCUMENTS_MAX = 4096


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
        device_class=short_text(data, "device_class", max_length=32, pattern=DEVICE_CLASS),
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
    """The release and variant this device should run now, with an ETag for cheap polling.

    The hot path of the fleet: three indexed reads (device, model, active rollout), release
    data from the per-process cache, the response body cached per (release, variant, cohort,
    rollout, shadow), and ``last_seen_at`` written at most once a minute per device.
    """
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
    body, etag = assignment_document(session, device, model, rollout)
    now = utcnow()
    seen = device.last_seen_at
    if seen is None or (now - (seen if seen.tzinfo else seen.replace(tzinfo=dt.timezone.utc))
                        ).total_seconds() > LAST_SEEN_RESOLUTION_SECONDS:
        device.last_seen_at = now
        session.commit()
    if etag in request.if_none_match:
        response = make_response("", 304)
    else:
        response = make_response(body, 200)
        response.mimetype = "application/json"
    response.set_etag(etag)
    response.headers["Cache-Control"] = "private, no-cache"
    return response


def assignment_document(session, device: Device, model: Model, rollout: Rollout | None) -> tuple[bytes, str]:
    """The assignment as JSON bytes and its ETag (no timestamps in it, so the ETag changes only
    with content)."""
    cohort, release_id = "stable", model.stable_release_id
    if rollout is not None and cohort_for(device, rollout) == "canary":
        cohort, release_id = "canary", rollout.candidate_id
    elif rollout is not None:
        release_id = rollout.baseline_id
    if release_id is None:
        raise NotFound(f"model {model.name!r} has no stable release yet")
    release = release_info(session, release_id)
    variant = choose_variant(release, device)
    if variant is None:
        raise ApiError(
            f"no variant of {model.name} {release.version} runs on this device "
            f"(runtimes {sorted(device.runtimes)}, {device.ram_bytes} bytes RAM)", 409, "no_variant")
    shadow, candidate = None, None
    if rollout is not None and rollout.spec.get("shadow") and cohort == "stable":
        candidate = release_info(session, rollout.candidate_id)
        shadow = choose_variant(candidate, device)
    interval = current_app.config["REPORT_INTERVAL_SECONDS"]
    key = (str(session.get_bind().url), model.name, release.id, variant.variant_id, cohort,
           rollout.id if rollout is not None else None, shadow.variant_id if shadow else None,
           rollout.spec.get("shadow_share", 0.1) if rollout is not None else None, interval)
    cached = _DOCUMENTS.get(key)
    if cached is None:
        body = _document(model.name, release, variant, cohort, rollout, interval)
        if shadow is not None:
            body["shadow"] = {**_release_block(candidate, shadow), "variant_id": shadow.variant_id,
                              "sha256": shadow.sha256,
                              "sample_share": rollout.spec.get("shadow_share", 0.1)}
        data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        cached = (data, hashlib.sha256(data).hexdigest()[:32])
        if len(_DOCUMENTS) >= _DOCUMENTS_MAX:
            _DOCUMENTS.clear()
        _DOCUMENTS[key] = cached
    return cached


def _document(model_name: str, release: ReleaseInfo, variant: VariantInfo, cohort: str,
              rollout: Rollout | None, interval: int) -> dict:
    return {
        "model": model_name,
        "cohort": cohort,
        "rollout_id": rollout.id if rollout is not None else None,
        **_release_block(release, variant),
        "report_interval_seconds": interval,
    }


def _release_block(release: ReleaseInfo, variant: VariantInfo) -> dict:
    """What a device needs to fetch, verify and run one variant of one release."""
    entry = variant.entry
    return {
        "version": release.version,
        "variant": {k: entry.get(k) for k in ("id", "format", "precision", "file", "sha256",
                                              "size_bytes", "runtime", "io", "validation")},
        "artifact_url": f"/v1/artifacts/{variant.sha256}",
        "golden_url": f"/v1/artifacts/{release.manifest['golden']['sha256']}",
        "manifest": release.manifest,
    }
