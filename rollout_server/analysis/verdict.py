"""Outcomes and verdicts of an analysis: what the server stores and ``edgeship rollout status`` shows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Outcome(str, Enum):
    """Result of one guard in one window, best to worst (``worst()`` takes the last).

    ``inconclusive`` (too few samples, or a regression/gain not yet significant) holds the
    stage; ``error`` (the numbers could not be used) holds it too and, repeated, pauses the
    rollout; ``fail`` rolls back. "No data" is never ``pass``.
    """

    PASS = "pass"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"
    FAIL = "fail"

    @property
    def severity(self) -> int:
        """0 for pass up to 3 for fail."""
        return _ORDER.index(self)


_ORDER = (Outcome.PASS, Outcome.INCONCLUSIVE, Outcome.ERROR, Outcome.FAIL)


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    """The most severe outcome; ``inconclusive`` when there is none (no data is not a pass)."""
    return max(outcomes, key=lambda o: o.severity, default=Outcome.INCONCLUSIVE)


@dataclass(frozen=True)
class Verdict:
    """One guard's outcome in one window.

    Attributes:
        outcome: pass, inconclusive, error or fail.
        reason: a sentence with the numbers, for humans (status output, audit log).
        stats: JSON-able numbers behind it (per comparison: pooled and each device class).
        guard: name of the guard that produced it.
    """

    outcome: Outcome
    reason: str
    stats: Mapping[str, Any] = field(default_factory=dict)
    guard: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON storage (the inverse of :meth:`from_dict`)."""
        return {
            "guard": self.guard,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "stats": jsonable(self.stats),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Read back a stored verdict.

        Raises:
            ValueError: unknown outcome or missing reason.
        """
        try:
            outcome = Outcome(data["outcome"])
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"outcome must be one of {[o.value for o in Outcome]}, got {data.get('outcome')!r}"
            ) from exc
        reason = data.get("reason")
        if not isinstance(reason, str):
            raise ValueError(f"reason must be a string, got {reason!r}")
        return cls(outcome, reason, dict(data.get("stats") or {}), str(data.get("guard", "")))


def jsonable(value: Any) -> Any:
    """Recursively turn numpy scalars, tuples and non-finite floats into JSON-safe values."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number.is_integer() and hasattr(value, "dtype") and value.dtype.kind in "iu":
        return int(number)
    return number if math.isfinite(number) else None
