"""The gated pipeline: search for a variant that meets the recipe's ``[targets]``.

For each target format the search goes the way a careful engineer would::

    quantize (static int8) ─► accuracy met? ──no──► tune the quantization (converter.tuning)
                                   │ yes                    │ still no: stop, keep the closest
                                   ▼
                        size / latency met? ──yes──► package
                                   │ no
                                   ▼
    prune channels at max_prune ─► performance met? ──no──► stop, keep the closest
                                   │ yes
                                   ▼
    bisect the pruning rate between 0 and max_prune: the lowest rate that meets size and
    latency, keeping the accuracy gate ─► package the best candidate that meets both

Each candidate is a full build and validation on the real runtime; the pruned ones reuse the
quantization settings the first loop settled on (calibration, granularity, float layers).
The log of every loop step (rate, settings, metrics, verdict) goes to ``report.json`` and the
report. The variant is ``<format>-target``; when nothing meets every target, the closest
candidate is kept as failed with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from converter.catalogue import VARIANT_KINDS
from converter.compress.steps import ChannelPruneStep
from converter.export.base import VariantRequest
from converter.gates import gate_failures, gate_shortfall
from converter.recipe import Gates, Recipe, Targets, VariantPlan
from converter.results import VariantResult

if TYPE_CHECKING:
    from converter.runner import VariantRunner

#: the variant kind searched per format.
SEARCH_KINDS = {"onnx": "onnx-int8-static", "tflite": "tflite-int8"}


def target_id(fmt: str) -> str:
    """The id of the variant the search ships for ``fmt``."""
    return f"{fmt}-target"


def target_gates(base: Gates, targets: Targets) -> tuple[Gates, Gates]:
    """``(accuracy gates, performance gates)``: the recipe's fidelity gates with the target
    accuracy drop, and the size / latency targets alone."""
    drop = targets.max_accuracy_drop if targets.max_accuracy_drop is not None else base.max_accuracy_drop
    accuracy = dataclasses.replace(base, max_accuracy_drop=drop, max_size_bytes=None,
                                   max_latency_p95_ms=None)
    size = int(targets.max_size_mb * 1e6) if targets.max_size_mb is not None else None
    performance = Gates(max_accuracy_drop=None, min_agreement=None, max_abs_err_fp32=None,
                        max_size_bytes=size, max_latency_p95_ms=targets.max_latency_ms)
    return accuracy, performance


def search_targets(runner: VariantRunner, recipe: Recipe) -> tuple[list[VariantResult], list[dict[str, Any]]]:
    """Run the search for every target format.

    Returns:
        One result per format (passed, or the closest failed candidate) and one log entry per
        format: ``{"format", "variant", "outcome", "steps": [...]}``.
    """
    assert recipe.targets is not None
    results, log = [], []
    for fmt in recipe.targets.formats:
        search = _FormatSearch(runner, recipe, fmt)
        result = search.run()
        results.append(result)
        log.append({"format": fmt, "variant": result.id, "outcome": search.outcome,
                    "targets": dataclasses.asdict(recipe.targets), "steps": search.steps})
    return results, log


class _FormatSearch:
    """The search for one format; ``steps`` is its log, ``outcome`` one line."""

    def __init__(self, runner: VariantRunner, recipe: Recipe, fmt: str) -> None:
        assert recipe.targets is not None
        self.runner, self.recipe, self.targets, self.fmt = runner, recipe, recipe.targets, fmt
        self.accuracy_gates, self.performance_gates = target_gates(recipe.gates, recipe.targets)
        kind = VARIANT_KINDS[SEARCH_KINDS[fmt]]
        self.variant_id = target_id(fmt)
        self.request = VariantRequest(self.variant_id, kind, dict(kind.options))
        self.steps: list[dict[str, Any]] = []
        self.candidates: list[VariantResult] = []
        self.outcome = ""

    # ------------------------------------------------------------------ verdicts

    def accuracy_met(self, result: VariantResult, compressed: bool) -> bool:
        return bool(result.metrics) and not gate_failures(
            result.metrics, self.accuracy_gates, result.precision, compressed)

    def performance_met(self, result: VariantResult) -> bool:
        metrics = {**result.metrics, "size_bytes": result.size_bytes}
        return bool(result.metrics) and not gate_failures(metrics, self.performance_gates, result.precision)

    def _shortfall(self, result: VariantResult) -> float:
        gates = dataclasses.replace(self.accuracy_gates,
                                    max_size_bytes=self.performance_gates.max_size_bytes,
                                    max_latency_p95_ms=self.performance_gates.max_latency_p95_ms)
        metrics = {**result.metrics, "size_bytes": result.size_bytes}
        return gate_shortfall(metrics, gates, result.precision, compressed=bool(result.steps))

    # ------------------------------------------------------------------ loops

    def run(self) -> VariantResult:
        progress = self.runner.progress
        progress.say(f"{self.variant_id}: searching for {self._targets_text()}")
        quantized = self._quantize()
        if not self.accuracy_met(quantized, compressed=False):
            self.outcome = "accuracy target not reached by quantization and its tuning"
            return self._finish(None)
        if self.performance_met(quantized):
            self.outcome = "met without pruning"
            return self._finish(quantized)
        options = (quantized.tuning or {}).get("kept") or {}
        return self._prune(options)

    def _quantize(self) -> VariantResult:
        from converter.tuning import needs_tuning, tune_variant

        plan = VariantPlan(dataclasses.replace(self.request, id=f"{self.variant_id}.q"),
                           self.accuracy_gates, (), self.recipe.tuning)
        result = self.runner.run(plan)
        self._log("quantize", None, result, compressed=False)
        if needs_tuning(plan, result):
            result = tune_variant(self.runner, plan, result)
            for attempt in (result.tuning or {}).get("attempts", [])[1:]:
                self.steps.append({"loop": "tune", "rate": None, "settings": attempt["settings"],
                                   "status": attempt["status"], "metrics": attempt["metrics"],
                                   "accuracy_met": attempt["status"] == "passed",
                                   "performance_met": None, "verdict": attempt["rejected"] or "passed"})
            self._log("tuned", None, result, compressed=False)
        self.candidates.append(result)
        return result

    def _prune(self, options: dict[str, Any]) -> VariantResult:
        importance = self._importance()
        low, high = 0.0, float(self.targets.max_prune)
        at_high = self._pruned(high, importance, options)
        if not self.performance_met(at_high):
            self.outcome = (f"size/latency targets not reached even at {high:g} channel pruning "
                            f"({importance})")
            return self._finish(None)
        best = at_high if self.accuracy_met(at_high, compressed=True) else None
        for _ in range(int(self.targets.bisect_steps)):
            rate = round((low + high) / 2, 3)
            result = self._pruned(rate, importance, options)
            if self.performance_met(result):
                high = rate
                if self.accuracy_met(result, compressed=True):
                    best = result
            else:
                low = rate
        if best is None:
            self.outcome = ("no pruning rate met the size/latency targets and the accuracy "
                            "target together")
        else:
            self.outcome = f"met with {best.steps[0]['step']}"
        return self._finish(best)

    def _pruned(self, rate: float, importance: str, options: dict[str, Any]) -> VariantResult:
        request = dataclasses.replace(self.request, id=f"{self.variant_id}.p{len(self.candidates)}",
                                      options={**self.request.options, **options})
        no_tuning = dataclasses.replace(self.recipe.tuning, enabled=False)
        plan = VariantPlan(request, self.accuracy_gates, (ChannelPruneStep(rate, importance),), no_tuning)
        result = self.runner.run(plan)
        self.candidates.append(result)
        self._log("prune", rate, result, compressed=True)
        return result

    def _importance(self) -> str:
        if self.targets.importance != "auto":
            return self.targets.importance
        from torch import nn

        source = self.runner.chain.apply(()).module
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in source.modules())
        return "bn-scale" if has_bn else "l1"

    # ------------------------------------------------------------------ bookkeeping

    def _finish(self, chosen: VariantResult | None) -> VariantResult:
        """Keep ``chosen`` (or the closest candidate), delete the others, rename it."""
        kept = chosen or min(self.candidates, key=self._shortfall)
        for candidate in self.candidates:
            if candidate is not kept:
                self.runner.discard(candidate)
        result = self.runner.adopt(kept, self.variant_id)
        gates = dataclasses.replace(self.accuracy_gates,
                                    max_size_bytes=self.performance_gates.max_size_bytes,
                                    max_latency_p95_ms=self.performance_gates.max_latency_p95_ms)
        failures = gate_failures({**result.metrics, "size_bytes": result.size_bytes}, gates,
                                 result.precision, compressed=bool(result.steps)) if result.metrics else []
        if chosen is None or failures:
            result.status = "failed" if result.status != "skipped" else result.status
            result.reason = "; ".join([*failures, f"search: {self.outcome}"])
        self.runner.progress.say(f"{self.variant_id}: {self.outcome}")
        return result

    def _log(self, loop: str, rate: float | None, result: VariantResult, compressed: bool) -> None:
        m = result.metrics
        accuracy_ok = self.accuracy_met(result, compressed)
        performance_ok = self.performance_met(result)
        self.steps.append({
            "loop": loop, "rate": rate, "settings": ", ".join(result.compression) or "–",
            "status": result.status,
            "metrics": {"accuracy": m.get("accuracy"), "accuracy_drop": m.get("accuracy_drop"),
                        "latency_p50_ms": (m.get("latency_ms") or {}).get("p50"),
                        "latency_p95_ms": (m.get("latency_ms") or {}).get("p95"),
                        "size_bytes": result.size_bytes, "macs": result.model.get("macs")},
            "accuracy_met": accuracy_ok, "performance_met": performance_ok,
            "verdict": "; ".join(gate_failures({**m, "size_bytes": result.size_bytes},
                                               self.accuracy_gates, result.precision, compressed)
                                 + gate_failures({**m, "size_bytes": result.size_bytes},
                                                 self.performance_gates, result.precision))
            if m else (result.reason or "not measured"),
        })
        self.runner.progress.say(
            f"{self.variant_id}: {loop}{f' {rate:g}' if rate is not None else ''}: accuracy "
            f"{'met' if accuracy_ok else 'missed'}, size/latency {'met' if performance_ok else 'missed'}")

    def _targets_text(self) -> str:
        t = self.targets
        parts = []
        if t.max_size_mb is not None:
            parts.append(f"size <= {t.max_size_mb:g} MB")
        if t.max_latency_ms is not None:
            parts.append(f"latency p95 <= {t.max_latency_ms:g} ms")
        drop = self.accuracy_gates.max_accuracy_drop
        if drop is not None:
            parts.append(f"accuracy drop <= {drop * 100:g} pts")
        return ", ".join(parts)
