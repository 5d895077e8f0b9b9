"""``assess``: one verdict per guard for one analysis window, pooled and per device class. Pure.

Usage::

    verdicts = assess(spec, measurements)          # tuple of Verdict, one per guard
    decision = decide(state, verdicts, now, canary_samples=measurements.canary.inferences)
"""

from __future__ import annotations

from typing import Any

from rollout_server.analysis.guards import CHECKS, Check
from rollout_server.analysis.spec import Guard, GuardSpec, Mode
from rollout_server.analysis.stats import look_alpha
from rollout_server.analysis.verdict import Outcome, Verdict, jsonable
from rollout_server.analysis.window import Measurements

POOLED = "pooled"


def tests_per_look(spec: GuardSpec, measurements: Measurements) -> int:
    """Tests made at this look: every guard on the pooled data and on each device class."""
    return len(spec.guards) * (1 + len(measurements.classes))


def assess(spec: GuardSpec, measurements: Measurements) -> tuple[Verdict, ...]:
    """Verdicts of every guard of ``spec`` on ``measurements``, in the spec's order.

    Each test runs at ``look_alpha(spec.alpha, measurements.look, tests_per_look(...))`` so the
    chance of any false fail over the whole rollout stays within ``spec.alpha``.
    """
    problems = measurements.problems()
    if problems:
        return tuple(_error_verdict(guard, problems) for guard in spec.guards)
    alpha = look_alpha(spec.alpha, measurements.look, tests_per_look(spec, measurements))
    return tuple(assess_guard(guard, measurements, alpha) for guard in spec.guards)


def assess_guard(guard: Guard, measurements: Measurements, alpha: float) -> Verdict:
    """One guard's verdict at a given per-test level ``alpha``.

    The pooled comparison decides, except that a limit fails when any device class with
    enough samples fails on its own (the reason names the class). Classes below the minimum
    samples are skipped, so a small class never holds a rollout. Gains are judged pooled.
    Inconsistent data (negative counts, ``correct > labelled``, a histogram of the wrong
    length) give ``error``.
    """
    problems = measurements.problems()
    if problems:
        return _error_verdict(guard, problems)
    check = CHECKS[guard.metric]
    try:
        pooled = check(guard, *measurements.arms(None), alpha)
        by_class = {c: check(guard, *measurements.arms(c), alpha) for c in measurements.classes}
    except (ValueError, ZeroDivisionError, OverflowError) as exc:  # numbers we could not use
        return Verdict(
            Outcome.ERROR, f"{guard.name}: could not compute: {exc}", {"error": str(exc)}, guard.name
        )
    stats: dict[str, Any] = {
        "metric": guard.metric.value,
        "mode": guard.mode.value,
        "threshold": guard.threshold,
        "look": measurements.look,
        "alpha": alpha,
        POOLED: _slice_stats(pooled),
        "classes": {c: _slice_stats(k) for c, k in by_class.items()},
    }
    failing = [(c, k) for c, k in by_class.items() if k.outcome is Outcome.FAIL]
    if guard.mode is Mode.LIMIT and pooled.outcome is not Outcome.FAIL and failing:
        device_class, first = failing[0]
        others = [c for c, _ in failing[1:]]
        also = f" (also failing: {', '.join(others)})" if others else ""
        stats["failing_classes"] = [c for c, _ in failing]
        reason = f"{guard.name} failed in device class {device_class}: {first.reason}{also}"
        return Verdict(Outcome.FAIL, reason, jsonable(stats), guard.name)
    if pooled.outcome is Outcome.FAIL:
        stats["failing_classes"] = [c for c, _ in failing]
        also = f" (device classes failing too: {', '.join(stats['failing_classes'])})" if failing else ""
        return Verdict(
            Outcome.FAIL, f"{guard.name} failed pooled: {pooled.reason}{also}", jsonable(stats), guard.name
        )
    return Verdict(pooled.outcome, f"{guard.name}: {pooled.reason}", jsonable(stats), guard.name)


def _slice_stats(check: Check) -> dict[str, Any]:
    return {"outcome": check.outcome.value, "enough_samples": check.enough, **check.stats}


def _error_verdict(guard: Guard, problems: list[str]) -> Verdict:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return Verdict(
        Outcome.ERROR, f"{guard.name}: inconsistent data: {shown}", {"problems": problems}, guard.name
    )
