"""Sample ratio mismatch: do the canary's devices report as often as the stable ones?

The sticky bucketing assigns each active device an arm. When a smaller share of the canary's
devices reports than of the stable's (the candidate crashes the app before it reports, or
devices refuse it and go quiet), every comparison of the two arms is biased: the canary that
reports is the part that survived. So the devices assigned to each arm are split into those
that reported inferences in the stage and those that did not, and the 2×2 table is tested with
a chi-square test (one degree of freedom; Fisher's exact test when a cell expects fewer than
five devices), the check Statsig and Eppo run at every look; a mismatch pauses the rollout.
:data:`SRM_ALPHA` is spent over the rollout's looks as the guards spend theirs
(:func:`~rollout_server.analysis.stats.look_alpha`), so an A/A rollout that runs for many
windows is no likelier to trip it than a short one. Devices, not inferences, are the unit:
inferences per device vary so much that a binomial test on them would trip on any A/A
rollout. Testing reporting against the devices actually assigned (not the nominal percent)
keeps the bucketing's own luck out of the test.

Usage::

    check = sample_ratio(canary_assigned=100, canary_reporting=70, stable_assigned=900,
                         stable_reporting=880)
    check.mismatch, check.reason      # True, "sample ratio: 70 of 100 canary devices report ..."
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.special import chdtrc
from scipy.stats import fisher_exact

#: the chance over a whole rollout of a false trip: low, since a trip pauses the rollout.
SRM_ALPHA = 0.001
#: a stage is tested once it is this old: a canary device downloading and installing the
#: candidate (the agent's download deadline is 600 s) has not reported for the rollout yet.
SRM_GRACE_SECONDS = 600.0
#: below this many expected devices in a cell, Fisher's exact test replaces the chi-square.
MIN_EXPECTED_DEVICES = 5.0


@dataclass(frozen=True)
class SampleRatio:
    """The test's numbers; ``p_value`` is None when an arm or a column of the table is empty."""

    canary_assigned: int
    canary_reporting: int
    stable_assigned: int
    stable_reporting: int
    p_value: float | None
    alpha: float = SRM_ALPHA

    @property
    def mismatch(self) -> bool:
        return self.p_value is not None and self.p_value < self.alpha

    @property
    def reason(self) -> str:
        head = (f"sample ratio: {self.canary_reporting} of {self.canary_assigned} canary devices report, "
                f"{self.stable_reporting} of {self.stable_assigned} stable ones")
        if self.p_value is None:
            return f"{head} (nothing to test)"
        verdict = "mismatch" if self.mismatch else "as assigned"
        return f"{head}: {verdict} (chi-square p={self.p_value:.2g}, alpha {self.alpha:g})"


def sample_ratio(canary_assigned: int, canary_reporting: int, stable_assigned: int, stable_reporting: int,
                 alpha: float = SRM_ALPHA) -> SampleRatio:
    """Test whether the two arms' devices report at the same rate.

    Args:
        canary_assigned, stable_assigned: active devices the bucketing put in each arm.
        canary_reporting, stable_reporting: of those, devices that reported in the stage
            (clamped to the assigned counts: a device that reported is active).

    Raises:
        ValueError: a negative count.
    """
    counts = (canary_assigned, canary_reporting, stable_assigned, stable_reporting)
    if min(counts) < 0:
        raise ValueError(f"device counts must be >= 0, got {counts}")
    canary_assigned, stable_assigned = max(canary_assigned, canary_reporting), max(stable_assigned,
                                                                                   stable_reporting)
    table = ((canary_reporting, canary_assigned - canary_reporting),
             (stable_reporting, stable_assigned - stable_reporting))
    total = canary_assigned + stable_assigned
    columns = (canary_reporting + stable_reporting, total - canary_reporting - stable_reporting)
    rows = (canary_assigned, stable_assigned)
    if 0 in rows or 0 in columns:
        return SampleRatio(canary_assigned, canary_reporting, stable_assigned, stable_reporting, None, alpha)
    expected = [[r * c / total for c in columns] for r in rows]
    if min(min(row) for row in expected) < MIN_EXPECTED_DEVICES:
        p_value = float(fisher_exact(table).pvalue)
    else:
        chi2 = sum((table[i][j] - expected[i][j]) ** 2 / expected[i][j] for i in range(2) for j in range(2))
        p_value = float(chdtrc(1, chi2))
    return SampleRatio(canary_assigned, canary_reporting, stable_assigned, stable_reporting, p_value, alpha)
