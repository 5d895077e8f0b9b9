"""The latency sketch's promise: every quantile within 1.08% of the exact one, at any scale and
shape, also after merging sketches recorded apart; a strict wire form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeship.contract.sketch import (
    MAX_BUCKETS,
    MAX_SECONDS,
    MIN_SECONDS,
    RELATIVE_ERROR,
    LatencySketch,
    bucket_bounds,
    bucket_of,
)

latencies = st.lists(st.floats(min_value=MIN_SECONDS, max_value=MAX_SECONDS), min_size=1, max_size=400)
quantiles = st.floats(min_value=0.0, max_value=1.0)


def exact(values: list[float], q: float) -> float:
    return sorted(values)[math.floor(q * (len(values) - 1))]


def assert_close(read: float, true: float) -> None:
    assert abs(read - true) <= RELATIVE_ERROR * true * (1 + 1e-9), (read, true)


def test_the_stated_error_is_under_two_percent():
    assert 0.0107 < RELATIVE_ERROR < 0.0109


@settings(max_examples=300, deadline=None)
@given(latencies, quantiles)
def test_any_quantile_is_within_the_relative_error_of_the_exact_one(values, q):
    sketch = LatencySketch()
    sketch.add_all(values)
    assert_close(sketch.quantile(q), exact(values, q))


@settings(max_examples=200, deadline=None)
@given(st.lists(latencies, min_size=2, max_size=6), quantiles)
def test_merged_sketches_read_the_quantiles_of_all_their_samples(parts, q):
    merged = LatencySketch()
    for part in parts:
        sketch = LatencySketch()
        sketch.add_all(part)
        merged.merge(sketch)
    everything = [v for part in parts for v in part]
    assert merged.total == len(everything)
    assert_close(merged.quantile(q), exact(everything, q))


@pytest.mark.parametrize("median", [1e-5, 1e-4, 3e-3, 0.12, 4.0])
@pytest.mark.parametrize("shape", ["lognormal", "tight", "two modes", "throttled tail"])
def test_p50_p95_p99_hold_at_every_scale_and_shape(median, shape):
    rng = np.random.default_rng(7)
    n = 20_000
    if shape == "lognormal":
        values = median * rng.lognormal(0.0, 0.5, n)
    elif shape == "tight":
        values = median * rng.lognormal(0.0, 0.05, n)
    elif shape == "two modes":
        values = median * np.where(rng.random(n) < 0.7, 1.0, 2.5) * rng.lognormal(0.0, 0.03, n)
    else:
        values = median * np.where(rng.random(n) < 0.9, 1.0, 3.0) * rng.lognormal(0.0, 0.02, n)
    sketch = LatencySketch()
    sketch.add_all(values.tolist())
    for q in (0.5, 0.95, 0.99):
        assert_close(sketch.quantile(q), exact(values.tolist(), q))


def test_latencies_outside_the_range_count_at_its_bounds():
    sketch = LatencySketch()
    sketch.add_all([1e-9, 0.0, 1e4])
    assert_close(sketch.quantile(0.0), MIN_SECONDS)
    assert_close(sketch.quantile(1.0), MAX_SECONDS)
    with pytest.raises(ValueError, match="not a number"):
        sketch.add(float("nan"))


def test_a_bucket_holds_what_its_bounds_say():
    for seconds in (1.5e-6, 0.00031, 0.0042, 0.25, 7.0):
        low, high = bucket_bounds(bucket_of(seconds))
        assert low < seconds <= high * (1 + 1e-12)


def test_an_empty_sketch_has_no_quantile():
    assert LatencySketch().quantile(0.95) is None
    assert LatencySketch().share_above(0.01) == 0.0


def test_share_above_counts_buckets_wholly_above():
    sketch = LatencySketch()
    sketch.add_all([0.001] * 90 + [0.010] * 10)
    assert sketch.share_above(0.005) == pytest.approx(0.10)
    assert sketch.share_above(0.02) == 0.0


@given(latencies)
def test_the_wire_form_round_trips_and_lists_only_non_empty_buckets(values):
    sketch = LatencySketch()
    sketch.add_all(values)
    wire = sketch.to_wire()
    assert all(count > 0 for _, count in wire["buckets"])
    assert [i for i, _ in wire["buckets"]] == sorted(i for i, _ in wire["buckets"])
    assert LatencySketch.from_wire(wire) == sketch


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ({"schema": 4, "buckets": []}, "schema must be 5"),
        ({"schema": True, "buckets": []}, "schema must be 5"),
        ({"schema": 5}, "exactly 'schema' and 'buckets'"),
        ({"schema": 5, "buckets": [[0, 1]], "extra": 1}, "exactly 'schema' and 'buckets'"),
        ({"schema": 5, "buckets": [[0]]}, "not a pair"),
        ({"schema": 5, "buckets": [[0, 1.5]]}, "not a pair"),
        ({"schema": 5, "buckets": [[0, True]]}, "not a pair"),
        ({"schema": 5, "buckets": [[10**6, 1]]}, "outside"),
        ({"schema": 5, "buckets": [[0, -1]]}, "negative"),
        ({"schema": 5, "buckets": [[0, 1], [0, 2]]}, "twice"),
        ({"schema": 5, "buckets": [[i, 1] for i in range(MAX_BUCKETS + 1)]}, "at most"),
        ([], "exactly 'schema' and 'buckets'"),
    ],
)
def test_a_malformed_wire_form_is_refused_with_its_reason(wire, reason):
    with pytest.raises(ValueError, match=reason):
        LatencySketch.from_wire(wire)


def test_a_total_above_the_cap_is_refused():
    with pytest.raises(ValueError, match="more than 10"):
        LatencySketch.from_wire({"schema": 5, "buckets": [[0, 6], [1, 5]]}, max_total=10)
