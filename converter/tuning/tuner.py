"""The tuning loop: build and validate candidates until one passes or the budget runs out.

Every attempt is a full build and validation on the real runtime (the same
:meth:`~converter.runner.VariantRunner.run` as any variant), so what passes here passes on
the device's code path. Attempts are built as ``<id>.t<n>``; the kept one is renamed to the
variant's id and the others are deleted. The variant's result carries the tuning record:
every attempt with its settings, metrics and why it was rejected, the sensitivity table, and
the outcome. Never an empty result: when nothing passes, the closest attempt is kept (failed)
and its reason names the layers that hurt most.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.gates import gate_failures, gate_shortfall
from converter.recipe import VariantPlan
from converter.results import VariantResult
from converter.tuning.dynamic import DYNAMIC_KINDS, dynamic_sensitivity_for
from converter.tuning.plan import (
    ACCURACY_CONTROL_KINDS,
    TUNABLE,
    Candidate,
    accuracy_control_candidate,
    calibration_candidates,
    float_layer_candidates,
    requested,
)

if TYPE_CHECKING:
    from converter.runner import VariantRunner

#: sensitivity rows named in the reason of a variant that stays failed.
HURTING_LAYERS_NAMED = 3
#: an attempt's metrics kept in the record (those its task measured).
_ATTEMPT_METRICS = ("accuracy", "accuracy_drop", "agreement", "cosine", "rel_err", "max_abs_err")


def needs_tuning(plan: VariantPlan, result: VariantResult) -> bool:
    """A tunable static int8 variant that was built and measured but missed a gate."""
    return (plan.tuning.enabled and plan.request.kind.kind in TUNABLE and result.status == "failed"
            and result.built is not None and bool(result.metrics))


class _Budget:
    def __init__(self, trials: int, seconds: float) -> None:
        self.trials_left, self.started = trials, time.monotonic()
        self.deadline = self.started + seconds

    def take(self) -> bool:
        if self.trials_left <= 0 or time.monotonic() >= self.deadline:
            return False
        self.trials_left -= 1
        return True

    @property
    def spent_seconds(self) -> float:
        return round(time.monotonic() - self.started, 1)


def tune_variant(runner: VariantRunner, plan: VariantPlan, first: VariantResult) -> VariantResult:
    """Tune ``plan`` after its first build ``first`` missed the gates; see the module docstring.

    Returns:
        The kept result (passed, or the closest failed one), with ``tuning`` filled in.
    """
    kind, variant_id = plan.request.kind.kind, plan.request.id
    budget = _Budget(int(plan.tuning.max_trials), float(plan.tuning.max_seconds))
    progress = runner.progress
    progress.say(f"{variant_id}: missed its gates ({first.reason}); tuning: up to "
                 f"{plan.tuning.max_trials} attempts, {plan.tuning.max_seconds:.0f} s")
    start = requested(kind, plan.request.options)
    attempts: list[tuple[Candidate, VariantResult, str]] = [(start, first, "as requested")]
    sensitivity: list[dict[str, Any]] = []

    def key(item: tuple[Candidate, VariantResult, str]) -> tuple[float, int, int]:
        candidate, result, _ = item
        return (_shortfall(plan, result), len(candidate.float_layers), result.size_bytes or 1 << 62)

    def attempt(candidate: Candidate, change: str, extra: dict[str, Any] | None = None) -> bool:
        options = {**candidate.options(), **(extra or {})}
        result = runner.run(plan, f"{variant_id}.t{len(attempts)}", options)
        attempts.append((candidate, result, change))
        return result.status in ("passed", "not_validated")

    passed = False
    for candidate in calibration_candidates(kind, start):
        if not budget.take():
            break
        if attempt(candidate, f"calibration {candidate.describe()}"):
            passed = True
            break
    if not passed and kind in ACCURACY_CONTROL_KINDS and budget.take():
        from converter.tuning.openvino_accuracy import accuracy_control_options

        extra, change = accuracy_control_options(runner, plan)
        passed = attempt(accuracy_control_candidate(min(attempts, key=key)[0]), change, extra)
    elif not passed and budget.trials_left > 0 and time.monotonic() < budget.deadline:
        best = min(attempts, key=key)[0]
        sensitivity, first_count = _sensitivity(runner, plan, best, budget.deadline, start)
        ranked = [row["layer"] for row in sensitivity]
        shown = {row["layer"]: _display_name(row) for row in sensitivity}
        before = len(best.float_layers)
        for candidate in float_layer_candidates(best, ranked, int(plan.tuning.max_float_layers),
                                                first_count):
            if not budget.take():
                break
            added = ", ".join(shown[name] for name in candidate.float_layers[before:])
            before = len(candidate.float_layers)
            if attempt(candidate, f"+ float {added}"):
                passed = True
                break
    kept = attempts[-1] if passed else min(attempts, key=key)
    for item in attempts:
        if item is not kept:
            runner.discard(item[1])
    result = runner.adopt(kept[1], variant_id)
    result.tuning = _record(plan, attempts, kept, sensitivity, passed, budget)
    if not passed:
        hurting = ", ".join(_layer_label(row) for row in sensitivity[:HURTING_LAYERS_NAMED])
        result.reason = (f"{result.reason}; tuning tried {len(attempts)} settings in "
                         f"{budget.spent_seconds:.0f} s, none passed; kept the closest "
                         f"({kept[0].describe()})"
                         + (f"; layers hurting most: {hurting}" if hurting else ""))
    progress.say(f"{variant_id}: tuning {'passed' if passed else 'found nothing that passes'} "
                 f"after {len(attempts)} attempts ({kept[0].describe()})")
    return result


def _shortfall(plan: VariantPlan, result: VariantResult) -> float:
    metrics = {**result.metrics, "size_bytes": result.size_bytes}
    return gate_shortfall(metrics, plan.gates, result.precision, compressed=bool(plan.steps)) \
        if result.metrics else 1e9


def _sensitivity(runner: VariantRunner, plan: VariantPlan, best: Candidate, deadline: float,
                 start: Candidate) -> tuple[list[dict[str, Any]], int]:
    """Per-layer sensitivity under the best settings found (empty when it cannot run), and how
    many of the most sensitive layers to keep in float first (1 unless the run predicts more)."""
    from edgeship.contract.errors import first_line

    fmt, kind = plan.request.kind.format, plan.request.kind.kind
    base, _ = runner.base(plan.steps, fmt)
    ctx = runner.context(plan.steps)
    count = int(plan.tuning.sensitivity_samples)
    samples = list(runner.eval_set.head(count))
    options = {**plan.request.options, **Candidate(best.calibration, best.per_channel).options()}
    accept, max_float = _accept(runner, plan), int(plan.tuning.max_float_layers)
    predicted = None
    try:
        if kind in DYNAMIC_KINDS:
            rows, predicted = dynamic_sensitivity_for(runner, plan, options, samples, deadline,
                                                      accept, max_float)
        elif fmt == "onnx":
            from converter.tuning.onnx_layers import onnx_sensitivity

            rows = onnx_sensitivity(base, ctx, options, samples, deadline)
        else:
            from converter.tuning.tflite_layers import tflite_sensitivity

            rows = tflite_sensitivity(base, ctx, options, samples, deadline)
    except Exception as err:  # sensitivity is a guide; without it tuning stops at calibration
        runner.progress.say(f"{plan.request.id}: sensitivity failed: {first_line(err)}")
        return [], 1
    if predicted is not None:
        runner.progress.say(f"{plan.request.id}: sensitivity predicts {predicted} float "
                            f"layer{'s' if predicted > 1 else ''} pass")
    if runner.task_kind != "classification":  # top-1 agreement means nothing for the others
        rows = [{k: v for k, v in row.items() if k != "agreement"} for row in rows]
    return [row for row in rows if row["layer"] not in start.float_layers], predicted or 1


def _accept(runner: VariantRunner, plan: VariantPlan) -> Callable[[list[np.ndarray]], bool]:
    """Whether outputs on the first eval samples pass the plan's fidelity gates (its task's
    metrics against the reference; accuracy, size and latency are not judged here)."""
    from converter.task_metrics import task_fidelity

    expected = runner.compressed_reference(plan.steps)
    names = [s.name for s in expected.output_specs]

    def accept(outputs: list[np.ndarray]) -> bool:
        reference = [r[: len(o)] for r, o in zip(expected.outputs, outputs, strict=True)]
        metrics = task_fidelity(outputs, reference, names, runner.task_kind,
                                runner.validation.agreement_cosine)
        return not gate_failures(metrics, plan.gates, plan.request.kind.precision)

    return accept


def _record(plan: VariantPlan, attempts: list[tuple[Candidate, VariantResult, str]],
            kept: tuple[Candidate, VariantResult, str], sensitivity: list[dict[str, Any]],
            passed: bool, budget: _Budget) -> dict[str, Any]:
    rows = []
    for n, (candidate, result, change) in enumerate(attempts):
        m = result.metrics
        rows.append({
            "attempt": n, "change": change, "settings": candidate.describe(),
            "options": candidate.options(), "status": result.status,
            "kept": (candidate, result, change) == kept,
            "rejected": None if result.status in ("passed", "not_validated") else result.reason,
            "shortfall": _shortfall(plan, result),
            "metrics": {k: m[k] for k in _ATTEMPT_METRICS if k in m}
            | {"latency_p50_ms": (m.get("latency_ms") or {}).get("p50"), "size_bytes": result.size_bytes},
        })
    return {"outcome": "passed" if passed else "closest kept (failed)", "attempts": rows,
            "sensitivity": sensitivity, "seconds": budget.spent_seconds,
            "kept": kept[0].options()}


def _display_name(row: dict[str, Any]) -> str:
    """The layer's name, or its module path when the name is a long TFLite tensor name."""
    return row["layer"] if len(row["layer"]) <= 40 or not row.get("module") else row["module"]


def _layer_label(row: dict[str, Any]) -> str:
    """``node_Conv_25 (Conv, features.3, error 0.277)``; TFLite ops by their module path."""
    name = _display_name(row)
    module = f", {row['module']}" if row.get("module") and row["module"] != name else ""
    return f"{name} ({row['op']}{module}, error {row['score']:.3g})"
