"""What one guard concluded on one slice (:class:`Check`), and the phrases every check shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rollout_server.analysis.spec import Guard
from rollout_server.analysis.verdict import Outcome


@dataclass(frozen=True)
class Check:
    """Outcome of one guard on one slice; ``enough`` is False when it lacked samples."""

    outcome: Outcome
    reason: str
    stats: dict[str, Any] = field(default_factory=dict)
    enough: bool = True


def pct(value: float) -> str:
    return f"{100 * value:.3g}%"


def too_few(what: str, canary: int, stable: int | None, need: int, stats: dict[str, Any]) -> Check:
    have = f"canary {canary:,}" + ("" if stable is None else f", stable {stable:,}")
    each = "" if stable is None else " in each arm"
    return Check(Outcome.INCONCLUSIVE, f"too few {what}: {have} (need {need:,}{each})", stats, enough=False)


def within(guard: Guard, head: str, text: str, p_within: Callable[[], float],
           stats: dict[str, Any]) -> Check:
    """A limit whose point estimate is within it: ``pass``; with ``guard.pass_alpha``, only once
    the one-sided test of "the canary is within the limit" gives p < pass_alpha (``p_within``),
    else ``inconclusive`` (hold and gather more)."""
    if guard.pass_alpha is None:
        return Check(Outcome.PASS, f"{head}: {text}", stats)
    p = p_within()
    stats.update(p_within=p, pass_alpha=guard.pass_alpha)
    if p < guard.pass_alpha:
        return Check(Outcome.PASS, f"{head}: {text}, significantly (p = {p:.2g} < {guard.pass_alpha:g})",
                     stats)
    return Check(Outcome.INCONCLUSIVE, f"{head}: {text} but not significantly yet "
                                       f"(p = {p:.2g}, pass_alpha = {guard.pass_alpha:g})", stats)


def ms(seconds: float) -> str:
    """A latency in ms with three significant digits (0.132 ms, 4.61 ms, 1.2e+03 ms)."""
    return f"{1000 * seconds:.3g} ms"
