"""The model registry: verify an uploaded release and store it whole, or store nothing.

A release upload is checked in this order, every check before anything is committed:

1. the manifest parses as JSON and follows ``edgeship.manifest/v1`` (plus the server's column
   limits);
2. its Ed25519 signature verifies against a trusted publisher key (``TRUSTED_KEYS``);
3. every variant's file and the golden file arrived as a part named by its plain file name,
   with the manifest's sha256 and size (files are staged, not yet in the artifact store);
4. the model's version is new: the same version again is a conflict unless the manifest is the
   same (canonical JSON, signature included), which is an idempotent re-publish.

Only then are the Model/Release/Variant rows flushed, the staged files moved into the
content-addressed store, and the transaction committed. Any failure before that deletes the
staged files and rolls the session back. If the final commit itself fails (a concurrent publish
of the same version, a database error) the artifacts already moved stay in the store: they are
whole and checked, and a concurrent identical publish may reference them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeship.contract.errors import SigningError
from edgeship.contract.manifest import ManifestError, canonical_json, check_manifest
from edgeship.contract.signing import key_id, load_public_key, verify_manifest
from rollout_server.artifact_store import Staging, StoreError
from rollout_server.errors import ApiError, Conflict, NotFound
from rollout_server.models import Model, Release, Variant

MANIFEST_PART = "manifest"
MAX_MANIFEST_BYTES = 1024 * 1024
#: Column widths of models.py: longer values are refused as bad input, not left to the database.
LIMITS = {"model": 64, "version": 64, "id": 64, "format": 16, "precision": 32, "runtime": 32,
          "min_version": 64}


@dataclass(frozen=True)
class ExpectedFile:
    """A file the manifest lists: its name, digest and size (None when the manifest gives none)."""

    name: str
    sha256: str
    size: int | None


def trusted_keys(app: Any) -> dict[str, Any]:
    """``key_id -> public key`` from ``app.config["TRUSTED_KEYS"]``, loaded once per app.

    ``TRUSTED_KEYS`` is a list of PEM file paths (a string is split on ``os.pathsep`` or ``,``).

    Raises:
        ApiError: 500 ``server_misconfigured`` if a key file cannot be read.
    """
    cached = app.extensions.get("edgeship.trusted_keys")
    if cached is not None:
        return cached
    paths = app.config.get("TRUSTED_KEYS") or []
    if isinstance(paths, str | os.PathLike):
        paths = [p for p in str(paths).replace(",", os.pathsep).split(os.pathsep) if p.strip()]
    keys: dict[str, Any] = {}
    for path in paths:
        try:
            key = load_public_key(Path(str(path).strip()).read_bytes())
        except (OSError, SigningError) as err:
            app.logger.error("trusted key %s cannot be loaded: %s", path, err)
            raise ApiError(f"trusted publisher key {path} cannot be loaded", 500,
                           "server_misconfigured") from None
        keys[key_id(key)] = key
    app.extensions["edgeship.trusted_keys"] = keys
    return keys


def parse_manifest(raw: bytes) -> dict[str, Any]:
    """The manifest dict from uploaded bytes, checked against the schema and column limits.

    Raises:
        ApiError: 400 ``invalid_manifest`` naming the first bad field.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ApiError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes", 413, "invalid_manifest")
    try:
        data = json.loads(raw.decode("utf-8"))
        check_manifest(data)
        _check_limits(data)
        canonical_json(data)  # NaN / Infinity cannot be signed or stored
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ApiError(f"manifest is not valid JSON: {err}", 400, "invalid_manifest") from None
    except (ManifestError, ValueError) as err:
        raise ApiError(str(err), 400, "invalid_manifest") from None
    return data


