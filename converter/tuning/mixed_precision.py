"""Per-layer mixed precision (``onnx-mixed``, ``tflite-mixed``): fp32, fp16 or int8 per layer,
chosen under a size or latency budget from measured per-layer sensitivity.

Each layer's error with its weights in fp16 and in int8 (alone, the rest float) is measured on
the real runtime by the format's module (:mod:`converter.export.onnx_mixed`,
:mod:`converter.export.tflite_mixed`). :func:`precision_path` then walks from all-fp32 to
all-int8, one layer a step, always taking the step that adds the least error per byte saved;
a few assignments spread along that path are built and measured for real (size, output error,
p50), :func:`pareto_front` keeps the non-dominated ones, and :func:`choose` takes the most
faithful one within the budget. Pure Python: the formats do the measuring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.errors import VariantBuildError

#: precisions a layer may take, widest first.
PRECISIONS = ("fp32", "fp16", "int8")
#: bytes a weight element costs stored in each precision (int8 scales are added per channel).
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}
#: budget keys a recipe may give: file size or p50 latency, as a ratio to the fp32 variant.
BUDGET_KEYS = ("size_ratio", "p50_ratio")
#: assignments along the path built and measured by default (the endpoints included).
DEFAULT_CANDIDATES = 6


@dataclass(frozen=True)
class Layer:
    """One layer whose weight precision can be chosen.

    Attributes:
        name: what the format's builder takes (ONNX node name, TFLite op output tensor).
        op: operator type.
        module: PyTorch module it comes from, when known.
        weights: weight elements.
        channels: output channels (one int8 scale each).
        error: output error (relative squared, :func:`converter.tuning.scoring.output_error`)
            with this layer alone in each lowered precision: ``{"fp16": .., "int8": ..}``.
    """

    name: str
    op: str
    module: str | None
    weights: int
    channels: int
    error: dict[str, float] = field(default_factory=dict)

    def bytes(self, precision: str) -> float:
        extra = 4.0 * self.channels if precision == "int8" else 0.0
        return BYTES_PER_WEIGHT[precision] * self.weights + extra


@dataclass(frozen=True)
class Budget:
    """What the chosen assignment may cost, as a ratio to the fp32 variant (file size or p50)."""

    key: str
    ratio: float

    def describe(self) -> str:
        return f"{self.key} <= {self.ratio:g}"


def parse_budget(value: Any, variant_id: str) -> Budget:
    """``{size_ratio = 0.4}`` or ``{p50_ratio = 0.8}`` from a recipe.

    Raises:
        VariantBuildError: not one key of :data:`BUDGET_KEYS` with a ratio in (0, 2].
    """
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in BUDGET_KEYS:
        raise VariantBuildError(f"{variant_id}: budget must be one of {{size_ratio = R}} or "
                                f"{{p50_ratio = R}}, got {value!r}")
    key, ratio = next(iter(value.items()))
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 2:
        raise VariantBuildError(f"{variant_id}: budget {key} must be a ratio in (0, 2], got {ratio!r}")
    return Budget(key, float(ratio))


def candidate_count(value: Any, variant_id: str) -> int:
    """The ``candidates`` option: how many assignments to build and measure (2 to 20)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 20:
        raise VariantBuildError(f"{variant_id}: candidates must be an integer from 2 to 20, "
                                f"got {value!r}")
    return value


Assignment = dict[str, str]


def precision_path(layers: Sequence[Layer]) -> list[Assignment]:
    """Assignments from all-fp32 to all-int8, one layer lowered one step at a time, each step
    the one that adds the least measured error per byte it saves (ties: the larger saving)."""
    current = {layer.name: "fp32" for layer in layers}
    path = [dict(current)]
    by_name = {layer.name: layer for layer in layers}
    while True:
        moves = []
        for name, precision in current.items():
            if precision == PRECISIONS[-1]:
                continue
            layer, lower = by_name[name], PRECISIONS[PRECISIONS.index(precision) + 1]
            saved = layer.bytes(precision) - layer.bytes(lower)
            added = layer.error.get(lower, 0.0) - layer.error.get(precision, 0.0)
            moves.append((max(added, 0.0) / max(saved, 1.0), -saved, name, lower))
        if not moves:
            return path
        _, _, name, lower = min(moves)
        current[name] = lower
        path.append(dict(current))


def spread(path: list[Assignment], count: int, edge: int | None = None) -> list[Assignment]:
    """``count`` assignments evenly spaced along ``path``, both ends included, plus the one at
    index ``edge`` (predicted to just fit a size budget) and the next, in case the prediction
    was short."""
    if len(path) <= count:
        return list(path)
    picks = {round(i * (len(path) - 1) / (count - 1)) for i in range(count)}
    if edge is not None:
        picks |= {edge, min(edge + 1, len(path) - 1)}
    return [path[i] for i in sorted(picks)]


