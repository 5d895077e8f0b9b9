"""The conversion pipeline: one PyTorch model in, a signed release of validated variants out.

Order of work: check the output, key, recipe, model and data (cheap; bad input fails here) →
export the source model once per format (the format's preflight: an unsupported op fails that
format fast, the others go on) → reference run → for each variant: compression steps (cached
per chain), build, validate on its real runtime, gates, and accuracy-aware tuning when a
static int8 variant misses them → the ``[targets]`` search, if any → golden set, manifest,
signature, report → rename the staged directory into place.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converter.compress.steps import DistillStep, needs_training_data
from converter.data import SampleSet, load_samples
from converter.errors import ConverterError, DataError, UnsupportedModelError
from converter.golden import write_golden
from converter.loading import as_eval, load_model
from converter.progress import Progress
from converter.recipe import Recipe, load_recipe
from converter.reference import Reference, compute_reference, fit_check
from converter.report import write_report
from converter.results import VariantResult
from converter.specs import TensorSpec, parse_input_spec
from converter.staging import check_writable, staged_directory
from edgeship.contract import signing
from edgeship.contract.manifest import MODEL_NAME_PATTERN, Manifest, VariantEntry

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
    """The outcome: the manifest written, one result per requested variant, and the log of the
    ``[targets]`` search (one entry per searched format) when the recipe has targets."""

    manifest: Manifest
    results: list[VariantResult]
    out: Path
    search: list[dict[str, Any]] = field(default_factory=list)


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
    train_data: str | Path | None = None,
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
        train_data: ``.npz`` of training samples (same layout, labels for cross-entropy):
            needed by ``distill`` steps, and fine-tunes pruned models when given.
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
    train_set = load_samples(train_data, specs, "training") if train_data else None
    _check_compression_inputs(recipe, train_set)
    if not calib_data:
        progress.say("no --calib given: calibrating on the evaluation set")
    output_specs = fit_check(module, specs, eval_set.sample(0))
    task_kind = task or ("classification" if eval_set.labels is not None else "generic")

    with staged_directory(out, force) as stage:
        scratch = stage / ".build"
        scratch.mkdir()
        runner = _runner(module, specs, output_specs, eval_set, calib_set, train_set, task_kind,
                         recipe, stage, scratch, progress)
        source_formats = _formats(recipe, source_only=True)
        if source_formats:
            refused = runner.preflight((), source_formats)
            if len(refused) == len(source_formats):
                raise UnsupportedModelError("all formats", "; ".join(refused.values()))
        reference = compute_reference(module, specs, output_specs, eval_set, progress)
        runner.reference = reference
        results = _run_variants(runner, recipe)
        search_log: list[dict[str, Any]] = []
        if recipe.targets is not None:
            from converter.search import search_targets

            found, search_log = search_targets(runner, recipe)
            results += found
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
        write_report(stage, manifest, results, reference_accuracy(reference, eval_set, task_kind),
                     search_log)
    progress.say(f"release written to {out}")
    return Conversion(manifest, results, out, search_log)


def _runner(module: Any, specs: list[TensorSpec], output_specs: list[TensorSpec], eval_set: SampleSet,
            calib_set: SampleSet, train_set: SampleSet | None, task_kind: str, recipe: Recipe,
            stage: Path, scratch: Path, progress: Progress) -> Any:
    from converter.compress.chain import ModelChain
    from converter.compress.env import StepEnv
    from converter.compress.training import TrainingSet
    from converter.runner import VariantRunner

    env = StepEnv(specs, eval_set.sample(0),
                  TrainingSet.from_samples(train_set) if train_set is not None else None,
                  eval_set, recipe.compression.training, progress)
    return VariantRunner(
        chain=ModelChain(module, env), inputs=specs, outputs=output_specs, eval_set=eval_set,
        calib_set=calib_set, task_kind=task_kind, validation=recipe.validation, stage=stage,
        scratch=scratch, progress=progress,
    )


def _run_variants(runner: Any, recipe: Recipe) -> list[VariantResult]:
    """Every recipe variant, in order; static int8 variants that miss their gates are tuned."""
    from converter.tuning import needs_tuning, tune_variant

    results = []
    for plan in recipe.variants:
        result = runner.run(plan)
        if needs_tuning(plan, result):
            result = tune_variant(runner, plan, result)
        results.append(result)
    return results


def _formats(recipe: Recipe, source_only: bool = False) -> list[str]:
    """Formats the recipe exports the source model in (variants without steps, targets)."""
    seen = [p.request.kind.format for p in recipe.variants if not (source_only and p.steps)]
    if recipe.targets is not None:
        seen += list(recipe.targets.formats)
    return list(dict.fromkeys(seen))


def _check_compression_inputs(recipe: Recipe, train_set: SampleSet | None) -> None:
    """Fail before any long step: distillation without ``--train``, or a student that does not
    load.

    Raises:
        DataError: a ``distill`` step and no training data.
        ModelLoadError: a student factory cannot be imported or fails.
    """
    students = {s.student for p in recipe.variants for s in p.steps if isinstance(s, DistillStep)}
    if train_set is None and any(needs_training_data(p.steps) for p in recipe.variants):
        raise DataError("the recipe distills a student, which needs training data: pass "
                        "--train FILE.npz (arrays keyed by input name, labels under 'labels')")
    for student in sorted(students):
        load_model(student)


def reference_accuracy(reference: Reference, samples: SampleSet, task_kind: str) -> float | None:
    from edgeship.contract.fidelity import accuracy

    if samples.labels is None or task_kind != "classification":
        return None
    return accuracy(reference.outputs[0], samples.labels)


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
