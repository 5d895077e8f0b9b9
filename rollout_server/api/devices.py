"""Device enrollment, assignment and credential rotation."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import select, update

from rollout_server import clock, device_access, hot_cache
from rollout_server.assignment import ReleaseInfo, VariantInfo, cohort_for, in_target, refused_variants
from rollout_server.auth import ACCEPTED, ENROLL, PENDING, bearer, current_device, hash_secret, new_secret
from rollout_server.db import db
from rollout_server.enrollment import check_policy, starts_pending, take_use
from rollout_server.errors import ApiError, Conflict, NotFound, Unauthorized
from rollout_server.hot_cache import DeviceSnapshot, HotCache, ModelState
from rollout_server.models import AuditEntry, Device, Token
from rollout_server.targeting import TargetError, check_attributes
from rollout_server.validation import DEVICE_CLASS, NAME, count, field, json_body, short_text

bp = Blueprint("devices", __name__, url_prefix="/v1/devices")


@bp.post("/register")
def register():
    """Enroll a device with an enrollment token; returns its id, its credential (shown once) and
    its state: ``active``, or ``pending`` until an operator accepts it (docs/protocol.md §2)."""
    data = json_body()
    token = short_text(data, "enrollment_token", max_length=128)
    session = db()
    enrollment = session.scalar(select(Token).where(Token.token_hash == hash_secret(token)))
    if enrollment is None or enrollment.revoked or enrollment.role != ENROLL:
        raise Unauthorized("unknown or revoked enrollment token")
    runtimes = device_runtimes(data)
    now = clock.now()
    credential = new_secret()
    device = Device(
        id=str(uuid.uuid4()),
        device_class=short_text(data, "device_class", max_length=32, pattern=DEVICE_CLASS),
        arch=short_text(data, "arch", max_length=32),
        os=short_text(data, "os", max_length=64),
        ram_bytes=count(data, "ram_bytes"),
        runtimes=runtimes,
        attributes=device_attributes(data, required=False),
        credential_hash=hash_secret(credential),
        credential_issued_at=now,
        enrollment_token_id=enrollment.id,
        admission=PENDING if starts_pending(enrollment, current_app.config) else ACCEPTED,
    )
    check_policy(enrollment, device.device_class, now)
    take_use(session, enrollment)  # the transaction's first write: it waits for a concurrent one
    session.add(device)
    session.commit()
    state = "pending" if device.admission == PENDING else "active"
    return jsonify(device_id=device.id, credential=credential, state=state), 201


@bp.post("/<device_id>/credential")
def rotate_credential(device_id: str):
    """A new credential for this device, without downtime (docs/protocol.md §2.3).

    The credential this request carries stays accepted until the new one is first used, at most
    ``CREDENTIAL_GRACE_SECONDS``: a device that lost the answer, or crashed before storing it,
    is not locked out. Asked with that old credential again, it gets another new one (the
    unused one is dropped) and the old one keeps its original grace.
    """
    device = current_device(device_id)
    presented = hash_secret(bearer())
    now = clock.now()
    credential = new_secret()
    values: dict = {"credential_hash": hash_secret(credential), "credential_issued_at": now}
    if device.by_previous:  # the last new credential was never used: replace it
        matches = Device.previous_credential_hash == presented
        until = dt.datetime.fromtimestamp(device.previous_expires, dt.timezone.utc)
    else:
        matches = Device.credential_hash == presented
        until = now + dt.timedelta(seconds=float(current_app.config["CREDENTIAL_GRACE_SECONDS"]))
        values.update(previous_credential_hash=presented, previous_credential_expires_at=until)
    session = db()
    changed = session.execute(update(Device).where(Device.id == device.id, matches).values(**values)
                              .execution_options(synchronize_session=False)).rowcount
    if not changed:
        raise Conflict("this device's credential changed meanwhile; retry with the credential it has now")
    hot_cache.note_device_change(session)
    session.add(AuditEntry(actor=f"device:{device.id}", action="device.credential_rotate",
                           target=f"device:{device.id}", detail={"replaced_unused": device.by_previous}))
    session.commit()
    return jsonify(device_id=device.id, credential=credential, previous_valid_until=until.isoformat()), 201


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
    body, etag = assignment_document(cache, device, model, current_app.config["REPORT_INTERVAL_SECONDS"],
                                     refused_in_query())
    cache.touch(device)
    headers = {"ETag": f'"{etag}"', "Cache-Control": "private, no-cache", **rotation_hint(device)}
    if etag in request.if_none_match:
        return current_app.response_class(status=304, headers=headers)
    return current_app.response_class(body, headers=headers, mimetype="application/json")


def assignment_document(cache: HotCache, device: DeviceSnapshot, model: ModelState, interval: int,
                        refused: tuple[str | None, tuple[str, ...]] = (None, ())) -> tuple[bytes, str]:
    """The assignment as JSON bytes and its ETag (no timestamps in it, so the ETag changes only
    with content). ``refused``: the release version and ids of variants the device could not
    load (:func:`refused_in_query`); they only change which variant of that release it gets."""
    rollout = model.rollout
    cohort, release_id = "stable", model.stable_release_id
    if rollout is not None and not in_target(device, rollout):
        rollout = None  # outside the rollout: its baseline, no rollout id, no shadow (targeting.py)
        release_id = model.rollout.baseline_id
    elif rollout is not None and cohort_for(device, rollout) == "canary":
        cohort, release_id = "canary", rollout.candidate_id
    elif rollout is not None:
        release_id = rollout.baseline_id
    if release_id is None:
        raise NotFound(f"model {model.name!r} has no stable release yet")
    release = cache.release(release_id)
    excluded = refused_variants(release, *refused)
    variant = cache.variant(release, device, excluded)
    if variant is None and excluded:
        raise ApiError(f"no variant of {model.name} {release.version} runs on this device but the ones it "
                       f"refused ({', '.join(sorted(excluded))})", 409, "no_variant")
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

    # the exclusion is in the key through the variant it chose: same variant, same document
    key = (model.name, release.id, variant.variant_id, cohort, rollout_id,
           shadow.variant_id if shadow else None, share, interval)
    # what it is assigned, it may download (device_access.py): recorded once per device and release
    device_access.of(current_app).record(device.id, (release.id, *((candidate.id,) if shadow else ())))
    return cache.document(key, build)


#: response header telling a device its credential is older than ``CREDENTIAL_MAX_AGE_SECONDS``.
ROTATE_HEADER = "Edgeship-Rotate-Credential"


def rotation_hint(device: DeviceSnapshot) -> dict[str, str]:
    """``{ROTATE_HEADER: "1"}`` when the device should rotate its credential (docs/protocol.md
    §2.3), else ``{}``."""
    max_age = float(current_app.config["CREDENTIAL_MAX_AGE_SECONDS"])
    issued = device.credential_issued
    if max_age <= 0 or issued is None or clock.now().timestamp() - issued <= max_age:
        return {}
    return {ROTATE_HEADER: "1"}


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


# -- refused variants and runtime updates (docs/protocol.md §3.1, §3.7) ---------------------------

#: the most variants one assignment poll may name in ``exclude``.
MAX_EXCLUDED = 16


def device_runtimes(data: dict) -> dict[str, str]:
    """The ``runtimes`` field of a registration or a runtimes update, checked."""
    runtimes = field(data, "runtimes", dict)
    if len(runtimes) > 16 or not all(
        isinstance(k, str) and 0 < len(k) <= 32 and isinstance(v, str) and 0 < len(v) <= 64
        for k, v in runtimes.items()
    ):
        raise ApiError("field 'runtimes' must map runtime names to version strings (at most 16)")
    return runtimes


def refused_in_query() -> tuple[str | None, tuple[str, ...]]:
    """``exclude_version`` and the ``exclude`` ids of an assignment poll: variants of that release
    the device refused (empty when the poll names none)."""
    ids = request.args.getlist("exclude")
    if not ids:
        return None, ()
    version = request.args.get("exclude_version", "")
    if not 0 < len(version) <= 64:
        raise ApiError("query parameter 'exclude' needs 'exclude_version': the version (1-64 characters) "
                       "of the release whose variants it names")
    if len(ids) > MAX_EXCLUDED or not all(0 < len(i) <= 64 for i in ids):
        raise ApiError(f"query parameter 'exclude' names at most {MAX_EXCLUDED} variant ids of 1-64 "
                       "characters")
    return version, tuple(ids)


@bp.put("/<device_id>/runtimes")
def update_runtimes(device_id: str):
    """Replace the runtimes a device announced: what it can load changed since it registered
    (a package upgraded, or a runtime that stopped loading). Assignment sees it within
    ``ASSIGNMENT_CACHE_SECONDS``."""
    device = current_device(device_id, pending_ok=True)  # an operator deciding sees what it runs
    runtimes = device_runtimes(json_body())
    row = db().get(Device, device.id)
    if row.runtimes != runtimes:  # unchanged (every restart sends it): no write, no cache flush
        row.runtimes = runtimes
        db().commit()
    return jsonify(device_id=device.id, runtimes=runtimes)


# -- attributes (docs/protocol.md §2.2, §3.8) ------------------------------------------------------


def device_attributes(data: dict, *, required: bool = True) -> dict[str, str] | None:
    """The ``attributes`` field of a registration (optional) or an attributes update, checked
    (:func:`rollout_server.targeting.check_attributes`)."""
    if data.get("attributes") is None and not required:
        return None
    try:
        return check_attributes(field(data, "attributes", dict))
    except TargetError as err:
        raise ApiError(f"field 'attributes': {err}") from None


@bp.put("/<device_id>/attributes")
def update_attributes(device_id: str):
    """Replace what a device claims of itself for targeting (its app was updated, it moved):
    rollouts that target by attribute see it within ``ASSIGNMENT_CACHE_SECONDS``."""
    device = current_device(device_id, pending_ok=True)
    attributes = device_attributes(json_body())
    row = db().get(Device, device.id)
    if (row.attributes or {}) != attributes:  # unchanged: no write, no cache flush
        row.attributes = attributes
        db().commit()
    return jsonify(device_id=device.id, attributes=attributes)
