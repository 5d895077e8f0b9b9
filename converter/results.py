"""One row per variant the recipe asked for, whatever became of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from converter.export.base import BuiltVariant

#: Outcomes: shipped (``passed``, ``not_validated``) or left out (``failed``, ``skipped``).
SHIPPED = ("passed", "not_validated")


@dataclass
class VariantResult:
    """What became of one requested variant.

    Attributes:
        status: ``passed`` / ``not_validated`` (in the release), ``failed`` (export, runtime
            or gate), ``skipped`` (the kind does not apply to this model).
        reason: why it failed, was skipped or could not be validated.
        compression: the manifest's ordered steps: model steps, then the export's.
        steps: what each model step did (per-layer sparsity, MACs before/after, training
            history), shared by the variants built from the same chain.
        model: parameters and MACs of the model that was exported.
        gzip_size_bytes: the artifact gzip-compressed (what pruned zeros save in transit).
        tuning: the accuracy-aware tuning record (attempts, sensitivity, outcome), if any.
        seconds: wall time spent on this variant (build, validation, tuning).
    """

    id: str
    kind: str
    format: str
    precision: str
    status: str = "failed"
    reason: str | None = None
    built: BuiltVariant | None = None
    compression: list[str] = field(default_factory=list)
    size_bytes: int | None = None
    sha256: str | None = None
    runtime: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    build_seconds: float | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    gzip_size_bytes: int | None = None
    tuning: dict[str, Any] | None = None
    seconds: float | None = None

    @property
    def shipped(self) -> bool:
        return self.status in SHIPPED

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "format": self.format,
            "precision": self.precision, "status": self.status, "reason": self.reason,
            "compression": self.compression, "size_bytes": self.size_bytes,
            "sha256": self.sha256, "runtime": self.runtime, "metrics": self.metrics,
            "build_seconds": self.build_seconds,
            "details": self.built.details if self.built else {},
            "steps": self.steps, "model": self.model, "gzip_size_bytes": self.gzip_size_bytes,
            "tuning": self.tuning, "seconds": self.seconds,
        }
