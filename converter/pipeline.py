"""The conversion pipeline: one PyTorch model in, a signed release of validated variants out.

Order of work: check the output, key, recipe, model and data (cheap; bad input fails here) →
export each format once (the format's preflight: an unsupported op fails that format fast,
the others go on) → reference run → build every variant (calibration) → validate each on its
real runtime → gates → golden set, manifest, signature, report → rename the staged directory
into place.
"""

from __future__ import annotations

import datetime as dt
import importlib
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converter import signing
from converter.data import SampleSet, load_samples
from converter.errors import ConverterError, UnsupportedModelError, VariantBuildError, first_line
from converter.export.base import ExportContext, NotApplicable
from converter.gates import gate_failures
from converter.golden import sha256_file, write_golden
from converter.loading import as_eval, load_model
from converter.manifest import MODEL_NAME_PATTERN, Manifest, VariantEntry
from converter.progress import Progress
from converter.recipe import Recipe, VariantPlan, load_recipe
from converter.reference import Reference, compute_reference, fit_check
from converter.report import write_report
from converter.results import VariantResult
from converter.specs import TensorSpec, parse_input_spec
from converter.staging import check_writable, staged_directory
from converter.validate import measure_on_runtime, variant_metrics, write_eval_inputs

if TYPE_CHECKING:
    import torch


class NoVariantPassed(ConverterError):
    """Every variant failed its export, runtime or gates; no release is written."""

    exit_code = 1

    def __init__(self, results: list[VariantResult]) -> None:
        self.results = results
        super().__init__("no variant passed its gates; nothing released")


@dataclass
class Conversion:
    """The outcome: the manifest written and one result per requested variant."""

    manifest: Manifest
    results: list[VariantResult]
    out: Path


def convert(*args: Any, **kwargs: Any) -> Manifest:
    """Convert a model into a signed release and return its manifest.

    Takes the arguments of :func:`run_conversion`.
    """
    return run_conversion(*args, **kwargs).manifest


