"""Latency histograms with fixed bounds: the v1 report histogram and the /metrics histogram.

* :data:`LATENCY_BUCKETS_SECONDS`: the 14 bounds (1 ms to 2.5 s, 1-2.5-5-7.5 per decade, then
  +Inf) of schema-1 reports. Agents of this release send a sketch instead
  (``edgeship.contract.sketch``); the server still accepts these from older agents.
* :data:`METRIC_BUCKETS_SECONDS`: the bounds of ``edgeship_inference_latency_seconds`` on
  /metrics, 100 µs to 10 s, at most 10% apart, so that Prometheus' ``histogram_quantile``
  (linear inside a bucket) is within 10% of the true quantile at every scale. They include
  every v1 bound, so a v1 count lands exactly in them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
)
#: counts per bucket in reports: one per upper bound plus the +Inf bucket.
BUCKET_COUNT = len(LATENCY_BUCKETS_SECONDS) + 1

#: significands of :data:`METRIC_BUCKETS_SECONDS` per decade: neighbours at most 10% apart.
_METRIC_SIGNIFICANDS = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.2, 2.4, 2.5, 2.75, 3.0,
                        3.25, 3.5, 3.75, 4.0, 4.4, 4.8, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5)
#: upper bounds of the /metrics latency histogram, seconds (a final +Inf bucket is implied).
METRIC_BUCKETS_SECONDS: tuple[float, ...] = (
    *(float(f"{m}e{e}") for e in range(-4, 1) for m in _METRIC_SIGNIFICANDS), 10.0,
)


def metric_counts_from_sketch(counts: dict[int, int]) -> list[int]:
    """Sketch counts (``edgeship.contract.sketch`` bucket index → count) on the /metrics
    histogram (``len(METRIC_BUCKETS_SECONDS) + 1`` non-cumulative counts): each sketch bucket
    goes where its representative value falls (it is 2.2% wide, so at most that off)."""
    from edgeship.contract.sketch import bucket_value  # sketch imports nothing from here

    out = [0] * (len(METRIC_BUCKETS_SECONDS) + 1)
    for index, count in counts.items():
        out[bisect_left(METRIC_BUCKETS_SECONDS, bucket_value(index))] += count
    return out


def metric_counts_from_v1(counts: Sequence[int]) -> list[int]:
    """A v1 histogram on the /metrics histogram: each count at its bucket's upper bound (which
    is a metric bound too), the +Inf count in +Inf. Exact at the v1 bounds; between them it
    reads high, as the v1 report could not say more."""
    if len(counts) != BUCKET_COUNT:
        raise ValueError(f"histogram needs {BUCKET_COUNT} counts, got {len(counts)}")
    out = [0] * (len(METRIC_BUCKETS_SECONDS) + 1)
    for bound, count in zip((*LATENCY_BUCKETS_SECONDS, math.inf), counts, strict=True):
        out[bisect_left(METRIC_BUCKETS_SECONDS, bound)] += count
    return out


def bucket_index(latency_seconds: float) -> int:
    """Index of the bucket a latency falls in (``le`` semantics; last index is +Inf)."""
    return bisect_left(LATENCY_BUCKETS_SECONDS, latency_seconds)


def histogram(latencies_seconds: Sequence[float]) -> list[int]:
    """Non-cumulative counts per bucket for a batch of latencies."""
    counts = [0] * BUCKET_COUNT
    for value in latencies_seconds:
        counts[bucket_index(value)] += 1
    return counts


def quantile(counts: Sequence[int], q: float,
             bounds: Sequence[float] = LATENCY_BUCKETS_SECONDS) -> float | None:
    """The ``q`` quantile (0..1) of a non-cumulative histogram on ``bounds`` (the v1 ones by
    default; :data:`METRIC_BUCKETS_SECONDS` for /metrics), linearly interpolated inside the
    bucket as Prometheus' ``histogram_quantile`` does; ``None`` when empty.

    Values in the +Inf bucket report the highest finite bound, like Prometheus.
    """
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"histogram needs {len(bounds) + 1} counts, got {len(counts)}")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    for i, count in enumerate(counts):
        if cumulative + count >= rank and count > 0:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            upper = bounds[i]
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return bounds[-1]
