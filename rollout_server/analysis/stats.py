"""Statistical primitives of the guards: look-corrected alpha, one-sided tests, histogram tails.

All pure and scalar; ``scipy.special`` gives the normal and binomial tails (microseconds per
call, so a simulator can run thousands of rollouts). Why these tests: docs/rollout-analysis.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.special import bdtr, bdtrc, ndtr

from edgeship.contract.latency import BUCKET_COUNT, LATENCY_BUCKETS_SECONDS


def look_alpha(alpha: float, look: int, tests: int = 1) -> float:
    """Significance level of one test at one look, so that a whole rollout stays within ``alpha``.

    The ``k``-th look spends ``alpha / (k (k + 1))``; these sum to ``alpha`` over any number of
    looks (1/2 + 1/6 + 1/12 + ... = 1), so checking stage-cumulative data every window, for as
    long as the rollout runs, keeps the chance of any false rejection within ``alpha`` by the
    union bound, whatever the correlation between looks. ``tests`` more splits it (Bonferroni)
    over the guards and comparisons (pooled + each device class) made at each look.

    Args:
        alpha: family-wise false-rejection probability for the whole rollout.
        look: 1-based analysis index.
        tests: tests made at each look.

    Returns:
        The per-test level, e.g. ``look_alpha(0.05, 1) == 0.025``, ``look_alpha(0.05, 2) == 0.05 / 6``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if look < 1 or tests < 1:
        raise ValueError(f"look and tests must be >= 1, got look={look!r}, tests={tests!r}")
    return alpha / (tests * look * (look + 1))


def excess_test(
    x_a: int, n_a: int, x_b: int, n_b: int, scale: float = 1.0, margin: float = 0.0
) -> tuple[float, float]:
    """One-sided test that proportion ``a`` exceeds ``scale × b + margin``.

    H0: ``p_a <= scale·p_b + margin``; H1: ``p_a > scale·p_b + margin``. Agresti–Caffo
    adjusted Wald statistic: each arm gets one extra success and one extra failure,
    ``p~ = (x + 1) / (n + 2)``, which keeps the test sensible with zero events and has close
    to nominal size for rates around 1% at the sample sizes we gate on.

    Returns:
        ``(z, p_value)``; the p-value is ``P(Z >= z)`` under the standard normal.
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError(f"both arms need samples, got n_a={n_a}, n_b={n_b}")
    pa = (x_a + 1) / (n_a + 2)
    pb = (x_b + 1) / (n_b + 2)
    se = math.sqrt(pa * (1 - pa) / (n_a + 2) + scale * scale * pb * (1 - pb) / (n_b + 2))
    z = (pa - scale * pb - margin) / se
    return z, float(ndtr(-z))


def binomial_above(x: int, n: int, p: float) -> float:
    """Exact ``P(X >= x)`` for ``X ~ Binomial(n, p)``: the p-value of "rate above ``p``"."""
    if x <= 0:
        return 1.0
    if x > n:
        return 0.0
    return float(bdtrc(x - 1, n, p))


def binomial_below(x: int, n: int, p: float) -> float:
    """Exact ``P(X <= x)`` for ``X ~ Binomial(n, p)``: the p-value of "rate below ``p``"."""
    if x < 0:
        return 0.0
    if x >= n:
        return 1.0
    return float(bdtr(x, n, p))


def count_above(counts: Sequence[int], threshold_seconds: float) -> float:
    """How many latencies in a non-cumulative histogram exceed ``threshold_seconds``.

    Linear inside the bucket holding the threshold, the same assumption as
    ``edgeship.contract.latency.quantile`` (and Prometheus' ``histogram_quantile``), so a canary
    whose interpolated p95 equals the threshold has 5% of its count above it. Everything in
    the +Inf bucket counts as above a finite threshold.
    """
    if len(counts) != BUCKET_COUNT:
        raise ValueError(f"histogram needs {BUCKET_COUNT} counts, got {len(counts)}")
    above = 0.0
    lower = 0.0
    for i, count in enumerate(counts):
        upper = LATENCY_BUCKETS_SECONDS[i] if i < len(LATENCY_BUCKETS_SECONDS) else math.inf
        if lower >= threshold_seconds:
            above += count
        elif upper > threshold_seconds:
            above += count if math.isinf(upper) else count * (upper - threshold_seconds) / (upper - lower)
        lower = upper
    return above


def rate(x: int, n: int) -> float | None:
    """``x / n``, or ``None`` without samples."""
    return x / n if n > 0 else None


def design_effect(devices: int, x: int, n: int, xx: float, xn: float, nn: float) -> float:
    """How much clustering of events on devices inflates the variance of the rate ``x / n``.

    ``devices`` devices hold ``x`` events in ``n`` trials; ``xx``, ``xn`` and ``nn`` are the sums
    over them of x_i², x_i·n_i and n_i². The cluster-robust (linearised ratio) variance of the
    rate, divided by the binomial variance the tests assume, floored at 1: 1 when events fall
    evenly, ``1 + (mean trials per device - 1) × intra-device correlation`` when some devices
    see many more than others. 1 when fewer than two devices' sums are known.
    """
    if devices < 2 or n <= 0:
        return 1.0
    rate = x / n
    spread = xx - 2 * rate * xn + rate * rate * nn  # sum over devices of (x_i - rate * n_i)²
    cluster = devices / (devices - 1) * max(spread, 0.0) / (n * n)
    p = (x + 1) / (n + 2)  # as the tests adjust it: an arm without events has no 0 / 0
    return max(1.0, cluster / (p * (1 - p) / n))
