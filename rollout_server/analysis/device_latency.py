"""One arm's latencies at sketch resolution, kept per device: quantiles, tails and clustering.

Reports of schema 2 carry a latency sketch (``edgeship.contract.sketch``: log buckets 2.2%
wide, the same at every scale). The server merges a stage's reports per device into one row of
a dense matrix (devices × buckets, from bucket ``offset``); an arm's latencies are the column
sums. Reading them:

* a quantile is interpolated log-linearly inside its bucket, and a tail count at a cut takes
  the same share of the bucket the cut falls in, so the two agree (reading the quantile ``q``
  and counting above it gives ``1 - q`` of the samples). The reading lies in the bucket of the
  sample at that rank (so within 2.2% of it, whatever the shape or scale), and the tail count
  between the exact counts one bucket either side of the cut;
* clustering (slow inferences on slow devices) is measured at the exact cut from the rows, not
  at the nearest fixed bound.

    arm = DeviceLatencies.from_sketches([{-270: 40, -269: 2}, {-268: 30}])
    arm.quantile(0.95), arm.count_above(0.0031), arm.design_effect(0.0031)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from edgeship.contract.latency import BUCKET_COUNT, LATENCY_BUCKETS_SECONDS
from edgeship.contract.sketch import BASE, MAX_INDEX, MIN_INDEX, SCHEMA
from rollout_server.analysis.stats import design_effect

_SCALE = float(2**SCHEMA)
_EMPTY = np.zeros((0, 0), dtype=np.int64)
#: the v1 bounds on the sketch's position axis
_V1_BOUNDS = np.log2(np.asarray(LATENCY_BUCKETS_SECONDS)) * _SCALE


def _position(seconds: float) -> float:
    """Where ``seconds`` falls on the bucket axis: bucket ``i`` spans positions ``(i - 1, i]``."""
    return min(max(math.log2(seconds) * _SCALE, MIN_INDEX - 1.0), float(MAX_INDEX))


@dataclass(frozen=True, eq=False)
class DeviceLatencies:
    """Per-device latency counts of one arm: ``counts[d, j]`` latencies of device ``d`` in sketch
    bucket ``offset + j``. Rows are devices with at least one latency; arms of disjoint device
    sets add (``a + b`` stacks the rows)."""

    offset: int = 0
    counts: np.ndarray = field(default_factory=lambda: _EMPTY)

    @classmethod
    def from_sketches(cls, sketches: Iterable[Mapping[int, int]]) -> DeviceLatencies:
        """One row per device from its merged sketch counts (bucket index → count)."""
        rows = [{i: c for i, c in s.items() if c} for s in sketches]
        rows = [r for r in rows if r]
        if not rows:
            return cls()
        low = min(min(r) for r in rows)
        high = max(max(r) for r in rows)
        counts = np.zeros((len(rows), high - low + 1), dtype=np.int64)
        for d, row in enumerate(rows):
            for index, count in row.items():
                counts[d, index - low] = count
        return cls(low, counts)

    def sketches(self) -> list[dict[int, int]]:
        """The rows back as sketch counts (the inverse of :meth:`from_sketches`)."""
        return [{self.offset + int(j): int(row[j]) for j in np.flatnonzero(row)} for row in self.counts]

    def __add__(self, other: DeviceLatencies) -> DeviceLatencies:
        if not isinstance(other, DeviceLatencies):
            return NotImplemented
        if other.devices == 0:
            return self
        if self.devices == 0:
            return other
        low = min(self.offset, other.offset)
        high = max(self.offset + self.counts.shape[1], other.offset + other.counts.shape[1])
        return DeviceLatencies(low, np.vstack([self._widened(low, high), other._widened(low, high)]))

    def _widened(self, low: int, high: int) -> np.ndarray:
        start = self.offset - low
        out = np.zeros((self.counts.shape[0], high - low), dtype=np.int64)
        out[:, start:start + self.counts.shape[1]] = self.counts
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeviceLatencies):
            return NotImplemented
        return self.sketches() == other.sketches()

    @cached_property
    def has_negative(self) -> bool:
        """Whether any count is negative (computed once: ``ArmWindow.problems`` asks at every guard)."""
        return bool((self.counts < 0).any())

    @property
    def devices(self) -> int:
        return int(self.counts.shape[0])

    @property
    def samples(self) -> int:
        return int(self.counts.sum())

    def pooled(self, weights: np.ndarray | None = None) -> np.ndarray:
        """The arm's counts per bucket (from ``offset``); with ``weights``, each device's row
        times its weight."""
        return self.counts.sum(axis=0) if weights is None else weights @ self.counts

    def quantile(self, q: float, weights: np.ndarray | None = None) -> float | None:
        """The ``q`` quantile (0..1) in seconds, log-linear inside its bucket; None when empty.
        ``weights`` (one per device) weigh each device's latencies."""
        pooled = self.pooled(weights)
        total = float(pooled.sum())
        if total <= 0:
            return None
        cumulative = np.cumsum(pooled)
        target = min(max(q, 0.0), 1.0) * total
        j = int(np.searchsorted(cumulative, target, side="left"))
        j = min(j, len(pooled) - 1)
        while pooled[j] == 0:  # q = 0 lands before the first sample: take the first non-empty bucket
            j += 1
        before = float(cumulative[j] - pooled[j])
        fraction = (target - before) / float(pooled[j])
        return float(BASE ** (self.offset + j - 1 + fraction))

    def above(self, seconds: float) -> np.ndarray:
        """Each device's count of latencies above ``seconds`` (the bucket the cut falls in
        counted by the share of it above the cut, on the log scale)."""
        if self.devices == 0:
            return np.zeros(0)
        position = _position(seconds) - self.offset  # the cut, on the column axis: column j spans (j-1, j]
        width = self.counts.shape[1]
        if position >= width - 1:
            return np.zeros(self.devices)
        if position < -1:
            return self.counts.sum(axis=1).astype(float)
        j = math.floor(position) + 1  # the column the cut falls in
        whole = self.counts[:, j + 1:].sum(axis=1).astype(float)
        return whole + self.counts[:, j] * (j - position)

    def count_above(self, seconds: float) -> float:
        """The arm's count of latencies above ``seconds`` (see :meth:`above`)."""
        return float(self.above(seconds).sum())

    def design_effect(self, seconds: float) -> float:
        """How much slow inferences clustering on some devices inflates the variance of the share
        above ``seconds`` (``rollout_server.analysis.stats.design_effect`` at the exact cut)."""
        if self.devices < 2:
            return 1.0
        above = self.above(seconds)
        samples = self.counts.sum(axis=1).astype(float)
        return design_effect(self.devices, round(float(above.sum())), int(samples.sum()),
                             float(above @ above), float(above @ samples), float(samples @ samples))

    def v1_counts(self) -> tuple[int, ...]:
        """The arm's latencies on the v1 histogram (``edgeship.contract.latency``): what a v1
        agent would have reported, for data mixed with v1 reports and for dashboards."""
        return v1_counts(dict(zip(range(self.offset, self.offset + len(self.pooled())),
                                  self.pooled().tolist(), strict=True)))


