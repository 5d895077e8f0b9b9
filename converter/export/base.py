"""What the pipeline hands an export backend and a variant builder, and what they hand back.

A format's backend module (``converter/export/<format>.py``) provides:

``export_base(ctx: ExportContext) -> Any``
    Export the model once at full precision. It doubles as the format's preflight: it runs
    before any long step and raises :class:`converter.errors.UnsupportedModelError` naming the
    operator the toolchain refused. The return value is opaque to the pipeline (a path, an
    in-memory model) and is passed back to the format's builders.

``inspect_artifact(built: BuiltVariant, ctx) -> list[str]`` (optional)
    A static check of the artifact (inputs, outputs, weight precision) that returns problems
    found, used where no runtime on this host can execute the format (CoreML off macOS).

Each variant kind names its :class:`Builder` in the catalogue
(:attr:`converter.catalogue.VariantKind.builder`) and :mod:`converter.export.dispatch` calls
it: one signature for every format, so the dispatcher is a table lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from converter.catalogue import VariantKind
from converter.progress import Progress
from converter.specs import TensorSpec

if TYPE_CHECKING:
    import torch

Sample = dict[str, np.ndarray]


@dataclass
class ExportContext:
    """Everything a backend needs to export and quantize one model.

    Attributes:
        model: the PyTorch module in eval mode.
        inputs: input specs in the model's positional order (shapes include the batch dim).
        outputs: output specs in the model's output order, measured on the reference run.
        example: one sample per input, shaped and typed as its spec.
        calibration: returns a fresh iterator over calibration samples (dicts keyed by input
            name, each array shaped as its spec); ``calibration_count`` samples in all.
        work_dir: where artifacts are written (inside the release's temporary directory).
        progress: prints progress of long steps.
        cache: backends keep results here that later builds on the same model reuse
            (calibration ranges), keyed by the backend.
    """

    model: torch.nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    example: Sample
    calibration: Callable[[], Iterator[Sample]]
    calibration_count: int
    work_dir: Path
    progress: Progress = field(default_factory=lambda: Progress(quiet=True))
    cache: dict[Any, Any] = field(default_factory=dict)

    def example_tensors(self) -> tuple[torch.Tensor, ...]:
        """The example sample as torch tensors in positional order."""
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(self.example[s.name])) for s in self.inputs)


@dataclass(frozen=True)
class VariantRequest:
    """One variant the recipe asks for: its id, kind and options (defaults filled in)."""

    id: str
    kind: VariantKind
    options: dict[str, Any]


@dataclass
class BuiltVariant:
    """A variant artifact on disk, before validation.

    Attributes:
        path: the single file that ships (a CoreML ``.mlpackage`` is zipped into one file).
        precision: manifest precision, normally the kind's.
        compression: ordered steps applied, e.g. ``["quant:static:minmax:per-channel"]``.
        io: quantization of inputs/outputs for full-integer models, per tensor:
            ``{"inputs": [{"name", "dtype", "scale", "zero_point"}], "outputs": [...]}``;
            ``None`` when the model takes and returns floats.
        details: facts for the report (quantized node counts, weight precision, ...).
    """

    path: Path
    precision: str
    compression: list[str] = field(default_factory=list)
    io: dict[str, list[dict[str, Any]]] | None = None
    details: dict[str, Any] = field(default_factory=dict)


class NotApplicable(Exception):
    """The kind has nothing to do on this model (e.g. weight-only MatMul int8 on a CNN)."""


class Builder(Protocol):
    """Builds one variant kind; every kind's builder has this signature.

    Args:
        request: the variant to build (its id, kind and options).
        base: what the format's ``export_base`` returned.
        ctx: the export context.
        out: the file to write (``<request.id><format suffix>`` under ``ctx.work_dir``).

    Raises:
        VariantBuildError: the toolchain failed on this variant (the other variants go on).
        NotApplicable: the kind has nothing to do on this model.
    """

    def __call__(
        self, request: VariantRequest, base: Any, ctx: ExportContext, out: Path
    ) -> BuiltVariant: ...
