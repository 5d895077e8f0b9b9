"""What the models and releases pages show: every model with its stable release and rollouts,
and for one release its variants as the converter measured them (from the signed manifest),
who signed and who published it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rollout_server import clock
from rollout_server.analysis.rollout import Phase
from rollout_server.models import AuditEntry, Model, Release, Rollout


def models_view(session: Session) -> list[dict[str, Any]]:
    """One row per model: releases, the stable version, the newest release, rollouts running."""
    counts = dict(session.execute(select(Release.model_id, func.count()).group_by(Release.model_id)).all())
    newest = {model_id: version for model_id, version in session.execute(
        select(Release.model_id, Release.version).order_by(Release.id))}  # the last one per model wins
    active = dict(session.execute(select(Rollout.model_id, func.count())
                                  .where(Rollout.phase.in_([p.value for p in Phase.active()]))
                                  .group_by(Rollout.model_id)).all())
    out = []
    for model in session.scalars(select(Model).order_by(Model.name)):
        out.append({"name": model.name, "releases": counts.get(model.id, 0),
                    "stable": model.stable_release.version if model.stable_release else None,
                    "newest": newest.get(model.id), "active_rollouts": active.get(model.id, 0)})
    return out


def model_view(session: Session, name: str) -> dict[str, Any] | None:
    """A model's releases (newest first) and its rollouts (newest first), or None."""
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        return None
    releases = session.scalars(select(Release).where(Release.model_id == model.id)
                               .order_by(Release.id.desc()))
    rollouts = session.scalars(select(Rollout).where(Rollout.model_id == model.id)
                               .order_by(Rollout.id.desc()))
    return {
        "name": model.name,
        "releases": [{"version": r.version, "signed_by": r.signed_by, "variants": len(r.variants),
                      "created_at": clock.as_utc(r.created_at), "stable": model.stable_release_id == r.id}
                     for r in releases],
        "rollouts": [{"id": r.id, "candidate": r.candidate.version, "baseline": r.baseline.version,
                      "phase": r.phase, "reason": r.reason, "created_at": clock.as_utc(r.created_at)}
                     for r in rollouts],
    }


def release_view(session: Session, name: str, version: str) -> dict[str, Any] | None:
    """One release: its variants with the converter's measurements, signature and publisher."""
    release = session.scalar(select(Release).join(Model, Model.id == Release.model_id)
                             .where(Model.name == name, Release.version == version))
    if release is None:
        return None
    manifest = release.manifest
    published = session.scalar(select(AuditEntry).where(AuditEntry.action == "release.publish",
                                                        AuditEntry.target == f"{name}/{version}")
                               .order_by(AuditEntry.id.desc()).limit(1))
    by_id = {entry.get("id"): entry for entry in manifest.get("variants", []) if isinstance(entry, dict)}
    reference = _mapping(manifest, "reference")
    fp32_sizes = _fp32_sizes(by_id)
    return {
        "model": name, "version": version, "signed_by": release.signed_by,
        "key_id": _mapping(manifest, "signature").get("key_id"),
        "created_at": clock.as_utc(release.created_at), "manifest_created_at": manifest.get("created_at"),
        "published_by": published.actor if published else None,
        "stable": release.model.stable_release_id == release.id,
        "task": _mapping(manifest, "task").get("kind"),
        "reference": {"format": reference.get("format"), "params": reference.get("params")},
        "variants": [_variant(v, by_id.get(v.variant_id, {}), fp32_sizes.get(v.format))
                     for v in release.variants],
        "figures": release_figures(manifest),
    }


def release_figures(manifest: dict[str, Any]) -> list[dict[str, str]]:
    """The report's figures the signed manifest lists: ``{"file", "sha256", "title"}`` each (the
    publish checked them against the schema and stored each file under its digest)."""
    figures = manifest.get("figures")
    return [{"file": f["file"], "sha256": f["sha256"], "title": f.get("title") or f["file"]}
            for f in (figures if isinstance(figures, list) else []) if isinstance(f, dict)]


def _fp32_sizes(by_id: dict[Any, dict[str, Any]]) -> dict[str, int]:
    """Each format's fp32 file size: what that format's variants' size ratios are taken against."""
    sizes: dict[str, int] = {}
    for entry in by_id.values():
        size = entry.get("size_bytes")
        if entry.get("precision") == "fp32" and isinstance(size, int) and size > 0:
            sizes[str(entry.get("format"))] = max(size, sizes.get(str(entry.get("format")), 0))
    return sizes


def _mapping(document: dict[str, Any], key: str) -> dict[str, Any]:
    """``document[key]`` when it is an object, else empty (a manifest's optional blocks)."""
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def _variant(row: Any, entry: dict[str, Any], reference_size: int | None) -> dict[str, Any]:
    metrics = _mapping(entry, "metrics")
    latency = _mapping(metrics, "latency_ms")
    return {
        "id": row.variant_id, "format": row.format, "precision": row.precision, "runtime": row.runtime,
        "runtime_min_version": row.runtime_min_version, "validation": row.validation,
        "size_bytes": row.size_bytes,
        "size_ratio": row.size_bytes / reference_size if reference_size else None,
        "compression": ", ".join(str(c.get("kind", c)) if isinstance(c, dict) else str(c)
                                 for c in entry.get("compression") or []),
        "accuracy": _number(metrics.get("accuracy")), "accuracy_drop": _number(metrics.get("accuracy_drop")),
        "agreement": _number(metrics.get("agreement")), "cosine": _number(metrics.get("cosine")),
        "p50_ms": _number(latency.get("p50")), "p95_ms": _number(latency.get("p95")),
        "peak_rss_bytes": row.peak_rss_bytes, "sha256": row.sha256,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
