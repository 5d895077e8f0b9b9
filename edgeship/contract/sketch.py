"""A latency sketch: log-spaced buckets with the same small relative error at every scale.

A latency ``v`` seconds falls in bucket ``i = ceil(log2(v) * 2**SCHEMA)``, which covers
``(BASE**(i-1), BASE**i]`` with ``BASE = 2 ** 2**-SCHEMA``: the bucket layout of Prometheus
native histograms (schema 5), DDSketch's idea. A quantile is read as the point of its bucket
nearest in relative terms to both ends, ``2 * BASE**i / (BASE + 1)``, so it is within
:data:`RELATIVE_ERROR` (1.08%) of the sample at that rank, whether the model takes 3 µs or
3 s and whatever the shape of the distribution. Merging two sketches adds their counts, so a
fleet's quantile is as precise as one device's. Latencies are clamped to
[:data:`MIN_SECONDS`, :data:`MAX_SECONDS`]; only non-empty buckets are stored or sent.

Example:
    >>> sketch = LatencySketch()
    >>> for seconds in (0.0031, 0.0029, 0.0090):
    ...     sketch.add(seconds)
    >>> round(sketch.quantile(0.5) * 1000, 2)   # ms, within 1.08% of 3.1
    3.11
    >>> LatencySketch.from_wire(sketch.to_wire()) == sketch
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

#: resolution: 2**SCHEMA buckets per doubling (Prometheus native histograms' schema number).
SCHEMA = 5
BASE = 2.0 ** (2.0**-SCHEMA)
#: the largest relative distance between a quantile read from the sketch and the exact one.
RELATIVE_ERROR = (BASE - 1.0) / (BASE + 1.0)
#: latencies below (above) are counted as this bound.
MIN_SECONDS = 1e-6
MAX_SECONDS = 100.0

#: ``bucket_of(v) == ceil(log2(v) * INDEX_SCALE)`` inside (MIN_SECONDS, MAX_SECONDS): for hot
#: paths that inline it.
INDEX_SCALE = float(2**SCHEMA)
MIN_INDEX = math.ceil(math.log2(MIN_SECONDS) * INDEX_SCALE)
MAX_INDEX = math.ceil(math.log2(MAX_SECONDS) * INDEX_SCALE)
#: the most buckets a sketch can hold (and so the longest ``buckets`` list on the wire).
MAX_BUCKETS = MAX_INDEX - MIN_INDEX + 1


def bucket_of(seconds: float) -> int:
    """The index of the bucket ``seconds`` falls in (clamped to the sketch's range).

    Raises:
        ValueError: ``seconds`` is NaN.
    """
    if MIN_SECONDS < seconds < MAX_SECONDS:
        return math.ceil(math.log2(seconds) * INDEX_SCALE)
    if seconds >= MAX_SECONDS:
        return MAX_INDEX
    if seconds <= MIN_SECONDS:
        return MIN_INDEX
    raise ValueError(f"latency {seconds!r} is not a number")


def bucket_value(index: int) -> float:
    """The value a bucket stands for: within :data:`RELATIVE_ERROR` of anything in it."""
    return 2.0 * BASE**index / (BASE + 1.0)


def bucket_bounds(index: int) -> tuple[float, float]:
    """The bucket's (lower, upper] bounds in seconds."""
    return BASE ** (index - 1), BASE**index


class LatencySketch:
    """Counts of latencies per log-spaced bucket; mergeable, with a bounded relative error.

    Not thread-safe: the agent records into it under its window lock.
    """

    __slots__ = ("counts",)

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts) if counts else {}

    def add(self, seconds: float, count: int = 1) -> None:
        """Count ``count`` latencies of ``seconds`` (the hot path: one log and a dict update)."""
        if MIN_SECONDS < seconds < MAX_SECONDS:
            index = math.ceil(math.log2(seconds) * INDEX_SCALE)
        else:
            index = bucket_of(seconds)
        counts = self.counts
        counts[index] = counts.get(index, 0) + count

    def add_all(self, latencies_seconds: Iterable[float]) -> None:
        for seconds in latencies_seconds:
            self.add(seconds)

    def merge(self, other: LatencySketch) -> None:
        """Add ``other``'s counts to this sketch (the same as having recorded its latencies)."""
        counts = self.counts
        for index, count in other.counts.items():
            counts[index] = counts.get(index, 0) + count

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1), None when empty.

        It stands for the sample of rank ``floor(q * (total - 1))`` in sorted order and is
        within :data:`RELATIVE_ERROR` of it (of the clamped value, outside the range).
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q!r} is not in [0, 1]")
        total = self.total
        if total == 0:
            return None
        rank = math.floor(q * (total - 1))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen > rank:
                return bucket_value(index)
        raise AssertionError("unreachable: ranks are below the total")

    def share_above(self, seconds: float) -> float:
        """The share of latencies in buckets wholly above ``seconds`` (0 when empty)."""
        total = self.total
        if total == 0:
            return 0.0
        first_above = bucket_of(seconds) + 1
        return sum(c for i, c in self.counts.items() if i >= first_above) / total

    def to_wire(self) -> dict[str, Any]:
        """The JSON form of reports: ``{"schema": 5, "buckets": [[index, count], ...]}``,
        non-empty buckets only, by index."""
        return {"schema": SCHEMA, "buckets": [[i, c] for i, c in sorted(self.counts.items()) if c]}

    @classmethod
    def from_wire(cls, data: Any, max_total: int | None = None) -> LatencySketch:
        """Read :meth:`to_wire`'s form, checked field by field.

        Raises:
            ValueError: another schema, a malformed or repeated bucket, an index out of range,
                a negative count, or more than ``max_total`` latencies; the message says which.
        """
        if not isinstance(data, dict) or set(data) != {"schema", "buckets"}:
            raise ValueError("a latency sketch is an object with exactly 'schema' and 'buckets'")
        if data["schema"] != SCHEMA or isinstance(data["schema"], bool):
            raise ValueError(f"latency sketch schema must be {SCHEMA}, got {data['schema']!r}")
        buckets = data["buckets"]
        if not isinstance(buckets, list) or len(buckets) > MAX_BUCKETS:
            raise ValueError(f"latency sketch 'buckets' must be a list of at most {MAX_BUCKETS} pairs")
        counts: dict[int, int] = {}
        for pair in buckets:
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
                raise ValueError(f"latency sketch bucket {pair!r} is not a pair of integers")
            index, count = pair
            if not MIN_INDEX <= index <= MAX_INDEX:
                raise ValueError(f"latency sketch index {index} is outside [{MIN_INDEX}, {MAX_INDEX}]")
            if count < 0:
                raise ValueError(f"latency sketch bucket {index} has a negative count")
            if index in counts:
                raise ValueError(f"latency sketch bucket {index} appears twice")
            if count:
                counts[index] = count
        sketch = cls(counts)
        if max_total is not None and sketch.total > max_total:
            raise ValueError(f"latency sketch holds {sketch.total} latencies, more than {max_total}")
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencySketch):
            return NotImplemented
        return {i: c for i, c in self.counts.items() if c} == {i: c for i, c in other.counts.items() if c}

    def __repr__(self) -> str:
        return f"LatencySketch(total={self.total}, buckets={len(self.counts)})"
