"""The ``search`` recipe step (hardware-aware architecture search): its settings and parsing.

Written ``"search:width+depth:0.5x"`` (a latency budget of half the source model's p50 on
onnxruntime), ``"search:width:2ms"`` (an absolute budget), or as a table::

    { step = "search:width+depth", budget_ms = 2.0, seconds = 300, widths = [0.75, 0.5, 0.25] }

Torch-free like :mod:`converter.compress.steps`, which dispatches ``search:...`` here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: what may change: channel widths per stage, and also residual blocks per stage.
SEARCH_SPACES = ("width", "width+depth")


@dataclass(frozen=True)
class SearchStep:
    """Search stage widths (and residual depth) under a latency budget measured on onnxruntime.

    Attributes:
        space: ``width`` or ``width+depth``.
        budget_ms: p50 latency budget in milliseconds, one sample at a time.
        budget_ratio: the budget as a share of the source model's measured p50 (one of the two).
        seconds: wall-clock budget of the whole search; no candidate starts that would pass it.
        widths: width multipliers each stage may take besides 1.0.
        max_candidates: most architectures measured, the source model included.
        fine_tune_epochs: brief fine-tuning of each candidate within the budget, before it
            is ranked.
        final_epochs: further fine-tuning of the chosen candidate, after the search (not
            counted in ``seconds``; ``None``: the recipe's ``fine_tune_epochs``).
        alpha: weight of the labels' cross-entropy; the rest distils from the source model.
        latency_samples: samples timed per candidate.
        keep: module names never narrowed, on top of the classifier head.
    """

    space: str = "width+depth"
    budget_ms: float | None = None
    budget_ratio: float | None = None
    seconds: float = 300.0
    widths: tuple[float, ...] = (0.75, 0.5, 0.25)
    max_candidates: int = 24
    fine_tune_epochs: int = 1
    final_epochs: int | None = None
    alpha: float = 0.5
    latency_samples: int = 100
    keep: tuple[str, ...] = ()

    def label(self) -> str:
        budget = f"{self.budget_ms:g}ms" if self.budget_ms is not None else f"{self.budget_ratio:g}x"
        return f"search:{self.space}:{budget}"

    @property
    def trains(self) -> bool:
        return True


_INTS = {"max_candidates", "latency_samples", "fine_tune_epochs", "final_epochs"}
_FLOATS = {"budget_ms", "budget_ratio", "seconds", "alpha"}
OVERRIDES = _INTS | _FLOATS | {"widths", "keep"}


def parse_search_step(params: list[str], overrides: dict[str, Any]) -> SearchStep:
    """The step from the parts after ``search:`` and the table's keys.

    Raises:
        ValueError: an unknown space, key or budget, or a value out of range.
    """
    if not params or params[0] not in SEARCH_SPACES or len(params) > 2:
        raise ValueError(f"expected search:{'|'.join(SEARCH_SPACES)}[:<ms>ms|:<ratio>x]")
    values: dict[str, Any] = {"space": params[0]}
    if len(params) == 2:
        values.update(_budget(params[1]))
    unknown = set(overrides) - OVERRIDES
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; known: {sorted(OVERRIDES)}")
    for key, value in overrides.items():
        values[key] = _value(key, value)
    if "budget_ms" in overrides and "budget_ratio" not in overrides:
        values.pop("budget_ratio", None)
    if "budget_ratio" in overrides and "budget_ms" not in overrides:
        values.pop("budget_ms", None)
    step = dataclasses.replace(SearchStep(), **values)
    _check(step)
    return step


def _budget(text: str) -> dict[str, float]:
    try:
        if text.endswith("ms"):
            return {"budget_ms": float(text[:-2])}
        if text.endswith("x"):
            return {"budget_ratio": float(text[:-1])}
    except ValueError:
        pass
    raise ValueError(f"budget {text!r} is neither <ms>ms (2ms) nor <share of the source p50>x (0.5x)")


def _value(key: str, value: Any) -> Any:
    if key == "keep":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("keep must be a list of module names")
        return tuple(value)
    if key == "widths":
        if not isinstance(value, list) or not value or not all(_number(v) for v in value):
            raise ValueError("widths must be a non-empty list of multipliers in (0, 1)")
        return tuple(sorted({float(v) for v in value}, reverse=True))
    if key in _INTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer")
        return value
    if not _number(value):
        raise ValueError(f"{key} must be a number")
    return float(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(step: SearchStep) -> None:
    if (step.budget_ms is None) == (step.budget_ratio is None):
        raise ValueError("needs one latency budget: search:...:<ms>ms, search:...:<ratio>x, "
                         "budget_ms = ... or budget_ratio = ...")
    budget = step.budget_ms if step.budget_ms is not None else step.budget_ratio
    if budget is None or budget <= 0:
        raise ValueError(f"the latency budget must be positive, got {budget!r}")
    if not all(0 < w < 1 for w in step.widths):
        raise ValueError(f"widths must be in (0, 1), got {list(step.widths)}")
    if step.seconds <= 0:
        raise ValueError(f"seconds must be positive, got {step.seconds:g}")
    if step.max_candidates < 2:
        raise ValueError("max_candidates must be at least 2 (the source model and one candidate)")
    if step.latency_samples < 1:
        raise ValueError("latency_samples must be at least 1")
    if not 0 <= step.alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {step.alpha:g}")
