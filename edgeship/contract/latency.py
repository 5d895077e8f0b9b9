"""Latency histogram buckets shared by the agent (which fills them), the server (which merges
and exports them) and the dashboards (which query them).

Upper bounds in seconds, 1 ms to 2.5 s, roughly 1-2.5-5 per decade; a final +Inf bucket is
implied. Changing them changes the wire format of reports: bump the report schema if you do.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
)
#: counts per bucket in reports: one per upper bound plus the +Inf bucket.
BUCKET_COUNT = len(LATENCY_BUCKETS_SECONDS) + 1


def bucket_index(latency_seconds: float) -> int:
    """Index of the bucket a latency falls in (``le`` semantics; last index is +Inf)."""
    return bisect_left(LATENCY_BUCKETS_SECONDS, latency_seconds)


def histogram(latencies_seconds: Sequence[float]) -> list[int]:
    """Non-cumulative counts per bucket for a batch of latencies."""
    counts = [0] * BUCKET_COUNT
    for value in latencies_seconds:
        counts[bucket_index(value)] += 1
    return counts


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a non-cumulative histogram, linearly interpolated inside
    the bucket as Prometheus' ``histogram_quantile`` does; ``None`` when empty.

    Values in the +Inf bucket report the highest finite bound, like Prometheus.
    """
    if len(counts) != BUCKET_COUNT:
        raise ValueError(f"histogram needs {BUCKET_COUNT} counts, got {len(counts)}")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    for i, count in enumerate(counts):
        if cumulative + count >= rank and count > 0:
            if i == len(LATENCY_BUCKETS_SECONDS):
                return LATENCY_BUCKETS_SECONDS[-1]
            lower = LATENCY_BUCKETS_SECONDS[i - 1] if i > 0 else 0.0
            upper = LATENCY_BUCKETS_SECONDS[i]
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return LATENCY_BUCKETS_SECONDS[-1]
