"""Quantiles and tail counts of latency histograms, interpolated smoothly between bucket bounds.

The shared buckets (``edgeship.contract.latency``) are up to 2.5× wide (0.1 → 0.25 s, 1 → 2.5 s).
Linear interpolation inside such a bucket, as Prometheus' ``histogram_quantile`` does, puts
a tail quantile too high as soon as it crosses into a wide bucket: a canary 1.15× slower
than stable can read as 1.35× and a 1.3× one as 1.1×, which a 1.2× guard cannot live with.
Here the empirical CDF at the bucket bounds is interpolated with a monotone cubic (PCHIP) in
``(log latency, logit F)`` coordinates, where a log-normal-like latency is nearly a straight
line, so quantiles between bounds follow the shape of the neighbouring buckets. Outside the
range of the bounds (the first and +Inf buckets) it falls back to the linear rule.
Both arms go through the same estimator, so identical models still compare as equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

from edgeship.contract.latency import BUCKET_COUNT, LATENCY_BUCKETS_SECONDS, quantile
from rollout_server.analysis.stats import count_above

_LOG_BOUNDS = np.log(np.asarray(LATENCY_BUCKETS_SECONDS))


def _logit(p: np.ndarray | float) -> np.ndarray | float:
    return np.log(p) - np.log1p(-p)


def _cdf_points(counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(log bound, logit F(bound))`` at every finite bound, or None for an empty histogram.

    ``F = (count at or below + 1/2) / (n + 1)`` keeps F inside (0, 1): an arm with few samples
    and none above 0.25 s still has a point there (slightly below 1) instead of losing it and
    falling back to the linear rule while the other arm, with more samples, does not.
    """
    if len(counts) != BUCKET_COUNT:
        raise ValueError(f"histogram needs {BUCKET_COUNT} counts, got {len(counts)}")
    total = float(sum(counts))
    if total <= 0:
        return None
    cdf = (np.cumsum(np.asarray(counts[:-1], dtype=float)) + 0.5) / (total + 1.0)
    return _LOG_BOUNDS, np.asarray(_logit(cdf))


def quantile_seconds(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a non-cumulative histogram (smooth interpolation); None when empty."""
    points = _cdf_points(counts)
    if points is None:
        return quantile(counts, q)
    x, y = points
    rising = np.concatenate([[True], np.diff(y) > 0])  # empty buckets: keep one bound of a flat run
    x, y = x[rising], y[rising]
    target = float(_logit(q))
    if len(y) < 2 or not y[0] <= target <= y[-1]:
        return quantile(counts, q)
    return float(math.exp(PchipInterpolator(y, x)(target)))


def latencies_above(counts: Sequence[int], threshold_seconds: float) -> float:
    """Estimated count of latencies above ``threshold_seconds`` (the same interpolation)."""
    points = _cdf_points(counts)
    if points is None or threshold_seconds <= 0:
        return count_above(counts, threshold_seconds)
    x, y = points
    where = math.log(threshold_seconds)
    if not x[0] <= where <= x[-1]:
        return count_above(counts, threshold_seconds)
    logit_f = float(PchipInterpolator(x, y)(where))
    return float(sum(counts)) / (1.0 + math.exp(logit_f))  # n × (1 - F)
