"""Models and releases: publish a signed release, list models, read releases, set the stable one.

``POST /v1/releases`` (publisher) takes ``multipart/form-data``: a part named ``manifest`` (the
``manifest.json`` file) and one part per file the manifest lists (every variant's file and the
golden file), each named by its file name. The release is verified whole before anything is
stored (see :mod:`rollout_server.registry`); any failure is a 4xx ``{"error", "detail"}`` and
leaves no rows and no artifact files behind.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from rollout_server import registry
from rollout_server.analysis import Phase
from rollout_server.artifact_store import app_store
from rollout_server.auth import audit, requires_role
from rollout_server.db import db
from rollout_server.errors import ApiError, Conflict
from rollout_server.models import Model, Release, Rollout
from rollout_server.validation import json_body, short_text

bp = Blueprint("releases", __name__)


@bp.post("/v1/releases")
@requires_role("publisher")
def publish_release():
    """Verify and store a release; 201 when new, 200 for an identical re-publish."""
    data = registry.parse_manifest(_manifest_bytes())
    signed_by = registry.verify_signature(data, registry.trusted_keys(current_app))
    expected = registry.expected_files(data)
    parts = {name: [f.stream for f in request.files.getlist(name)]
             for name in request.files if name != registry.MANIFEST_PART}
    session = db()
    with app_store(current_app).staging() as staging:
        registry.stage_files(staging, parts, expected, current_app.config["MAX_RELEASE_BYTES"])
        existing = registry.check_new_version(session, data)
        if existing is not None:
            staging.commit()  # restores any artifact missing from the store; normally a no-op
            return jsonify({**registry.release_json(existing), "created": False}), 200
        try:
            release = registry.add_release(session, data, signed_by)
            audit("release.publish", f"{data['model']}/{data['version']}", signed_by=signed_by,
                  variants=[v["id"] for v in data["variants"]])
            session.flush()
            staging.commit()
            session.commit()
        except IntegrityError:
            session.rollback()
            raise Conflict(f"{data['model']} version {data['version']} was published concurrently; "
                           "retry to see its state") from None
        except BaseException:
            session.rollback()
            raise
    return jsonify({**registry.release_json(release), "created": True}), 201


@bp.get("/v1/models")
@requires_role("viewer")
def list_models():
    """Every model with its stable version and release count."""
    counts = dict(db().execute(select(Release.model_id, func.count(Release.id)).group_by(Release.model_id))
                  .tuples().all())
    models = db().scalars(select(Model).order_by(Model.name)).all()
    return jsonify(models=[{
        "name": m.name,
        "stable_version": m.stable_release.version if m.stable_release else None,
        "releases": counts.get(m.id, 0),
        "created_at": m.created_at.isoformat(),
    } for m in models])


@bp.get("/v1/models/<name>")
@requires_role("viewer")
def show_model(name: str):
    """One model: its releases (oldest first) and its stable version."""
    model = registry.get_model(db(), name)
    releases = db().scalars(select(Release).where(Release.model_id == model.id).order_by(Release.id)).all()
    return jsonify(
        name=model.name,
        stable_version=model.stable_release.version if model.stable_release else None,
        created_at=model.created_at.isoformat(),
        releases=[{
            "version": r.version,
            "signed_by": r.signed_by,
            "created_at": r.created_at.isoformat(),
            "stable": r.id == model.stable_release_id,
            "variants": [v.variant_id for v in r.variants],
        } for r in releases],
    )


@bp.get("/v1/models/<name>/releases/<version>")
@requires_role("viewer")
def show_release(name: str, version: str):
    """One release: its variants (with download paths) and the signed manifest."""
    return jsonify(registry.release_json(registry.get_release(db(), name, version), manifest=True))


@bp.post("/v1/models/<name>/stable")
@requires_role("operator")
def set_stable(name: str):
    """Make ``{"version": ...}`` the model's stable release (what devices run outside a rollout)."""
    version = short_text(json_body(), "version", max_length=registry.LIMITS["version"])
    session = db()
    release = registry.get_release(session, name, version)
    model = release.model
    unfinished = [p.value for p in Phase if not p.is_terminal]  # pending too: it is about to run
    active = session.scalar(select(Rollout.id).where(Rollout.model_id == model.id,
                                                     Rollout.phase.in_(unfinished)).limit(1))
    if active is not None:
        raise Conflict(f"rollout {active} of {name} is active; promote or abort it instead")
    previous = model.stable_release.version if model.stable_release else None
    model.stable_release = release
    audit("model.set_stable", name, version=version, previous=previous)
    session.commit()
    return jsonify(model=name, stable_version=version, previous_version=previous)


def _manifest_bytes() -> bytes:
    """The ``manifest`` part (a file part, or a plain form field) as bytes."""
    files = request.files.getlist(registry.MANIFEST_PART)
    fields = request.form.getlist(registry.MANIFEST_PART)
    if len(files) + len(fields) != 1:
        raise ApiError("send multipart/form-data with exactly one part named 'manifest' (manifest.json) "
                       "and one part per listed file, named by its file name", 400, "missing_manifest")
    if files:
        return files[0].stream.read(registry.MAX_MANIFEST_BYTES + 1)
    return fields[0].encode("utf-8")