def budget_edge(path: list[Assignment], layers: Sequence[Layer], budget: Budget,
                base_size: int) -> int | None:
    """Index of the first assignment on ``path`` whose predicted file (the fp32 file less the
    bytes its lowered weights save) meets a size budget: the most faithful one predicted to fit.
    ``None`` for a latency budget (not predicted) or when even the last is predicted over."""
    if budget.key != "size_ratio":
        return None
    by_name = {layer.name: layer for layer in layers}
    for i, assignment in enumerate(path):
        saved = sum(by_name[n].bytes("fp32") - by_name[n].bytes(p) for n, p in assignment.items())
        if (base_size - saved) / base_size <= budget.ratio:
            return i
    return None


@dataclass
class Point:
    """One assignment built and measured on the runtime."""

    assignment: Assignment
    size_bytes: int
    error: float
    p50_ms: float | None = None
    size_ratio: float = 0.0
    p50_ratio: float | None = None
    front: bool = False
    chosen: bool = False

    def counts(self) -> dict[str, int]:
        return {p: sum(1 for v in self.assignment.values() if v == p) for p in PRECISIONS}

    def to_dict(self) -> dict[str, Any]:
        return {"size_bytes": self.size_bytes, "size_ratio": self.size_ratio, "error": self.error,
                "p50_ms": self.p50_ms, "p50_ratio": self.p50_ratio, "front": self.front,
                "chosen": self.chosen, "layers": self.counts()}


def pareto_front(points: list[Point], key: str) -> list[Point]:
    """Points no other point beats on both the budget's cost (``key``) and error; marks them."""
    def cost(p: Point) -> float:
        value = p.size_ratio if key == "size_ratio" else p.p50_ratio
        return float("inf") if value is None else value

    for p in points:
        p.front = not any(cost(q) <= cost(p) and q.error <= p.error
                          and (cost(q) < cost(p) or q.error < p.error) for q in points if q is not p)
    return sorted((p for p in points if p.front), key=cost)


def choose(points: list[Point], budget: Budget, variant_id: str) -> Point:
    """The most faithful front point within ``budget`` (marked chosen).

    Raises:
        VariantBuildError: no measured assignment meets the budget (the cheapest is named).
    """
    front = pareto_front(points, budget.key)
    within = [p for p in front if (getattr(p, budget.key) or float("inf")) <= budget.ratio]
    if not within:
        cheapest = min(getattr(p, budget.key) or float("inf") for p in points)
        raise VariantBuildError(f"{variant_id}: no per-layer assignment meets the budget "
                                f"{budget.describe()}; the cheapest measured is {cheapest:.3g}")
    best = min(within, key=lambda p: (p.error, getattr(p, budget.key)))
    best.chosen = True
    return best


def measure_candidates(
    layers: Sequence[Layer], count: int, budget: Budget, tmp: Path, suffix: str,
    write: Callable[[Assignment, Path], None], error_of: Callable[[Path], float],
    p50_of: Callable[[Path], float], base_size: int, base_p50: float,
) -> list[tuple[Point, Path]]:
    """Build and measure ``count`` assignments spread along :func:`precision_path` (and, for a
    size budget, the one predicted to just fit it: :func:`budget_edge`).

    Args:
        write: writes the model with an assignment to a path (the format's builder).
        error_of: output error of a written model against the float model.
        p50_of: its p50 latency (ms).
        base_size, base_p50: the fp32 export's file size and p50, the budget's reference.
    """
    path = precision_path(layers)
    measured = []
    for i, assignment in enumerate(spread(path, count, budget_edge(path, layers, budget, base_size))):
        path = tmp / f"candidate-{i}{suffix}"
        write(assignment, path)
        p50, size = p50_of(path), path.stat().st_size
        measured.append((Point(assignment, size, error_of(path), p50, round(size / base_size, 4),
                               round(p50 / base_p50, 4) if base_p50 else None), path))
    return measured


def details(layers: Sequence[Layer], measured: list[tuple[Point, Path]], best: Point,
            budget: Budget, samples: int, base_p50: float) -> dict[str, Any]:
    """``details["mixed"]`` of the variant: per-layer choice, every candidate, the budget."""
    return {"budget": {budget.key: budget.ratio}, "layers": layer_rows(layers, best.assignment),
            "candidates": [p.to_dict() for p, _ in measured], "samples": samples,
            "base_p50_ms": base_p50}


def step_name(best: Point) -> str:
    """The compression step recorded in the manifest, e.g. ``quant:mixed:fp32x2:fp16x5:int8x6``."""
    counts = best.counts()
    return f"quant:mixed:fp32x{counts['fp32']}:fp16x{counts['fp16']}:int8x{counts['int8']}"


def measure_p50_ms(run: Callable[[], Any], runs: int = 30, warmup: int = 3) -> float:
    """Median wall time of ``run()`` in milliseconds (one sample, as validation measures)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    times.sort()
    return round(1000 * times[len(times) // 2], 4)


def layer_rows(layers: Sequence[Layer], chosen: Assignment) -> list[dict[str, Any]]:
    """What the report shows per layer: the measured errors and the precision chosen."""
    return [{"layer": layer.name, "op": layer.op, "module": layer.module, "weights": layer.weights,
             "error_fp16": layer.error.get("fp16"), "error_int8": layer.error.get("int8"),
             "precision": chosen[layer.name]} for layer in layers]
