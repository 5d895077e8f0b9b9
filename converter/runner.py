"""Build, validate and gate one variant plan: the unit the pipeline, the tuner and the target
search share.

A plan is a variant request plus the compression steps before export. The runner applies the
steps (:class:`~converter.compress.chain.ModelChain`, cached per prefix), exports the
compressed model once per format (the format's preflight, cached per chain), builds the
variant, moves it into the release's staging directory, measures it on its real runtime and
applies the gates. Every outcome is a :class:`~converter.results.VariantResult`; nothing here
raises for a single variant's failure.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import shutil
import time
from pathlib import Path
from typing import Any

from converter.compress.chain import CompressedModel, ModelChain
from converter.compress.steps import Step
from converter.data import SampleSet
from converter.errors import (
    CompressionError,
    InputSpecError,
    UnsupportedModelError,
    VariantBuildError,
)
from converter.export.base import ExportContext, NotApplicable, VariantRequest
from converter.export.dispatch import build_variant
from converter.gates import gate_failures
from converter.golden import sha256_file
from converter.progress import Progress
from converter.recipe import Validation, VariantPlan
from converter.reference import Reference, compute_reference, fit_check
from converter.results import VariantResult
from converter.specs import TensorSpec
from converter.task_metrics import task_fidelity
from converter.validate import measure_on_runtime, rounded, variant_metrics, write_eval_inputs
from edgeship.contract.errors import first_line


class VariantRunner:
    """Turns variant plans into measured, gated results inside one release build.

    Args:
        chain: the source model and its compressed versions.
        inputs, outputs: the model's input specs and the source model's output specs.
        eval_set, calib_set: evaluation and calibration samples.
        task_kind: ``classification`` etc. (accuracy only for classification with labels).
        validation: the recipe's ``[validation]`` settings.
        stage: the release's staging directory (artifacts are moved there).
        scratch: a work directory inside ``stage`` (removed by the pipeline).
        progress: progress lines.

    ``reference`` (the source model's outputs) must be set before :meth:`run`; it is computed
    after the source model's preflight so that an unsupported op fails before any long step.
    """

    def __init__(
        self, *, chain: ModelChain, inputs: list[TensorSpec], outputs: list[TensorSpec],
        eval_set: SampleSet, calib_set: SampleSet, task_kind: str, validation: Validation,
        stage: Path, scratch: Path, progress: Progress,
    ) -> None:
        self.chain, self.inputs, self.outputs = chain, inputs, outputs
        self.eval_set, self.calib_set = eval_set, calib_set
        self.task_kind, self.validation = task_kind, validation
        self.stage, self.scratch, self.progress = stage, scratch, progress
        self.reference: Reference | None = None
        self._contexts: dict[tuple[Step, ...], ExportContext] = {}
        self._bases: dict[tuple[tuple[Step, ...], str], Any] = {}
        self._refused: dict[tuple[tuple[Step, ...], str], str] = {}
        self._references: dict[tuple[Step, ...], Reference] = {}
        self._eval_inputs: Path | None = None

    # ------------------------------------------------------------------ models and exports

    def context(self, steps: tuple[Step, ...]) -> ExportContext:
        """The export context of the model after ``steps``.

        Raises:
            CompressionError: a step failed, or the compressed model's outputs differ in
                shape from the source model's.
        """
        compressed = self.chain.apply(steps)
        if steps not in self._contexts:
            work = self.scratch / f"chain-{len(self._contexts)}"
            work.mkdir(parents=True, exist_ok=True)
            example = self.eval_set.sample(0)
            if steps:
                try:
                    shapes = [s.shape for s in fit_check(compressed.module, self.inputs, example)]
                except InputSpecError as err:
                    raise CompressionError(f"{' -> '.join(compressed.labels)}: the compressed model "
                                           f"does not run: {err}") from err
                if shapes != [s.shape for s in self.outputs]:
                    raise CompressionError(f"{' -> '.join(compressed.labels)}: outputs {shapes} differ "
                                           f"from the source model's {[s.shape for s in self.outputs]}")
            calib = self.calib_set
            self._contexts[steps] = ExportContext(
                model=compressed.module, inputs=self.inputs, outputs=self.outputs, example=example,
                calibration=lambda: iter(calib), calibration_count=len(calib), work_dir=work,
                progress=self.progress,
            )
        return self._contexts[steps]

    def preflight(self, steps: tuple[Step, ...], formats: list[str]) -> dict[str, str]:
        """Export the model after ``steps`` once per format; returns the refused formats."""
        refused = {}
        for fmt in formats:
            _, reason = self.base(steps, fmt)
            if reason:
                refused[fmt] = reason
        return refused

    def base(self, steps: tuple[Step, ...], fmt: str) -> tuple[Any, str | None]:
        """``(base export, None)`` or ``(None, why the format refused the model)``."""
        key = (steps, fmt)
        if key not in self._bases and key not in self._refused:
            ctx = self.context(steps)
            where = f" ({' -> '.join(s.label() for s in steps)})" if steps else ""
            self.progress.say(f"{fmt}: exporting the model{where} (preflight)")
            try:
                backend = importlib.import_module(f"converter.export.{fmt}")
                self._bases[key] = backend.export_base(ctx)
            except ImportError as err:
                self._refused[key] = f"{fmt} toolchain not installed: {err}"
            except UnsupportedModelError as err:
                self._refused[key] = str(err)
            except Exception as err:  # a toolchain crash refuses this format, not the conversion
                self._refused[key] = f"{fmt}: export failed: {type(err).__name__}: {first_line(err)}"
            if key in self._refused:
                self.progress.say(f"{fmt}: cannot take the model{where}: {self._refused[key]}")
        return self._bases.get(key), self._refused.get(key)

    def compressed_reference(self, steps: tuple[Step, ...]) -> Reference:
        """The compressed model's outputs on the eval set (what its export must reproduce)."""
        if not steps:
            assert self.reference is not None, "set runner.reference before running variants"
            return self.reference
        if steps not in self._references:
            module = self.chain.apply(steps).module
            label = " -> ".join(s.label() for s in steps)
            self._references[steps] = compute_reference(
                module, self.inputs, self.outputs, self.eval_set, Progress(quiet=True),
            )
            self.progress.say(f"compress: {label}: reference outputs computed")
        return self._references[steps]

    # ------------------------------------------------------------------ variants

    def run(self, plan: VariantPlan, variant_id: str | None = None,
            options: dict[str, Any] | None = None) -> VariantResult:
        """Build, measure and gate ``plan`` (with ``options`` overriding the recipe's).

        Args:
            variant_id: id (and file stem) of this build; the plan's id by default. Tuning
                attempts use ``<id>.t<n>`` and the chosen one is renamed with :meth:`adopt`.
        """
        request = plan.request
        if variant_id or options:
            request = VariantRequest(variant_id or request.id, request.kind,
                                     {**request.options, **(options or {})})
        kind = request.kind
        result = VariantResult(request.id, kind.kind, kind.format, kind.precision)
        try:
            compressed = self.chain.apply(plan.steps)
            ctx = self.context(plan.steps)
        except CompressionError as err:
            result.reason = str(err)
            return result
        result.steps = [r.to_dict() for r in compressed.records]
        base, refused = self.base(plan.steps, kind.format)
        if refused:
            result.reason = refused
            return result
        if not self._build(request, base, ctx, compressed, result):
            return result
        self._validate(plan, result, ctx)
        return result

    def _build(self, request: VariantRequest, base: Any, ctx: ExportContext,
               compressed: CompressedModel, result: VariantResult) -> bool:
        self.progress.say(f"{request.id}: building")
        started = time.monotonic()
        try:
            built = build_variant(request, base, ctx)
        except NotApplicable as err:
            result.status, result.reason = "skipped", str(err)
            return False
        except (VariantBuildError, UnsupportedModelError) as err:
            result.reason = str(err)
            return False
        except Exception as err:  # a toolchain bug in one variant must not sink the others
            result.reason = f"{type(err).__name__}: {first_line(err)}"
            return False
        result.build_seconds = round(time.monotonic() - started, 2)
        target = self.stage / built.path.name
        shutil.move(str(built.path), target)
        built.path = target
        result.built, result.precision = built, built.precision
        result.compression = [*compressed.labels, *built.compression]
        result.size_bytes, result.sha256 = target.stat().st_size, sha256_file(target)
        result.gzip_size_bytes = gzip_size(target)
        return True

    def _validate(self, plan: VariantPlan, result: VariantResult, ctx: ExportContext) -> None:
        """Measure on the real runtime and apply the gates; fills ``result`` in place."""
        built, reference = result.built, self.reference
        assert built is not None and reference is not None
        self.progress.say(f"{result.id}: validating on {plan.request.kind.runtime}")
        if self._eval_inputs is None:
            self._eval_inputs = write_eval_inputs(self.eval_set, self.scratch / "eval_inputs.npz")
        try:
            measurement = measure_on_runtime(
                built, result.format, self.eval_set, self._eval_inputs, self.validation.threads,
                self.validation.warmup, [s.name for s in reference.output_specs],
            )
        except Exception as err:
            result.status, result.reason = "failed", f"runtime: {err}"
            return
        if not measurement.available:
            self._inspect_only(plan, result, ctx, measurement.unavailable_reason)
            return
        result.runtime = {"name": measurement.runtime, "min_version": measurement.version}
        compressed_ref = self.compressed_reference(plan.steps)
        result.model = {"params": compressed_ref.params, "macs": compressed_ref.macs}
        try:
            result.metrics = variant_metrics(
                measurement, reference, self.eval_set.labels, self.task_kind,
                self.validation.agreement_cosine, self.validation.golden_count * self.eval_set.batch,
            )
            if plan.steps:
                export = task_fidelity(measurement.outputs, compressed_ref.outputs,
                                       [s.name for s in self.outputs], self.task_kind,
                                       self.validation.agreement_cosine)
                result.metrics["export"] = rounded(export)
        except ValueError as err:
            result.status, result.reason = "failed", f"outputs do not match the reference: {err}"
            return
        failures = gate_failures({**result.metrics, "size_bytes": result.size_bytes}, plan.gates,
                                 result.precision, compressed=bool(plan.steps))
        result.status = "failed" if failures else "passed"
        result.reason = "; ".join(failures) or None
        note = f" ({result.reason})" if result.reason else ""
        self.progress.say(f"{result.id}: {result.status}{note}")

    def _inspect_only(self, plan: VariantPlan, result: VariantResult, ctx: ExportContext, why: str) -> None:
        """No runtime on this host: check the artifact statically; never call it ``passed``."""
        backend = importlib.import_module(plan.request.kind.backend)
        inspect = getattr(backend, "inspect_artifact", None)
        problems = inspect(result.built, ctx) if inspect else []
        result.runtime = {"name": plan.request.kind.runtime, "min_version": ""}
        if plan.steps:
            ref = self.compressed_reference(plan.steps)
            result.model = {"params": ref.params, "macs": ref.macs}
        if problems:
            result.status, result.reason = "failed", "spec check: " + "; ".join(problems)
        else:
            result.status = "not_validated"
            result.reason = f"{why}; spec checked (inputs, outputs, weight precision)"

    # ------------------------------------------------------------------ artifacts

    def discard(self, result: VariantResult) -> None:
        """Delete the artifact of a result that will not ship."""
        if result.built is not None:
            result.built.path.unlink(missing_ok=True)

    def adopt(self, result: VariantResult, variant_id: str) -> VariantResult:
        """Rename an attempt's artifact and result to ``variant_id`` (``<id>.t3.onnx`` →
        ``<id>.onnx``)."""
        if result.id == variant_id:
            return result
        if result.built is not None:
            old = result.built.path
            new = old.with_name(variant_id + old.name[len(result.id):])
            old.rename(new)
            result.built = dataclasses.replace(result.built, path=new)
        result.id = variant_id
        return result


def gzip_size(path: Path) -> int:
    """Size of ``path`` gzip-compressed at the default level (streamed)."""
    counter = _Counter()
    with gzip.GzipFile(fileobj=counter, mode="wb", mtime=0) as compressor, Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            compressor.write(chunk)
    return counter.count


class _Counter:
    """A write-only file object that counts bytes."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        pass
