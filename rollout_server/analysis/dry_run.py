"""Dry-run guards: assessed every window beside the acting ones, never deciding anything. Pure.

Usage::

    acting, rehearsed = assess_split(spec, measurements)
    decision = decide(state, acting, now, ...)          # dry-run verdicts are only stored and shown

The acting guards are assessed as if the dry-run ones did not exist (same per-test alpha), so
adding a dry-run guard changes no decision, not even through the alpha split. Each dry-run guard
is assessed at the alpha it would get if it were turned on: what its verdict would have been.
"""

from __future__ import annotations

from rollout_server.analysis.assess import assess, assess_guard, tests_per_look
from rollout_server.analysis.spec import GuardSpec
from rollout_server.analysis.stats import look_alpha
from rollout_server.analysis.verdict import Verdict
from rollout_server.analysis.window import Measurements


def assess_split(spec: GuardSpec,
                 measurements: Measurements) -> tuple[tuple[Verdict, ...], tuple[Verdict, ...]]:
    """``(acting verdicts, dry-run verdicts)``, each in the spec's order."""
    acting = assess(spec.acting(), measurements)
    dry = [g for g in spec.guards if g.dry_run]
    if not dry:
        return acting, ()
    alpha = look_alpha(spec.alpha, measurements.look, tests_per_look(spec, measurements))
    return acting, tuple(assess_guard(g, measurements, alpha) for g in dry)
