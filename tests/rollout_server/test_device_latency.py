"""Per-device latencies at sketch resolution: quantiles and tails within the stated error at
every scale and shape, merged like the samples, and the guard that reads them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeship.contract.latency import LATENCY_BUCKETS_SECONDS, histogram
from edgeship.contract.sketch import BASE, RELATIVE_ERROR, LatencySketch
from rollout_server.analysis import ArmWindow, Guard, Metric, Mode
from rollout_server.analysis.device_latency import DeviceLatencies, arm_latency, v1_counts
from rollout_server.analysis.guards import check_latency
from rollout_server.analysis.verdict import Outcome


def draw(shape: str, median: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Latencies of a named shape around ``median`` seconds."""
    if shape == "lognormal":
        return median * rng.lognormal(0.0, 0.5, n)
    if shape == "tight":
        return median * rng.lognormal(0.0, 0.05, n)
    if shape == "two_modes":
        slow = 2.5 * rng.lognormal(0, 0.1, n)
        return median * np.where(rng.random(n) < 0.7, rng.lognormal(0, 0.1, n), slow)
    if shape == "throttled":
        throttled = 3.0 * rng.lognormal(0, 0.05, n)
        return median * np.where(rng.random(n) < 0.9, rng.lognormal(0, 0.1, n), throttled)
    return median * rng.lognormal(0.0, 0.3, n) * (1.0 + (rng.random(n) < 0.05) * rng.pareto(1.5, n))


def arm(samples_per_device: list[np.ndarray]) -> DeviceLatencies:
    sketches = []
    for samples in samples_per_device:
        sketch = LatencySketch()
        sketch.add_all(samples.tolist())
        sketches.append(sketch.counts)
    return DeviceLatencies.from_sketches(sketches)


SHAPES = ("lognormal", "tight", "two_modes", "throttled", "heavy_tail")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shape=st.sampled_from(SHAPES), exponent=st.floats(-4.5, 0.5),
       q=st.sampled_from((0.5, 0.9, 0.95, 0.99)), seed=st.integers(0, 2**16), devices=st.integers(1, 8))
def test_quantiles_of_merged_devices_are_in_the_exact_quantiles_bucket(shape, exponent, q, seed, devices):
    """The interpolated reading lies in the bucket of the sample at that rank: within one
    bucket's width (2.2%) of it, at every scale (the sketch's own midpoint reading, within 1.1%,
    is tested in tests/contract/test_sketch.py)."""
    rng = np.random.default_rng(seed)
    per_device = [draw(shape, 10.0**exponent, 1500, rng) for _ in range(devices)]
    exact = float(np.quantile(np.concatenate(per_device), q, method="inverted_cdf"))
    read = arm(per_device).quantile(q)
    assert read == pytest.approx(exact, rel=BASE - 1.0)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(shape=st.sampled_from(SHAPES), exponent=st.floats(-4.5, 0.5), seed=st.integers(0, 2**16))
def test_the_tail_count_agrees_with_the_quantile_and_with_the_samples(shape, exponent, seed):
    samples = draw(shape, 10.0**exponent, 4000, np.random.default_rng(seed))
    latencies = arm([samples])
    p95 = latencies.quantile(0.95)
    assert latencies.count_above(p95) == pytest.approx(0.05 * len(samples), abs=1e-6 * len(samples))
    for cut in (np.quantile(samples, 0.5), np.quantile(samples, 0.9) * 1.1):
        # the exact counts at cuts a bucket either side bracket the reading
        wider = (samples > cut * (1 - RELATIVE_ERROR) ** 2).sum()
        narrower = (samples > cut * (1 + RELATIVE_ERROR) ** 2).sum()
        assert narrower <= latencies.count_above(cut) <= wider, cut


def test_devices_add_as_their_rows_and_pool_as_their_samples():
    rng = np.random.default_rng(3)
    a, b = draw("lognormal", 0.003, 500, rng), draw("tight", 0.0004, 300, rng)
    both = arm([a]) + arm([b])
    assert both.devices == 2 and both.samples == 800
    pooled = LatencySketch()
    pooled.add_all(np.concatenate([a, b]).tolist())
    assert both.quantile(0.95) == arm([np.concatenate([a, b])]).quantile(0.95)
    assert DeviceLatencies.from_sketches(both.sketches()) == both
    assert DeviceLatencies() + both == both and both + DeviceLatencies() == both