def verify_signature(data: dict[str, Any], trusted: Mapping[str, Any]) -> str:
    """The trusted key id that signed the manifest.

    Raises:
        ApiError: 403 ``untrusted_key`` for a key the server does not trust, 400
            ``bad_signature`` for an unsigned manifest or a signature that does not verify.
    """
    signature = data.get("signature")
    fields = ("alg", "key_id", "value")
    if signature is not None and not all(isinstance(signature.get(k), str) for k in fields):
        raise ApiError("manifest signature: alg, key_id and value must be strings", 400, "bad_signature")
    kid = signature.get("key_id") if signature is not None else None
    if signature is not None and kid not in trusted:
        hint = "" if trusted else " (it trusts no publisher keys: set TRUSTED_KEYS)"
        raise ApiError(f"manifest is signed by key {kid!r}, which this server does not trust{hint}", 403,
                       "untrusted_key")
    try:
        return verify_manifest(data, dict(trusted))
    except SigningError as err:
        raise ApiError(str(err), 400, "bad_signature") from None


def expected_files(data: dict[str, Any]) -> dict[str, ExpectedFile]:
    """Every file the release needs (variants, golden set and the report's figures), by file name.

    Raises:
        ApiError: 400 ``invalid_manifest`` if one name is listed with two digests or sizes, or a
            file is named like the manifest part.
    """
    files: dict[str, ExpectedFile] = {}
    entries = [("golden", data["golden"]), *((f"variant {v['id']}", v) for v in data["variants"]),
               *((f"figure {f['file']}", f) for f in data.get("figures", []))]
    for where, entry in entries:
        size = entry.get("size_bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ApiError(f"manifest {where}: size_bytes must be a non-negative integer", 400,
                           "invalid_manifest")
        wanted = ExpectedFile(entry["file"], entry["sha256"], size)
        if wanted.name == MANIFEST_PART:
            raise ApiError(f"manifest {where}: file name {MANIFEST_PART!r} is reserved", 400,
                           "invalid_manifest")
        known = files.get(wanted.name)
        if known is not None:
            sizes_differ = None not in (known.size, wanted.size) and known.size != wanted.size
            if known.sha256 != wanted.sha256 or sizes_differ:
                raise ApiError(f"manifest {where}: file {wanted.name!r} is listed with two different "
                               "digests or sizes", 400, "invalid_manifest")
            wanted = wanted if known.size is None else known
        files[wanted.name] = wanted
    return files


def stage_files(staging: Staging, parts: Mapping[str, Sequence[BinaryIO]],
                expected: Mapping[str, ExpectedFile], max_bytes: int) -> None:
    """Check that exactly the listed files arrived, once each, and stage them with their checks.

    Raises:
        ApiError: 400 ``missing_file``, ``unexpected_file``, ``duplicate_file``,
            ``digest_mismatch`` or ``size_mismatch``; 413 ``too_large``.
    """
    unexpected = sorted(set(parts) - set(expected))
    if unexpected:
        shown = ", ".join(repr(n[:80]) for n in unexpected[:5])
        raise ApiError(f"upload has parts the manifest does not list: {shown}", 400, "unexpected_file")
    missing = sorted(set(expected) - set(parts))
    if missing:
        raise ApiError(f"file(s) listed in the manifest were not uploaded: {', '.join(missing)}", 400,
                       "missing_file")
    for name, wanted in expected.items():
        if len(parts[name]) != 1:
            raise ApiError(f"file {name!r} was uploaded {len(parts[name])} times", 400, "duplicate_file")
        try:
            staging.add(parts[name][0], wanted.sha256, wanted.size, max_bytes)
        except StoreError as err:
            status = 413 if err.reason == "too_large" else 400
            raise ApiError(f"file {name!r} {err.detail}", status, err.reason) from None


def find_release(session: Session, model: str, version: str) -> Release | None:
    """The release ``model``/``version``, or None."""
    return session.scalar(
        select(Release).join(Model, Release.model_id == Model.id)
        .where(Model.name == model, Release.version == version)
    )


def check_new_version(session: Session, data: dict[str, Any]) -> Release | None:
    """None if the version is new; the existing release if this is an identical re-publish.

    Raises:
        Conflict: the version exists with a different manifest.
    """
    existing = find_release(session, data["model"], data["version"])
    if existing is None:
        return None
    if canonical_json(existing.manifest) == canonical_json(data):
        return existing
    raise Conflict(f"{data['model']} version {data['version']} is already published with a different "
                   "manifest; publish a new version")


