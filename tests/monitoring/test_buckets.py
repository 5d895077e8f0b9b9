from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest

from edgeship.contract.latency import (
    BUCKET_COUNT,
    LATENCY_BUCKETS_SECONDS,
    METRIC_BUCKETS_SECONDS,
    bucket_index,
    histogram,
    metric_counts_from_sketch,
    metric_counts_from_v1,
    quantile,
)
from edgeship.contract.sketch import LatencySketch


def test_bucket_edges_follow_le_semantics():
    assert bucket_index(0.001) == 0 and bucket_index(0.0011) == 1
    assert bucket_index(10.0) == BUCKET_COUNT - 1
    assert LATENCY_BUCKETS_SECONDS[0] == 0.001 and LATENCY_BUCKETS_SECONDS[-1] == 2.5


def test_quantile_from_histogram_is_close_to_the_sample_quantile():
    rng = np.random.default_rng(1)
    latencies = rng.lognormal(mean=np.log(0.02), sigma=0.4, size=20_000)
    estimate = quantile(histogram(latencies), 0.95)
    truth = float(np.quantile(latencies, 0.95))
    assert estimate == pytest.approx(truth, rel=0.25)
    assert quantile([0] * BUCKET_COUNT, 0.5) is None
    with pytest.raises(ValueError):
        quantile([1, 2], 0.5)


def test_metric_bounds_span_100us_to_10s_at_most_10_percent_apart_with_every_v1_bound():
    bounds = METRIC_BUCKETS_SECONDS
    assert (bounds[0], bounds[-1], len(bounds)) == (0.0001, 10.0, 161)
    assert list(bounds) == sorted(set(bounds))
    assert max(b / a for a, b in pairwise(bounds)) <= 1.1 + 1e-12
    assert set(LATENCY_BUCKETS_SECONDS) <= set(bounds)


def test_v1_counts_land_at_their_upper_bound_on_the_metric_bounds():
    v1 = list(range(1, BUCKET_COUNT + 1))
    counts = metric_counts_from_v1(v1)
    assert len(counts) == len(METRIC_BUCKETS_SECONDS) + 1 and sum(counts) == sum(v1)
    bounds = (*METRIC_BUCKETS_SECONDS, math.inf)
    at = {bound: count for bound, count in zip(bounds, counts, strict=True) if count}
    assert at == dict(zip((*LATENCY_BUCKETS_SECONDS, math.inf), v1, strict=True))
    with pytest.raises(ValueError):
        metric_counts_from_v1([1, 2])


def test_sketch_counts_land_within_a_bucket_of_the_latency():
    sketch = LatencySketch()
    for seconds in (0.00005, 0.00021, 0.0031, 0.047, 1.95, 50.0):  # none within 1.1% of a bound
        sketch.add(seconds)
    counts = metric_counts_from_sketch(sketch.counts)
    assert sum(counts) == 6
    landed = [i for i, count in enumerate(counts) for _ in range(count)]
    bounds = (*METRIC_BUCKETS_SECONDS, math.inf)
    assert [bounds[i] for i in landed] == [0.0001, 0.00022, 0.00325, 0.048, 2.0, math.inf]