def test_clustering_is_measured_at_the_cut():
    rng = np.random.default_rng(5)
    even = arm([draw("lognormal", 0.01, 400, rng) for _ in range(30)])
    slow_devices = arm([draw("lognormal", 0.01 * (3.0 if d % 5 == 0 else 1.0), 400, rng) for d in range(30)])
    cut = even.quantile(0.95)
    assert even.design_effect(cut) < 2.0
    assert slow_devices.design_effect(cut) > 10.0


def test_sketch_counts_map_onto_the_v1_histogram():
    samples = np.random.default_rng(9).lognormal(np.log(0.02), 1.2, 5000)
    distance = np.abs(np.log(samples[:, None] / np.asarray(LATENCY_BUCKETS_SECONDS))).min(axis=1)
    off_bounds = samples[distance > 0.03]  # a sketch bucket straddling a bound may land either side
    sketch = LatencySketch()
    sketch.add_all(off_bounds.tolist())
    assert v1_counts(sketch.counts) == tuple(histogram(off_bounds.tolist()))


def test_an_arm_of_upgraded_and_older_devices_says_what_only_v1_knows():
    sketch = LatencySketch()
    sketch.add_all([0.004] * 30)
    fields = arm_latency([(histogram([0.004] * 20), {}), ((0,) * 15, sketch.counts),
                          (histogram([0.03] * 5), sketch.counts)])
    window = ArmWindow(inferences=200, **fields)
    assert window.latency_samples == 85 and window.v1_latency_samples == 25
    assert window.device_latency.samples == 60 and not window.precise_latency
    assert window.latency_counts == tuple(np.add(np.add(histogram([0.004] * 80), histogram([0.03] * 5)), 0))
    assert window.latency_devices == 3
    upgraded = ((0,) * 15, sketch.counts)
    precise = ArmWindow(inferences=60, **arm_latency([upgraded, upgraded]))
    assert precise.precise_latency and precise.to_dict() and ArmWindow.from_dict(precise.to_dict()) == precise


def window(samples_per_device: list[np.ndarray], v1: bool = False) -> ArmWindow:
    """An arm of these devices' latencies, as schema-2 (or schema-1) reports would give it."""
    data = []
    for samples in samples_per_device:
        if v1:
            data.append((histogram(samples.tolist()), {}))
        else:
            sketch = LatencySketch()
            sketch.add_all(samples.tolist())
            data.append(((0,) * 15, sketch.counts))
    fields = arm_latency(data)
    return ArmWindow(inferences=sum(len(s) for s in samples_per_device), **fields)


LIMIT = Guard(Metric.LATENCY, Mode.LIMIT, threshold=1.2, min_samples=100)


@pytest.mark.parametrize("shape", SHAPES)
def test_at_the_limit_is_not_failed_and_above_it_is_with_many_samples(shape):
    """200,000 latencies per arm: the sketch's own 1.1% never decides at the limit, a 1.3×
    regression of any shape is caught, sub-millisecond included."""
    rng = np.random.default_rng(11)
    stable = window([draw(shape, 0.0002, 10_000, rng) for _ in range(20)])
    at_limit = window([1.2 * draw(shape, 0.0002, 10_000, rng) for _ in range(20)])
    regressed = window([1.3 * draw(shape, 0.0002, 10_000, rng) for _ in range(20)])
    assert check_latency(LIMIT, stable, at_limit, alpha=0.01).outcome is not Outcome.FAIL
    check = check_latency(LIMIT, stable, regressed, alpha=0.01)
    assert check.outcome is Outcome.FAIL, check.reason
    assert check.stats["ratio"] == pytest.approx(1.3, rel=0.03)


def test_an_arm_read_at_v1_resolution_says_so():
    rng = np.random.default_rng(13)
    stable = window([draw("lognormal", 0.0003, 2000, rng) for _ in range(10)], v1=True)
    canary = window([1.5 * draw("lognormal", 0.0003, 2000, rng) for _ in range(10)])
    check = check_latency(LIMIT, stable, canary, alpha=0.01)
    assert "v1 histogram resolution: 20,000 of 40,000" in check.reason
    assert check.stats["resolution"] == 0.0