def add_release(session: Session, data: dict[str, Any], signed_by: str) -> Release:
    """Add (and flush) the Model if new, the Release and its Variant rows; not committed."""
    model = session.scalar(select(Model).where(Model.name == data["model"]))
    if model is None:
        model = Model(name=data["model"])
        session.add(model)
        session.flush()
    release = Release(model=model, version=data["version"], manifest=data, signed_by=signed_by)
    session.add(release)
    for entry in data["variants"]:
        release.variants.append(_variant_row(entry))
    session.flush()
    return release


def get_model(session: Session, name: str) -> Model:
    """The model called ``name``.

    Raises:
        NotFound: no such model.
    """
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise NotFound(f"no model {name!r}")
    return model


def get_release(session: Session, name: str, version: str) -> Release:
    """The release ``name``/``version``.

    Raises:
        NotFound: no such model or version.
    """
    release = find_release(session, name, version)
    if release is None:
        get_model(session, name)
        raise NotFound(f"model {name!r} has no version {version!r}")
    return release


def variant_json(variant: Variant) -> dict[str, Any]:
    """A Variant row as the API shows it (with its download path)."""
    return {
        "id": variant.variant_id,
        "format": variant.format,
        "precision": variant.precision,
        "runtime": {"name": variant.runtime, "min_version": variant.runtime_min_version},
        "validation": variant.validation,
        "sha256": variant.sha256,
        "size_bytes": variant.size_bytes,
        "peak_rss_bytes": variant.peak_rss_bytes,
        "url": artifact_url(variant.sha256),
    }


def release_json(release: Release, *, manifest: bool = False) -> dict[str, Any]:
    """A Release row as the API shows it; ``manifest`` adds the full signed manifest."""
    golden = release.manifest.get("golden", {})
    body: dict[str, Any] = {
        "model": release.model.name,
        "version": release.version,
        "signed_by": release.signed_by,
        "created_at": release.created_at.isoformat() if release.created_at else None,
        "stable": release.model.stable_release_id == release.id,
        "variants": [variant_json(v) for v in release.variants],
        "golden": {"file": golden.get("file"), "sha256": golden.get("sha256"),
                   "count": golden.get("count"), "url": artifact_url(golden.get("sha256", ""))},
    }
    if manifest:
        body["manifest"] = release.manifest
    return body


def artifact_url(sha256: str) -> str:
    """The path devices download an artifact from."""
    return f"/v1/artifacts/{sha256}"


def _variant_row(entry: dict[str, Any]) -> Variant:
    peak = entry["metrics"].get("peak_rss_bytes")
    return Variant(
        variant_id=entry["id"],
        format=entry["format"],
        precision=entry["precision"],
        runtime=entry["runtime"]["name"],
        runtime_min_version=entry["runtime"].get("min_version") or "",
        validation=entry["validation"],
        sha256=entry["sha256"],
        size_bytes=entry["size_bytes"],
        peak_rss_bytes=int(peak) if _is_byte_count(peak) else None,
    )


def _is_byte_count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 2**63


def _check_limits(data: dict[str, Any]) -> None:
    """Fields the database stores in fixed-width columns: strings of bounded length."""
    _short(data["model"], LIMITS["model"], "model")
    _short(data["version"], LIMITS["version"], "version")
    for i, entry in enumerate(data["variants"]):
        where = f"variants[{i}]"
        for key in ("id", "format", "precision"):
            _short(entry[key], LIMITS[key], f"{where}.{key}")
        _short(entry["runtime"].get("name"), LIMITS["runtime"], f"{where}.runtime.name")
        min_version = entry["runtime"].get("min_version")
        if min_version is not None:
            _short(min_version, LIMITS["min_version"], f"{where}.runtime.min_version", allow_empty=True)
        if isinstance(entry["size_bytes"], bool) or entry["size_bytes"] >= 2**63:
            raise ManifestError(f"manifest {where}.size_bytes: must be an integer below 2**63")


def _short(value: Any, limit: int, where: str, allow_empty: bool = False) -> None:
    if not isinstance(value, str) or (not value and not allow_empty) or len(value) > limit:
        raise ManifestError(f"manifest {where}: must be a string of 1 to {limit} characters")