def v1_counts(sketch: Mapping[int, int]) -> tuple[int, ...]:
    """Sketch counts on the v1 histogram: each bucket goes where its representative value falls
    (within 1.1% of a bound, a bucket straddling it may land one side or the other)."""
    if not sketch:
        return (0,) * BUCKET_COUNT
    indices = np.fromiter(sketch.keys(), dtype=np.float64, count=len(sketch))
    counts = np.fromiter(sketch.values(), dtype=np.int64, count=len(sketch))
    where = np.searchsorted(_V1_BOUNDS, indices - 0.5, side="left")
    return tuple(int(c) for c in np.bincount(where, weights=counts, minlength=BUCKET_COUNT).astype(np.int64))


def merge_sketches(sketches: Sequence[Mapping[int, int]]) -> dict[int, int]:
    """Bucket-wise sum of sketch counts."""
    merged: dict[int, int] = {}
    for sketch in sketches:
        for index, count in sketch.items():
            merged[index] = merged.get(index, 0) + count
    return merged


def arm_latency(devices: Iterable[tuple[Sequence[int], Mapping[int, int]]]) -> dict[str, object]:
    """:class:`~rollout_server.analysis.window.ArmWindow`'s latency fields for one arm from its
    devices' stage data: per device, the v1 histogram of its schema-1 reports and the merged
    sketch of its schema-2 reports (a device that upgraded mid-stage has both).

    ``latency_counts`` and the per-bound clustering sums cover every latency on the v1
    histogram; ``device_latency`` holds the sketches, and ``v1_latency_samples`` says how many
    latencies only the v1 histogram knows.
    """
    coarse_rows, sketches, v1_only = [], [], 0
    for v1, sketch in devices:
        v1_only += sum(v1)
        coarse_rows.append(np.add(np.asarray(v1, dtype=np.int64), v1_counts(sketch)))
        sketches.append(sketch)
    if not coarse_rows:
        return {}
    coarse = np.vstack(coarse_rows).astype(float)
    samples = coarse.sum(axis=1)
    above = np.cumsum(coarse[:, ::-1], axis=1)[:, ::-1][:, 1:]  # column k: latencies above bound k
    device_latency = DeviceLatencies.from_sketches(sketches)
    return {
        "latency_counts": tuple(int(c) for c in coarse.sum(axis=0)),
        "v1_latency_samples": int(v1_only),
        "device_latency": device_latency if device_latency.devices else None,
        "latency_devices": int((samples > 0).sum()),
        "device_latency_sq": round(float(samples @ samples)),
        "device_above_sq": tuple(round(float(v)) for v in (above * above).sum(axis=0)),
        "device_above_samples": tuple(round(float(v)) for v in (above * samples[:, None]).sum(axis=0)),
    }