def run_conversion(
    model: str | Path | torch.nn.Module,
    inputs: Sequence[str | TensorSpec],
    eval_data: str | Path,
    out: str | Path,
    *,
    calib_data: str | Path | None = None,
    recipe: Recipe | str | Path | None = None,
    model_name: str = "model",
    version: str = "1",
    signing_key: str | Path | None = None,
    task: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Conversion:
    """Convert ``model`` into the release directory ``out``.

    Args:
        model: a module, ``package.module:factory`` or a ``torch.save``/``torch.export`` file.
        inputs: input specs (``NAME:SHAPE:DTYPE`` strings or :class:`TensorSpec`) in the
            model's positional order.
        eval_data: ``.npz`` of evaluation samples keyed by input name (+ ``labels``).
        out: the release directory to create.
        calib_data: ``.npz`` of calibration samples; the eval set when left out.
        recipe: a :class:`Recipe`, a TOML path, or ``None`` for the default recipe.
        model_name, version: the registry name (``[a-z0-9-]+``) and release version.
        signing_key: Ed25519 private key path (else ``$EDGESHIP_SIGNING_KEY``).
        task: ``classification``, ``embedding``, ``regression`` or ``generic``; by default
            classification when the eval set has labels, else generic.
        force: replace an existing ``out`` (only once the new release is complete).
        progress: where progress lines go (default: stderr).

    Raises:
        ConverterError: bad input (model, specs, data, recipe, key, output) or no variant
            passed; nothing is written in that case.
    """
    progress = progress or Progress()
    out = Path(out)
    check_writable(out.resolve(), force)
    private_key = signing.load_private_key(signing.resolve_key_path(signing_key))
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    specs = [s if isinstance(s, TensorSpec) else parse_input_spec(s) for s in inputs]
    if not specs:
        raise ConverterError("at least one --input NAME:SHAPE:DTYPE is required")
    _check_manifest_names(model_name, version)

    progress.say(f"loading model {type(model).__name__ if hasattr(model, 'forward') else model}")
    module = as_eval(model) if hasattr(model, "forward") else load_model(str(model))
    eval_set = load_samples(eval_data, specs, "evaluation").head(recipe.validation.max_samples)
    calib_set = load_samples(calib_data, specs, "calibration") if calib_data else eval_set
    calib_set = calib_set.head(recipe.validation.calibration_samples)
    if not calib_data:
        progress.say("no --calib given: calibrating on the evaluation set")
    output_specs = fit_check(module, specs, eval_set.sample(0))
    task_kind = task or ("classification" if eval_set.labels is not None else "generic")

    with staged_directory(out, force) as stage:
        scratch = stage / ".build"
        scratch.mkdir()
        ctx = ExportContext(
            model=module, inputs=specs, outputs=output_specs, example=eval_set.sample(0),
            calibration=lambda: iter(calib_set), calibration_count=len(calib_set),
            work_dir=scratch, progress=progress,
        )
        bases, refused = _preflight(recipe.formats, ctx)
        reference = compute_reference(module, specs, output_specs, eval_set, progress)
        results = _build_variants(recipe, bases, refused, ctx, stage)
        eval_inputs = write_eval_inputs(eval_set, scratch / "eval_inputs.npz")
        for plan, result in zip(recipe.variants, results, strict=True):
            if result.built is not None:
                _validate(plan, result, ctx, eval_set, eval_inputs, reference, task_kind, recipe)
        shutil.rmtree(scratch)
        for result in results:
            if result.built is not None and not result.shipped:
                result.built.path.unlink(missing_ok=True)
        if not any(r.shipped for r in results):
            raise NoVariantPassed(results)
        golden = write_golden(stage, eval_set, reference, recipe.validation.golden_count)
        manifest = _manifest(model_name, version, task_kind, specs, reference, eval_set,
                             golden, results)
        signed = signing.sign_manifest(manifest.to_dict(), private_key)
        manifest = Manifest.from_dict(signed)
        manifest.write(stage)
        write_report(stage, manifest, results, reference_accuracy(reference, eval_set, task_kind))
    progress.say(f"release written to {out}")
    return Conversion(manifest, results, out)


def reference_accuracy(reference: Reference, samples: SampleSet, task_kind: str) -> float | None:
    from converter.metrics import accuracy

    if samples.labels is None or task_kind != "classification":
        return None
    return accuracy(reference.outputs[0], samples.labels)


def _preflight(formats: list[str], ctx: ExportContext) -> tuple[dict[str, Any], dict[str, str]]:
    """Export the model once per format before any long step.

    Returns:
        ``(bases, refused)``: each format's base export, and the reason for each format that
        cannot take the model (its variants fail with that reason; the others go on).

    Raises:
        UnsupportedModelError: no format can take the model.
    """
    progress = ctx.progress
    bases: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for fmt in formats:
        progress.say(f"{fmt}: exporting the model (preflight)")
        try:
            backend = importlib.import_module(f"converter.export.{fmt}")
            bases[fmt] = backend.export_base(ctx)
        except ImportError as err:
            refused[fmt] = f"{fmt} toolchain not installed: {err}"
        except UnsupportedModelError as err:
            refused[fmt] = str(err)
        except Exception as err:  # a toolchain crash refuses this format, not the conversion
            refused[fmt] = f"{fmt}: export failed: {type(err).__name__}: {first_line(err)}"
        if fmt in refused:
            progress.say(f"{fmt}: cannot take the model: {refused[fmt]}")
    if len(refused) == len(formats):
        raise UnsupportedModelError("all formats", "; ".join(refused.values()))
    return bases, refused


def _build_variants(
    recipe: Recipe, bases: dict[str, Any], refused: dict[str, str], ctx: ExportContext, stage: Path
) -> list[VariantResult]:
    """Build every variant of the formats that took the model, in recipe order."""
    progress = ctx.progress
    results = []
    for plan in recipe.variants:
        kind = plan.request.kind
        result = VariantResult(plan.request.id, kind.kind, kind.format, kind.precision)
        results.append(result)
        if kind.format in refused:
            result.reason = refused[kind.format]
            continue
        progress.say(f"{plan.request.id}: building")
        started = time.monotonic()
        try:
            backend = importlib.import_module(kind.backend)
            built = backend.build_variant(plan.request, bases[kind.format], ctx)
        except NotApplicable as err:
            result.status, result.reason = "skipped", str(err)
            continue
        except (VariantBuildError, UnsupportedModelError) as err:
            result.reason = str(err)
            continue
        except Exception as err:  # a toolchain bug in one variant must not sink the others
            result.reason = f"{type(err).__name__}: {first_line(err)}"
            continue
        result.build_seconds = round(time.monotonic() - started, 2)
        target = stage / built.path.name
        shutil.move(str(built.path), target)
        built.path = target
        result.built, result.precision, result.compression = built, built.precision, built.compression
        result.size_bytes, result.sha256 = target.stat().st_size, sha256_file(target)
    return results


def _validate(
    plan: VariantPlan,
    result: VariantResult,
    ctx: ExportContext,
    eval_set: SampleSet,
    eval_inputs: Path,
    reference: Reference,
    task_kind: str,
    recipe: Recipe,
) -> None:
    """Measure on the real runtime and apply the gates; fills ``result`` in place."""
    built, progress = result.built, ctx.progress
    if built is None:
        return
    progress.say(f"{result.id}: validating on {plan.request.kind.runtime}")
    try:
        measurement = measure_on_runtime(
            built, result.format, eval_set, eval_inputs,
            recipe.validation.threads, recipe.validation.warmup,
            [s.name for s in reference.output_specs],
        )
    except Exception as err:
        result.status, result.reason = "failed", f"runtime: {err}"
        return
    if not measurement.available:
        _inspect_only(plan, result, ctx, measurement.unavailable_reason)
        return
    result.runtime = {"name": measurement.runtime, "min_version": measurement.version}
    try:
        result.metrics = variant_metrics(
            measurement, reference,
            eval_set.labels if task_kind == "classification" else None,
            task_kind == "classification", recipe.validation.agreement_cosine,
            recipe.validation.golden_count * eval_set.batch,
        )
    except ValueError as err:
        result.status, result.reason = "failed", f"outputs do not match the reference: {err}"
        return
    failures = gate_failures({**result.metrics, "size_bytes": result.size_bytes}, plan.gates,
                             result.precision)
    result.status = "failed" if failures else "passed"
    result.reason = "; ".join(failures) or None
    progress.say(f"{result.id}: {result.status}{' (' + result.reason + ')' if result.reason else ''}")


def _inspect_only(plan: VariantPlan, result: VariantResult, ctx: ExportContext, why: str) -> None:
    """No runtime on this host: check the artifact statically; never call it ``passed``."""
    backend = importlib.import_module(plan.request.kind.backend)
    inspect = getattr(backend, "inspect_artifact", None)
    problems = inspect(result.built, ctx) if inspect else []
    result.runtime = {"name": plan.request.kind.runtime, "min_version": ""}
    if problems:
        result.status, result.reason = "failed", "spec check: " + "; ".join(problems)
    else:
        result.status = "not_validated"
        result.reason = f"{why}; spec checked (inputs, outputs, weight precision)"


def _manifest(
    model_name: str, version: str, task_kind: str, specs: list[TensorSpec],
    reference: Reference, eval_set: SampleSet, golden: dict, results: list[VariantResult],
) -> Manifest:
    ref_acc = reference_accuracy(reference, eval_set, task_kind)
    entries = [
        VariantEntry(
            id=r.id, format=r.format, precision=r.precision, compression=r.compression,
            file=r.built.path.name, sha256=r.sha256, size_bytes=r.size_bytes,
            runtime=r.runtime, metrics=r.metrics, validation=r.status, reason=r.reason,
            io=r.built.io,
        )
        for r in results
        if r.shipped and r.built is not None
    ]
    reference_entry: dict[str, Any] = {
        "format": "torch", "sha256": reference.sha256,
        "params": reference.params, "macs": reference.macs,
    }
    if ref_acc is not None:
        reference_entry["accuracy"] = round(ref_acc, 6)
    return Manifest(
        model=model_name, version=version,
        task={
            "kind": task_kind,
            "inputs": [s.to_dict() for s in specs],
            "outputs": [s.to_dict() for s in reference.output_specs],
        },
        reference=reference_entry, golden=golden, variants=entries,
        created_at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    )


def _check_manifest_names(model_name: str, version: str) -> None:
    if not MODEL_NAME_PATTERN.match(model_name):
        raise ConverterError(f"--model-name {model_name!r} must match [a-z0-9-]+ (e.g. digits-cnn)")
    if not version or "/" in version or version.strip() != version:
        raise ConverterError(f"--version {version!r} must be non-empty without '/' or spaces")
