"""Device enrollment and assignment."""

from __future__ import annotations

import hashlib
import json
import uuid

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import select

from rollout_server import hot_cache
from rollout_server.assignment import ReleaseInfo, VariantInfo, cohort_for
from rollout_server.auth import ENROLL, current_device, hash_secret, new_secret
from rollout_server.db import db
from rollout_server.errors import ApiError, NotFound, Unauthorized
from rollout_server.hot_cache import DeviceSnapshot, HotCache, ModelState
from rollout_server.models import Device, Token
from rollout_server.validation import DEVICE_CLASS, NAME, count, field, json_body, short_text

bp = Blueprint("devices", __name__, url_prefix="/v1/devices")


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

    The hot path of the fleet: the device, the model's stable release and active rollout, the
    release data and the response body all come from the per-process cache
    (:mod:`rollout_server.hot_cache`, at most ``ASSIGNMENT_CACHE_SECONDS`` stale across
    processes), and ``last_seen_at`` is written at most once a minute per device.
    """
    device = current_device(device_id)
    name = request.args.get("model", "")
    if not NAME.match(name):
        raise ApiError("query parameter 'model' must be a model name")
    cache = hot_cache.of(current_app)
    model = cache.model(name)
    if model is None:
        raise NotFound(f"no model {name!r}")
    body, etag = assignment_document(cache, device, model, current_app.config["REPORT_INTERVAL_SECONDS"])
    cache.touch(device)
    headers = {"ETag": f'"{etag}"', "Cache-Control": "private, no-cache"}
    if etag in request.if_none_match:
        return current_app.response_class(status=304, headers=headers)
    return current_app.response_class(body, headers=headers, mimetype="application/json")


def assignment_document(cache: HotCache, device: DeviceSnapshot, model: ModelState,
                        interval: int) -> tuple[bytes, str]:
    """The assignment as JSON bytes and its ETag (no timestamps in it, so the ETag changes only
    with content)."""
    rollout = model.rollout
    cohort, release_id = "stable", model.stable_release_id
    if rollout is not None and cohort_for(device, rollout) == "canary":
        cohort, release_id = "canary", rollout.candidate_id
    elif rollout is not None:
        release_id = rollout.baseline_id
    if release_id is None:
        raise NotFound(f"model {model.name!r} has no stable release yet")
    release = cache.release(release_id)
    variant = cache.variant(release, device)
    if variant is None:
        raise ApiError(
            f"no variant of {model.name} {release.version} runs on this device "
            f"(runtimes {sorted(device.runtimes)}, {device.ram_bytes} bytes RAM)", 409, "no_variant")
    shadow, candidate = None, None
    if rollout is not None and rollout.shadow and cohort == "stable":
        candidate = cache.release(rollout.candidate_id)
        shadow = cache.variant(candidate, device)
    rollout_id = rollout.id if rollout is not None else None
    share = rollout.shadow_share if rollout is not None else None

    def build() -> tuple[bytes, str]:
        body = _document(model.name, release, variant, cohort, rollout_id, interval)
        if shadow is not None:
            body["shadow"] = {**_release_block(candidate, shadow), "variant_id": shadow.variant_id,
                              "sha256": shadow.sha256, "sample_share": share}
        data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return data, hashlib.sha256(data).hexdigest()[:32]

    key = (model.name, release.id, variant.variant_id, cohort, rollout_id,
           shadow.variant_id if shadow else None, share, interval)
    return cache.document(key, build)


def _document(model_name: str, release: ReleaseInfo, variant: VariantInfo, cohort: str,
              rollout_id: int | None, interval: int) -> dict:
    return {
        "model": model_name,
        "cohort": cohort,
        "rollout_id": rollout_id,
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
