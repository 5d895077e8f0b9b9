"""Which guards a rollout runs and their thresholds: typed, validated, round-trips through JSON.

Usage::

    spec = GuardSpec.default()                        # the issue's defaults
    spec = GuardSpec.from_dict({"guards": [{"metric": "latency", "mode": "gain", "threshold": 0.3}]})
    stored = spec.to_dict()                           # plain dict for the database / API

Each :class:`Guard` is a *limit* ("no regression beyond X": fails when the canary is
significantly worse than X; passes on its point estimate being within X, or with
``pass_alpha`` only once it is significantly within X) or a required *gain* ("promote only if
p95 latency is at least 30% lower": passes only when the canary is significantly better by X,
otherwise holds).
What ``threshold`` means depends on the metric and mode (:data:`THRESHOLD_MEANING`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any

from edgeship.contract.reports import ERROR_REASONS, INFERENCE_ERROR_REASONS


class Metric(str, Enum):
    """What a guard compares between canary and stable."""

    ERROR_RATE = "error_rate"
    LATENCY = "latency"
    ACCURACY = "accuracy"
    LOAD_FAILURES = "load_failures"
    AGREEMENT = "agreement"
    MEMORY = "memory"
    LOAD_TIME = "load_time"


class Mode(str, Enum):
    """Limit (fails on a significant regression) or required gain (passes on a significant gain)."""

    LIMIT = "limit"
    GAIN = "gain"


#: default threshold per metric and mode; a missing key means the mode is not offered.
DEFAULT_THRESHOLDS: dict[tuple[Metric, Mode], float] = {
    (Metric.ERROR_RATE, Mode.LIMIT): 0.001,
    (Metric.LATENCY, Mode.LIMIT): 1.2,
    (Metric.LATENCY, Mode.GAIN): 0.3,
    (Metric.ACCURACY, Mode.LIMIT): 0.005,
    (Metric.ACCURACY, Mode.GAIN): 0.005,
    (Metric.LOAD_FAILURES, Mode.LIMIT): 0.01,
    (Metric.AGREEMENT, Mode.LIMIT): 0.98,
    (Metric.MEMORY, Mode.LIMIT): 1.2,
    (Metric.LOAD_TIME, Mode.LIMIT): 1.5,
}
THRESHOLD_MEANING: dict[tuple[Metric, Mode], str] = {
    (
        Metric.ERROR_RATE,
        Mode.LIMIT,
    ): "absolute margin: fail if canary rate > stable × (1 + relative_margin) + margin",
    (Metric.LATENCY, Mode.LIMIT): "max ratio of canary to stable quantile, e.g. 1.2",
    (Metric.LATENCY, Mode.GAIN): "min fractional reduction of the quantile, e.g. 0.3 = 30% lower",
    (Metric.ACCURACY, Mode.LIMIT): "max accuracy drop as a ratio, 0.005 = half a point",
    (Metric.ACCURACY, Mode.GAIN): "min accuracy increase as a ratio",
    (Metric.LOAD_FAILURES, Mode.LIMIT): "absolute margin on the share of devices failing load/golden check",
    (Metric.AGREEMENT, Mode.LIMIT): "min top-1 agreement of candidate with stable in shadow mode",
    (Metric.MEMORY, Mode.LIMIT): "max ratio of the canary devices' typical peak RSS to stable's, e.g. 1.2",
    (Metric.LOAD_TIME, Mode.LIMIT): "max ratio of the canary devices' typical model load time to stable's",
}
#: minimum samples per arm: inferences, latencies, labelled samples, devices, shadow samples,
#: devices that reported the value (memory, load time).
DEFAULT_MIN_SAMPLES: dict[Metric, int] = {
    Metric.ERROR_RATE: 1000,
    Metric.LATENCY: 500,
    Metric.ACCURACY: 400,
    Metric.LOAD_FAILURES: 20,
    Metric.AGREEMENT: 500,
    Metric.MEMORY: 10,
    Metric.LOAD_TIME: 10,
}
#: metric-specific options and their defaults; other metrics reject them.
OPTION_DEFAULTS: dict[Metric, dict[str, Any]] = {
    Metric.ERROR_RATE: {"cap": 0.05, "relative_margin": 0.1, "reasons": INFERENCE_ERROR_REASONS},
    Metric.LATENCY: {"quantile": 0.95},
    Metric.ACCURACY: {},
    Metric.LOAD_FAILURES: {"cap": 0.05, "relative_margin": 0.0},
    Metric.AGREEMENT: {},
    Metric.MEMORY: {},
    Metric.LOAD_TIME: {},
}
_OPTIONS = ("cap", "relative_margin", "quantile", "reasons")


@dataclass(frozen=True)
class Guard:
    """One guard. ``None`` fields take the metric's defaults; bad values raise ``ValueError``.

    Attributes:
        metric: what is compared.
        mode: limit or required gain.
        threshold: see :data:`THRESHOLD_MEANING`.
        min_samples: below this in either arm (pooled) the guard is inconclusive; device
            classes below it are skipped.
        name: unique within a spec; defaults to the metric, with ``_gain`` for gains.
        cap: error_rate / load_failures: absolute ceiling on the canary rate.
        relative_margin: error_rate / load_failures: tolerated relative excess over stable.
        quantile: latency: which quantile, 0.95 for p95.
        reasons: error_rate: error reasons counted per inference.
        pass_alpha: limits only. ``None`` (default): the limit passes when the point estimate
            is within it. A level in (0, 0.5): it passes only when the canary is *significantly*
            within it (the one-sided test of "within" has p < ``pass_alpha``, at every look),
            and holds otherwise; for fleets whose devices differ so much that the canary's few
            devices may look better than they are (docs/rollout-analysis.md, "Passing a limit").
        dry_run: evaluated every window and its verdicts stored, but never acting: no rollback,
            no hold, and no share of the other guards' alpha (``dry_run.assess_split``).
    """

    metric: Metric
    mode: Mode = Mode.LIMIT
    threshold: float | None = None
    min_samples: int | None = None
    name: str | None = None
    cap: float | None = None
    relative_margin: float | None = None
    quantile: float | None = None
    reasons: tuple[str, ...] | None = None
    pass_alpha: float | None = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        metric = _enum(Metric, self.metric, "metric")
        mode = _enum(Mode, self.mode, "mode")
        set_ = self._set
        set_("metric", metric)
        set_("mode", mode)
        if (metric, mode) not in DEFAULT_THRESHOLDS:
            raise ValueError(f"mode: {metric.value} guards offer only 'limit', got {mode.value!r}")
        threshold = DEFAULT_THRESHOLDS[metric, mode] if self.threshold is None else self.threshold
        set_("threshold", _number(threshold, "threshold"))
        min_samples = DEFAULT_MIN_SAMPLES[metric] if self.min_samples is None else self.min_samples
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")
        set_("min_samples", min_samples)
        name = self.name if self.name is not None else metric.value + ("_gain" if mode is Mode.GAIN else "")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        set_("name", name)
        allowed = OPTION_DEFAULTS[metric]
        for option in _OPTIONS:
            value = getattr(self, option)
            if value is not None and option not in allowed:
                raise ValueError(f"{option}: does not apply to {metric.value} guards")
            set_(option, allowed.get(option) if value is None else value)
        if not isinstance(self.dry_run, bool):
            raise ValueError(f"dry_run must be true or false, got {self.dry_run!r}")
        self._check_ranges(float(threshold))

    def _set(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)  # filling defaults of a frozen dataclass

    def _check_ranges(self, t: float) -> None:
        checks = {
            (Metric.ERROR_RATE, Mode.LIMIT): 0 <= t < 1,
            (Metric.LATENCY, Mode.LIMIT): t >= 1,
            (Metric.LATENCY, Mode.GAIN): 0 < t < 1,
            (Metric.ACCURACY, Mode.LIMIT): 0 <= t < 1,
            (Metric.ACCURACY, Mode.GAIN): 0 <= t < 1,
            (Metric.LOAD_FAILURES, Mode.LIMIT): 0 <= t < 1,
            (Metric.AGREEMENT, Mode.LIMIT): 0 < t <= 1,
            (Metric.MEMORY, Mode.LIMIT): t >= 1,
            (Metric.LOAD_TIME, Mode.LIMIT): t >= 1,
        }
        if not checks[self.metric, self.mode]:
            raise ValueError(
                f"threshold out of range for {self.metric.value} {self.mode.value}: {t!r} "
                f"({THRESHOLD_MEANING[self.metric, self.mode]})"
            )
        if self.cap is not None and not 0 < _number(self.cap, "cap") <= 1:
            raise ValueError(f"cap must be in (0, 1], got {self.cap!r}")
        if self.relative_margin is not None and _number(self.relative_margin, "relative_margin") < 0:
            raise ValueError(f"relative_margin must be >= 0, got {self.relative_margin!r}")
        if self.quantile is not None and not 0 < _number(self.quantile, "quantile") < 1:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile!r}")
        if self.pass_alpha is not None:
            if self.mode is not Mode.LIMIT:
                raise ValueError("pass_alpha: applies to limits only (a gain passes only when significant)")
            if not 0 < _number(self.pass_alpha, "pass_alpha") < 0.5:
                raise ValueError(f"pass_alpha must be in (0, 0.5), got {self.pass_alpha!r}")
            object.__setattr__(self, "pass_alpha", float(self.pass_alpha))
        if self.reasons is not None:
            reasons = self.reasons
            if isinstance(reasons, str) or not all(r in ERROR_REASONS for r in reasons) or not reasons:
                raise ValueError(
                    f"reasons must be a non-empty list from {list(ERROR_REASONS)}, got {reasons!r}"
                )
            object.__setattr__(self, "reasons", tuple(reasons))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with every applicable field (defaults filled in)."""
        out: dict[str, Any] = {
            "name": self.name,
            "metric": self.metric.value,
            "mode": self.mode.value,
            "threshold": self.threshold,
            "min_samples": self.min_samples,
        }
        for option in OPTION_DEFAULTS[self.metric]:
            value = getattr(self, option)
            out[option] = list(value) if isinstance(value, tuple) else value
        if self.pass_alpha is not None:
            out["pass_alpha"] = self.pass_alpha
        if self.dry_run:
            out["dry_run"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Guard:
        """Parse one guard; ``metric`` is required, the rest default.

        Raises:
            ValueError: unknown field, wrong type or out-of-range value (naming the field).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"guard must be an object, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown guard field(s): {', '.join(map(str, unknown))}")
        if "metric" not in data:
            raise ValueError("metric: required (one of " + ", ".join(m.value for m in Metric) + ")")
        values = dict(data)
        if isinstance(values.get("reasons"), list):
            values["reasons"] = tuple(values["reasons"])
        return cls(**values)


def _enum(kind: type[Enum], value: Any, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{name} must be one of {[m.value for m in kind]}, got {value!r}") from None


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def default_guards(shadow: bool = False) -> tuple[Guard, ...]:
    """The issue's defaults: error rate, p95 latency ≤ 1.2× stable, accuracy drop < 0.5 point,
    load/golden failures; plus shadow agreement ≥ 0.98 when ``shadow``. The memory and load
    time guards are opt-in (devices report those values only once per window, some never)."""
    guards = [
        Guard(Metric.ERROR_RATE),
        Guard(Metric.LATENCY),
        Guard(Metric.ACCURACY),
        Guard(Metric.LOAD_FAILURES),
    ]
    if shadow:
        guards.append(Guard(Metric.AGREEMENT))
    return tuple(guards)


@dataclass(frozen=True)
class GuardSpec:
    """A rollout's guards and the false-rollback budget they share.

    Attributes:
        guards: at least one; names unique.
        alpha: probability of any false fail (and of a false gain pass) over the whole
            rollout, split over looks, guards and device classes (``stats.look_alpha``).
    """

    guards: tuple[Guard, ...] = field(default_factory=default_guards)
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not self.guards:
            raise ValueError("guards: at least one guard is needed (no guard would never pass)")
        if not all(isinstance(g, Guard) for g in self.guards):
            raise ValueError("guards: every item must be a Guard")
        object.__setattr__(self, "guards", tuple(self.guards))
        names = [g.name for g in self.guards]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"guards: duplicate name(s) {duplicates}; give each guard a distinct name")
        if not 0 < _number(self.alpha, "alpha") < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha!r}")
        if all(g.dry_run for g in self.guards):
            raise ValueError("guards: every guard is dry_run; at least one must act")

    def acting(self) -> GuardSpec:
        """The spec without its dry-run guards: what decides (and splits the alpha)."""
        return replace(self, guards=tuple(g for g in self.guards if not g.dry_run))

    @classmethod
    def default(cls, shadow: bool = False) -> GuardSpec:
        """Defaults from the issue, with the shadow agreement guard when ``shadow``."""
        return cls(default_guards(shadow))

    def with_guards(self, *guards: Guard) -> GuardSpec:
        """A copy with ``guards`` appended (e.g. a latency gain on top of the defaults)."""
        return replace(self, guards=(*self.guards, *guards))

    def with_options(self, metric: Metric, **changes: Any) -> GuardSpec:
        """A copy whose guards of ``metric`` have ``changes`` (e.g. ``pass_alpha=0.2``)."""
        return replace(self, guards=tuple(replace(g, **changes) if g.metric is metric else g
                                          for g in self.guards))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: ``{"alpha": ..., "guards": [...]}``."""
        return {"alpha": self.alpha, "guards": [g.to_dict() for g in self.guards]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> GuardSpec:
        """Parse a spec; a missing ``guards`` list means the defaults.

        Raises:
            ValueError: naming the field, e.g. ``guards[1].threshold out of range ...``.
        """
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ValueError(f"guard spec must be an object, got {data!r}")
        unknown = sorted(set(data) - {"alpha", "guards", "shadow"})
        if unknown:
            raise ValueError(f"unknown guard spec field(s): {', '.join(map(str, unknown))}")
        shadow = data.get("shadow", False)
        if not isinstance(shadow, bool):
            raise ValueError(f"shadow must be true or false, got {shadow!r}")
        raw = data.get("guards")
        if raw is None:
            guards = default_guards(shadow)
        elif isinstance(raw, list):
            guards = tuple(_parse_item(i, item) for i, item in enumerate(raw))
        else:
            raise ValueError(f"guards must be a list, got {raw!r}")
        return cls(guards, data.get("alpha", 0.05))


def _parse_item(index: int, item: Any) -> Guard:
    try:
        return Guard.from_dict(item)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"guards[{index}]: {exc}") from None
