"""The release manifest (``manifest.json``): the contract between converter, server and agent.

Torch-free: the rollout server and the edge agent import this module to read and check
manifests. The signed bytes are :func:`canonical_json` of the manifest without its
``signature`` field (sorted keys, no spaces, UTF-8).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "edgeship.manifest/v1"
MANIFEST_FILE = "manifest.json"
VALIDATION_STATES = ("passed", "failed", "not_validated")
TASK_KINDS = ("classification", "embedding", "regression", "generic")
MODEL_NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: the most report figures a manifest may list
MAX_FIGURES = 16


class ManifestError(ValueError):
    """A manifest that does not follow ``edgeship.manifest/v1``; the message names the field."""


@dataclass
class VariantEntry:
    """One shippable variant of the release (docs/protocol.md §4.1, ``variants``)."""

    id: str
    format: str
    precision: str
    compression: list[str]
    file: str
    sha256: str
    size_bytes: int
    runtime: dict[str, str]
    metrics: dict[str, Any]
    validation: str
    reason: str | None = None
    io: dict[str, list[dict[str, Any]]] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None}


@dataclass
class Manifest:
    """A release: the model, its reference, golden probe set and variants."""

    model: str
    version: str
    task: dict[str, Any]
    reference: dict[str, Any]
    golden: dict[str, Any]
    variants: list[VariantEntry]
    signature: dict[str, str] | None = None
    created_at: str | None = None
    #: the conversion report's figures (PNG): ``{"file", "sha256", "size_bytes", "title"}`` each,
    #: signed with the rest so the console shows what the converter drew; devices never fetch them
    figures: list[dict[str, Any]] = field(default_factory=list)
    schema: str = field(default=SCHEMA)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": self.schema,
            "model": self.model,
            "version": self.version,
            "task": self.task,
            "reference": self.reference,
            "golden": self.golden,
            "variants": [v.to_dict() for v in self.variants],
        }
        if self.created_at:
            data["created_at"] = self.created_at
        if self.figures:
            data["figures"] = self.figures
        if self.signature:
            data["signature"] = self.signature
        return data

    def signed_bytes(self) -> bytes:
        """The bytes a signature covers: canonical JSON without ``signature``."""
        return canonical_json(unsigned(self.to_dict()))

    def variant(self, variant_id: str) -> VariantEntry:
        for v in self.variants:
            if v.id == variant_id:
                return v
        raise KeyError(variant_id)

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and check a manifest dict.

        Raises:
            ManifestError: a required field is missing or has the wrong type or value.
        """
        check_manifest(data)
        variants = [
            VariantEntry(**{k: v for k, v in entry.items() if k in VariantEntry.__dataclass_fields__})
            for entry in data["variants"]
        ]
        return cls(
            model=data["model"],
            version=data["version"],
            task=data["task"],
            reference=data["reference"],
            golden=data["golden"],
            variants=variants,
            signature=data.get("signature"),
            created_at=data.get("created_at"),
            figures=list(data.get("figures") or []),
        )

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = Path(directory) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ManifestError(f"{path}: cannot read manifest: {err}") from None
        return cls.from_dict(data)


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: the same dict gives the same bytes."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def unsigned(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "signature"}


def check_manifest(data: Any) -> None:
    """Raise :class:`ManifestError` naming the first field that breaks the schema."""
    _require(isinstance(data, dict), "manifest", "must be a JSON object")
    _require(data.get("schema") == SCHEMA, "schema", f"must be {SCHEMA!r}")
    _field(data, "model", str)
    _require(bool(MODEL_NAME_PATTERN.match(data["model"])), "model", "must match [a-z0-9-]+")
    _field(data, "version", str)
    _require(bool(data["version"]) and "/" not in data["version"], "version", "must be non-empty, no '/'")
    task = _field(data, "task", dict)
    _require(task.get("kind") in TASK_KINDS, "task.kind", f"must be one of {TASK_KINDS}")
    for key in ("inputs", "outputs"):
        specs = task.get(key)
        _require(isinstance(specs, list) and bool(specs), f"task.{key}", "must be a non-empty list")
        for i, spec in enumerate(specs):
            _require(
                isinstance(spec, dict) and {"name", "shape", "dtype"} <= set(spec),
                f"task.{key}[{i}]",
                "needs name, shape and dtype",
            )
    _field(data, "reference", dict)
    golden = _field(data, "golden", dict)
    _check_file_ref(golden, "golden")
    variants = _field(data, "variants", list)
    _require(bool(variants), "variants", "must list at least one variant")
    seen: set[str] = set()
    for i, entry in enumerate(variants):
        where = f"variants[{i}]"
        _require(isinstance(entry, dict), where, "must be an object")
        for key, kind in (("id", str), ("format", str), ("precision", str), ("compression", list),
                          ("runtime", dict), ("metrics", dict), ("validation", str)):
            _require(isinstance(entry.get(key), kind), f"{where}.{key}", f"must be {kind.__name__}")
        _require(entry["id"] not in seen, f"{where}.id", f"repeats {entry['id']!r}")
        seen.add(entry["id"])
        _check_file_ref(entry, where)
        _require(entry["validation"] in VALIDATION_STATES, f"{where}.validation",
                 f"must be one of {VALIDATION_STATES}")
        _require(isinstance(entry.get("size_bytes"), int) and entry["size_bytes"] >= 0,
                 f"{where}.size_bytes", "must be a non-negative integer")
    figures = data.get("figures", [])
    _require(isinstance(figures, list) and len(figures) <= MAX_FIGURES, "figures",
             f"must be a list of at most {MAX_FIGURES}")
    for i, entry in enumerate(figures):
        where = f"figures[{i}]"
        _require(isinstance(entry, dict), where, "must be an object")
        _check_file_ref(entry, where)
        _require(entry["file"].endswith(".png"), f"{where}.file", "must name a .png file")
        _require(isinstance(entry.get("size_bytes"), int) and entry["size_bytes"] >= 0,
                 f"{where}.size_bytes", "must be a non-negative integer")
        _require(isinstance(entry.get("title"), str) and len(entry["title"]) <= 200, f"{where}.title",
                 "must be a string of at most 200 characters")
    signature = data.get("signature")
    if signature is not None:
        _require(isinstance(signature, dict) and {"alg", "key_id", "value"} <= set(signature),
                 "signature", "needs alg, key_id and value")


def is_safe_file_name(name: Any) -> bool:
    """A plain file name inside the release directory: no path parts, no traversal."""
    return (
        isinstance(name, str)
        and bool(name)
        and name not in {".", ".."}
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
    )


def _check_file_ref(entry: dict[str, Any], where: str) -> None:
    _require(is_safe_file_name(entry.get("file")), f"{where}.file", "must be a plain file name")
    sha = entry.get("sha256")
    _require(isinstance(sha, str) and bool(_SHA256.match(sha)), f"{where}.sha256",
             "must be 64 lowercase hex digits")


def _field(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    _require(isinstance(value, kind), key, f"must be {kind.__name__}")
    return value


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ManifestError(f"manifest {where}: {message}")
