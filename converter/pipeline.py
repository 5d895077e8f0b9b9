"""The conversion pipeline: one PyTorch model in, a signed release of validated variants out.

Order of work: check the output, key, recipe, model and data (cheap; bad input fails here) →
export the source model once per format (the format's preflight: an unsupported op fails that
format fast, the others go on) → reference run → for each variant: skipped unbuilt when the
exported graph predicts it is not worth building (static int8 on a transformer), else
compression steps (cached per chain), build, validate on its real runtime, gates, and
accuracy-aware tuning when an int8 variant misses them → the ``[targets]`` search, if any →
golden set, manifest, signature, report → rename the staged directory into place.
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
from converter.golden import sha256_file, write_golden
from converter.loading import as_eval, load_model
from converter.progress import Progress, VariantClock
from converter.recipe import Recipe, VariantPlan, load_recipe
from converter.reference import Reference, compute_reference, fit_check
from converter.report import write_figures, write_report
from converter.results import VariantResult
from converter.specs import TensorSpec, parse_input_spec
from converter.staging import check_writable, staged_directory
from converter.task import infer_task_kind, recipe_for_task
from converter.torch_threads import TRIAL_SAMPLES, fastest_threads
from edgeship.contract import signing
from edgeship.contract.manifest import MODEL_NAME_PATTERN, TASK_KINDS, Manifest, VariantEntry

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
            inferred from the labels and outputs (:func:`converter.task.infer_task_kind`).
            The task decides which metrics are measured and gated.
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
    if task is not None and task not in TASK_KINDS:
        raise ConverterError(f"task {task!r} is not one of {', '.join(TASK_KINDS)}")

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
    task_kind, why = (task, "as given") if task else infer_task_kind(output_specs, eval_set.labels)
    progress.say(f"task: {task_kind} ({why}; --task overrides)")
    recipe = recipe_for_task(recipe, task_kind)

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
        with fastest_threads(module, specs, list(eval_set.head(TRIAL_SAMPLES + 1))):
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
        accuracy = reference_accuracy(reference, eval_set, task_kind)
        figures = write_figures(stage, results, accuracy, search_log)
        manifest = _manifest(model_name, version, task_kind, specs, reference, eval_set,
                             golden, results)
        manifest.figures = [{"file": name, "sha256": sha256_file(stage / name),
                             "size_bytes": (stage / name).stat().st_size, "title": title}
                            for name, title in figures.items()]
        signed = signing.sign_manifest(manifest.to_dict(), private_key)
        manifest = Manifest.from_dict(signed)
        manifest.write(stage)
        write_report(stage, manifest, results, search_log)
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
    """Every recipe variant, in order: skipped unbuilt when predicted not worth building on
    this graph, tuned when an int8 variant misses its gates."""
    from converter.tuning import needs_tuning, tune_variant

    clock = VariantClock(runner.progress, len(recipe.variants))
    results: list[VariantResult] = []
    for plan in recipe.variants:
        clock.start(plan.request.id)
        skip = _predicted_skip(runner, plan, list(zip(recipe.variants, results, strict=False)))
        if skip is not None:
            kind = plan.request.kind
            result = VariantResult(plan.request.id, kind.kind, kind.format, kind.precision,
                                   status="skipped", reason=skip)
        else:
            result = runner.run(plan)
            if needs_tuning(plan, result):
                result = tune_variant(runner, plan, result)
            if result.status == "passed" and not result.reason:
                result.reason = _weight_only_note(plan, list(zip(recipe.variants, results, strict=False)))
        result.seconds = round(clock.finish(result.status), 2)
        results.append(result)
    return results


def _predicted_skip(runner: Any, plan: VariantPlan,
                    done: list[tuple[VariantPlan, VariantResult]]) -> str | None:
    """Why :mod:`converter.tuning.feasibility` skips ``plan`` (given the variants ``done``), or
    ``None``."""
    from converter.tuning.feasibility import (
        REPLACED_WHEN_PASSED,
        STATIC_KINDS,
        profile_of,
        static_int8_verdict,
        weight_only_verdict,
    )

    kind = plan.request.kind
    if not plan.tuning.skip_predicted:
        return None
    if kind.kind in REPLACED_WHEN_PASSED:
        passed = {p.request.kind.kind: r for p, r in done
                  if p.steps == plan.steps and r.status == "passed"}
        fp32 = passed.get(f"{kind.format}-fp32")
        return weight_only_verdict(kind.kind, {k: (r.id, _p50_ratio(r, fp32)) for k, r in passed.items()})
    if kind.kind not in STATIC_KINDS:
        return None
    base, refused = runner.base(plan.steps, kind.format)
    if refused:
        return None  # runner.run reports the refusal
    profile = profile_of(kind.format, base)
    return static_int8_verdict(profile) if profile is not None else None


def _weight_only_note(plan: VariantPlan, done: list[tuple[VariantPlan, VariantResult]]) -> str | None:
    from converter.tuning.feasibility import weight_only_note

    outcomes = {p.request.kind.kind: r.status for p, r in done if p.steps == plan.steps}
    return weight_only_note(plan.request.kind.kind, outcomes)


def _p50_ratio(result: VariantResult, fp32: VariantResult | None) -> float | None:
    p50 = (result.metrics.get("latency_ms") or {}).get("p50")
    base = (fp32.metrics.get("latency_ms") or {}).get("p50") if fp32 else None
    return p50 / base if p50 and base else None


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
        raise DataError("the recipe distills a student or searches an architecture, which needs "
                        "training data: pass "
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
