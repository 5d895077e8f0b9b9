"""The ramp of a rollout: stages with a canary share, a minimum duration and minimum samples.

Usage::

    stages = parse_stages([{"percent": 10, "min_duration_seconds": 3600, "min_samples": 5000},
                           {"percent": 50}, {"percent": 100}])

A 100% stage has no stable arm to compare with: it is accepted only last, and reaching it
means promotion (``rollout.decide``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One step of the ramp.

    Attributes:
        percent: canary share in (0, 100].
        min_duration_seconds: the stage lasts at least this long.
        min_samples: canary inferences the stage must collect before it can pass.
    """

    percent: float
    min_duration_seconds: float = 3600.0
    min_samples: int = 5000

    def __post_init__(self) -> None:
        for name in ("percent", "min_duration_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not 0 < self.percent <= 100:
            raise ValueError(f"percent must be in (0, 100], got {self.percent!r}")
        if self.min_duration_seconds < 0:
            raise ValueError(f"min_duration_seconds must be >= 0, got {self.min_duration_seconds!r}")
        if (
            isinstance(self.min_samples, bool)
            or not isinstance(self.min_samples, int)
            or self.min_samples < 0
        ):
            raise ValueError(f"min_samples must be an integer >= 0, got {self.min_samples!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return {
            "percent": self.percent,
            "min_duration_seconds": self.min_duration_seconds,
            "min_samples": self.min_samples,
        }


DEFAULT_STAGES: tuple[Stage, ...] = (Stage(10), Stage(50), Stage(100, 0, 0))


def parse_stages(data: Any) -> tuple[Stage, ...]:
    """Stages from a list of dicts (``None`` → defaults), percents strictly rising.

    Raises:
        ValueError: naming the stage and field.
    """
    if data is None:
        return DEFAULT_STAGES
    if not isinstance(data, list) or not data:
        raise ValueError(f"stages must be a non-empty list, got {data!r}")
    stages = []
    for i, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise ValueError(f"stages[{i}] must be an object, got {item!r}")
        unknown = sorted(set(item) - {"percent", "min_duration_seconds", "min_samples"})
        if unknown:
            raise ValueError(f"stages[{i}]: unknown field(s) {', '.join(map(str, unknown))}")
        if "percent" not in item:
            raise ValueError(f"stages[{i}].percent: required")
        try:
            stages.append(Stage(**item))
        except ValueError as exc:
            raise ValueError(f"stages[{i}].{exc}") from None
    check_stages(tuple(stages))
    return tuple(stages)


def check_stages(stages: Sequence[Stage]) -> None:
    """Raise ``ValueError`` unless percents rise strictly and only the last stage is 100%."""
    if not stages:
        raise ValueError("stages: at least one stage")
    for i in range(1, len(stages)):
        if stages[i].percent <= stages[i - 1].percent:
            raise ValueError(
                f"stages[{i}].percent must be above the previous stage's ({stages[i - 1].percent:g})"
            )
    if stages[0].percent >= 100:
        raise ValueError(
            "stages[0].percent must be below 100: a 100% stage has no stable arm to compare with"
        )


#: ``approve_before`` may name 100 even when no stage is 100%: passing the last analysed stage
#: takes the candidate to every device, so a gate "before 100%" is a gate before promotion.
PROMOTION_PERCENT = 100.0


def parse_approve_before(data: Any, stages: Sequence[Stage]) -> tuple[float, ...]:
    """Manual approval gates: the percents of the stages (100: promotion) that wait for an
    operator before they start. ``None`` → no gate. The first stage is refused: it starts when
    the rollout does (``start_at`` schedules that).

    Raises:
        ValueError: not a list of numbers, or a percent that is no later stage's.
    """
    if data is None:
        return ()
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"approve_before must be a list of stage percents, got {data!r}")
    later = {s.percent for s in stages[1:]} | {PROMOTION_PERCENT}
    gates = []
    for i, value in enumerate(data):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"approve_before[{i}] must be a number, got {value!r}")
        if value not in later:
            first = f"; {stages[0].percent:g}% is the first stage, which starts with the rollout" \
                if value == stages[0].percent else ""
            raise ValueError(f"approve_before[{i}]: {value:g}% is not a later stage's percent (one of "
                             f"{', '.join(f'{p:g}' for p in sorted(later))}){first}")
        gates.append(float(value))
    return tuple(sorted(set(gates)))
