"""Per-device comparisons: bounded weights, each device's baseline, verdicts a handful of devices
cannot force (rollout_server/analysis/adjusted.py, device_checks.py, device_table.py), and what
they do to whole simulated rollouts on fleets whose devices differ."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rollout_server.analysis import ArmWindow, GuardSpec, Measurements, Phase, assess
from rollout_server.analysis.adjusted import (
    MIN_BASELINE_DEVICES,
    TRIM_SHARE,
    WEIGHT_CAP,
    arm_values,
    contrast,
    paired_values,
    robust_above,
    weight_cap,
)
from rollout_server.analysis.arm_profile import ArmProfile, with_latency_factor
from rollout_server.analysis.device_latency import DeviceLatencies
from rollout_server.analysis.device_table import DeviceTable
from rollout_server.analysis.simulate import Fleet, run_rollouts, summarize

SPEC = GuardSpec.default()
STABLE = ArmProfile()


def _arm(rng: np.random.Generator, devices: int, rate: float, factors: np.ndarray | None = None,
         trials: int = 200, base_trials: int = 4000) -> tuple[np.ndarray, ...]:
    """Per-device (events, trials, base_events, base_trials): each device's rate is ``rate``
    times its factor, before and during the stage (the baseline on the stable rate 1%)."""
    factors = np.ones(devices) if factors is None else factors
    n = np.full(devices, float(trials))
    n0 = np.full(devices, float(base_trials))
    x = rng.binomial(trials, np.clip(rate * factors, 0, 1)).astype(float)
    x0 = rng.binomial(base_trials, np.clip(0.01 * factors, 0, 1)).astype(float)
    return x, n, x0, n0


def test_a_device_weighs_at_most_three_median_devices():
    rng = np.random.default_rng(1)
    x, n, x0, n0 = _arm(rng, 100, 0.10)
    x, n = np.append(x, 0.0), np.append(n, 1e9)  # one device: a billion clean inferences
    x0, n0 = np.append(x0, 0.0), np.append(n0, 0.0)
    cap = weight_cap(n)
    assert cap == WEIGHT_CAP * 200
    arm = arm_values(x, n, x0, n0, cap)
    assert arm.weight.max() == cap
    pooled = x.sum() / n.sum()
    bounded = float(arm.weight @ arm.value / arm.weight.sum())
    assert pooled < 0.001 and bounded == pytest.approx(0.1 * 100 / 103, rel=0.1)


def test_the_baseline_cancels_which_devices_landed_in_the_canary():
    """One clumpy fleet (device error factors Gamma, variance 1), split at random 100 times into
    a 10% canary and the rest, both on the same model: raw, the canary's rate minus stable's
    swings with which devices it got; adjusted by each device's baseline, centred on 0 and much
    narrower (the 200 stage inferences per device keep their own binomial noise)."""
    rng = np.random.default_rng(2)
    devices = 2000
    x, n, x0, n0 = _arm(rng, devices, 0.01, rng.gamma(1.0, 1.0, devices))
    raw, adjusted = [], []
    for _ in range(100):
        canary = np.zeros(devices, dtype=bool)
        canary[rng.choice(devices, devices // 10, replace=False)] = True
        arms = [arm_values(x[m], n[m], x0[m], n0[m], math.inf) for m in (canary, ~canary)]
        test = contrast(*arms)
        raw.append(test.canary.raw - test.stable.raw)
        adjusted.append(test.difference)
    assert abs(np.mean(adjusted)) < 3 * np.std(adjusted) / 10
    assert np.std(adjusted) < 0.75 * np.std(raw)  # 0.59 at best: the stage's own binomial noise stays


def test_the_baseline_narrows_the_variance_on_a_clumpy_fleet():
    rng = np.random.default_rng(3)
    factors_c, factors_s = rng.gamma(1.0, 1.0, 200), rng.gamma(1.0, 1.0, 2000)
    with_base = contrast(arm_values(*_arm(rng, 200, 0.01, factors_c), cap=math.inf),
                         arm_values(*_arm(rng, 2000, 0.01, factors_s), cap=math.inf))
    x, n, _, _ = _arm(rng, 200, 0.01, factors_c)
    xs, ns, _, _ = _arm(rng, 2000, 0.01, factors_s)
    zeros_c, zeros_s = np.zeros(200), np.zeros(2000)
    without = contrast(arm_values(x, n, zeros_c, zeros_c, math.inf),
                       arm_values(xs, ns, zeros_s, zeros_s, math.inf))
    assert without.canary.slope == 0.0
    assert with_base.canary.variance < 0.6 * without.canary.variance


def test_too_few_baselines_mean_no_adjustment_and_missing_ones_take_the_centre():
    rng = np.random.default_rng(4)
    x, n, x0, n0 = _arm(rng, 50, 0.01, rng.uniform(0.5, 3.0, 50))
    n0[MIN_BASELINE_DEVICES - 1:] = 0  # only 9 devices have a baseline
    x0[MIN_BASELINE_DEVICES - 1:] = 0
    arm = arm_values(x, n, x0, n0, math.inf)
    assert np.isnan(arm.baseline).sum() == 50 - (MIN_BASELINE_DEVICES - 1)
    test = contrast(arm, arm)
    assert test.canary.slope == 0.0 and test.canary.mean == test.canary.raw


def test_no_events_anywhere_still_has_a_variance():
    zeros, n = np.zeros(20), np.full(20, 100.0)
    test = contrast(arm_values(zeros, n, zeros, n, math.inf), arm_values(zeros, n, zeros, n, math.inf),
                    1.1, 0.001)
    assert test.canary.variance > 0 and math.isfinite(test.z) and test.p_above > 0.5


def test_forty_broken_devices_in_a_thousand_do_not_carry_a_verdict():
    """40 canary devices fail every inference: the canary's error rate is ~5% against stable's
    1%, significant; without its 5% of devices most against it, it is not."""
    rng = np.random.default_rng(5)
    x, n, x0, n0 = _arm(rng, 1000, 0.01)
    x[:40] = n[:40]
    canary, stable = arm_values(x, n, x0, n0, math.inf), arm_values(*_arm(rng, 9000, 0.01), cap=math.inf)
    full, robust = contrast(canary, stable, 1.1, 0.001), robust_above(canary, stable, 1.1, 0.001)
    assert full.p_above < 1e-6
    assert robust.trimmed == math.ceil(TRIM_SHARE * 1000) and robust.difference < 0
    # a regression on every device survives the trimming
    everywhere = arm_values(*_arm(rng, 1000, 0.02), cap=math.inf)
    assert robust_above(everywhere, stable, 1.1, 0.001).p_above < 1e-6


def test_a_few_devices_with_extreme_histories_do_not_turn_the_adjustment_off():
    """On a clumpy fleet the slope on the baseline is ~1; 20 canary devices whose history says
    every inference failed (x = 1) would drag it towards 0 (and the adjustment with it). Clipped
    to the 1st-99th percentile of all devices' baselines, they are ordinary slow devices."""
    rng = np.random.default_rng(6)
    canary = _arm(rng, 400, 0.01, rng.gamma(1.0, 1.0, 400))
    stable = _arm(rng, 3600, 0.01, rng.gamma(1.0, 1.0, 3600))
    x0 = canary[2].copy()
    x0[:20] = canary[3][:20]  # every baseline inference failed
    poisoned = (canary[0], canary[1], x0, canary[3])
    raw = contrast(arm_values(*poisoned, cap=math.inf), arm_values(*stable, cap=math.inf))
    arm_c, arm_s, _ = paired_values(poisoned, stable)
    clipped = contrast(arm_c, arm_s)
    assert raw.canary.slope < 0.3 < 0.8 < clipped.canary.slope
    assert np.nanmax(arm_c.baseline) < 0.1


# -- the table and the guards --------------------------------------------------------------------

def _table(devices: int, rate: float, seed: int, latency: bool = True) -> DeviceTable:
    rng = np.random.default_rng(seed)
    x, n, x0, n0 = _arm(rng, devices, rate)
    lab = np.full(devices, 40.0)
    wrong = rng.binomial(40, 0.1, devices).astype(float)
    counts = rng.multinomial(200, [0.25, 0.5, 0.25], devices) if latency else None
    matrix = DeviceLatencies(-200, counts) if latency else None
    return DeviceTable.from_rows(inferences=n, errors=x, labelled=lab, wrong=wrong, base_inferences=n0,
                                 base_errors=x0, base_labelled=lab * 10, base_wrong=wrong * 10,
                                 latency=matrix, base_latency=matrix)


def _window(table: DeviceTable) -> ArmWindow:
    return ArmWindow(inferences=int(table.inferences.sum()),
                     errors={"runtime_error": int(table.errors.sum())},
                     labelled_samples=int(table.labelled.sum()),
                     labelled_correct=int(table.labelled.sum() - table.wrong.sum()), device_table=table)


def test_tables_stack_their_rows_and_latencies_as_devices_add():
    a, b = _table(3, 0.01, 1), _table(2, 0.01, 2, latency=False)
    both = a + b
    assert both.devices == 5 and both.latency is None  # an arm whose latencies are not all known
    c = a + _table(4, 0.01, 3)
    assert c.latency.devices == 7 and c.latency.samples == 7 * 200
    assert (c + DeviceTable()).devices == 7 and (DeviceTable() + c).latency is c.latency
    assert DeviceTable.from_dict(c.to_dict()).to_dict() == c.to_dict()
    window = _window(c)
    assert ArmWindow.from_dict(window.to_dict()).device_table.to_dict() == c.to_dict()


def test_a_table_with_impossible_numbers_is_an_error_verdict():
    bad = DeviceTable.from_rows(inferences=[10, 5], errors=[11, 0])
    assert any("more errors than inferences" in p for p in bad.problems())
    assert any("rows" in p for p in DeviceTable.from_rows(inferences=[1, 2], errors=[1]).problems())
    window = ArmWindow(inferences=15, errors={"runtime_error": 11}, device_table=bad)
    verdicts = assess(SPEC, Measurements.from_classes({"rpi4": window}, {"rpi4": window}))
    assert all(v.outcome.value == "error" for v in verdicts)
    with pytest.raises(ValueError, match="unknown device table"):
        DeviceTable.from_dict({"inference": []})


def test_the_guards_compare_device_by_device_when_the_tables_cover_the_arms():
    stable, canary = _window(_table(2000, 0.01, 1)), _window(_table(200, 0.03, 2))
    verdict = assess(GuardSpec.default(), Measurements.from_classes({"rpi4": stable}, {"rpi4": canary}))[0]
    assert verdict.outcome.value == "fail" and "per device, baseline-adjusted" in verdict.reason
    assert verdict.stats["pooled"]["per_device"] is True
    # a table that misses some of the arm's inferences is not used: the pooled test decides
    partial = ArmWindow(**{**_window(_table(200, 0.03, 2)).__dict__, "inferences": canary.inferences + 1})
    pooled = assess(GuardSpec.default(), Measurements.from_classes({"rpi4": stable}, {"rpi4": partial}))[0]
    assert "per device" not in pooled.reason and "per_device" not in pooled.stats["pooled"]


# -- whole rollouts ------------------------------------------------------------------------------

def test_on_a_fleet_of_mixed_speeds_a_1_3x_slower_candidate_is_rolled_back_not_promoted():
    """With the pooled tests 2 of 40 of these were promoted (test_simulation.py); each device's
    baseline takes the luck of which devices are canary out."""
    results = run_rollouts(20, SPEC, STABLE, with_latency_factor(STABLE, 1.3), seed=7,
                           fleet=Fleet(latency_dispersion=0.6), max_windows=40)
    summary = summarize(results)
    assert summary["promoted_rate"] == 0 and summary["rolled_back_rate"] >= 0.7


@pytest.mark.parametrize(("canary", "fleet"), [
    (ArmProfile(error_rate=0.02), Fleet(error_dispersion=1.0)),
    (ArmProfile(accuracy=0.85), Fleet(accuracy_dispersion=1.0)),
], ids=["errors-clumpy", "accuracy-harder-inputs"])
def test_regressions_on_fleets_whose_devices_differ_are_rolled_back(canary, fleet):
    summary = summarize(run_rollouts(20, SPEC, STABLE, canary, seed=17, fleet=fleet, max_windows=40))
    assert summary["rolled_back_rate"] >= 0.9 and summary["promoted_rate"] == 0


def test_without_baselines_the_comparison_is_still_per_device():
    result = run_rollouts(1, SPEC, STABLE, ArmProfile(error_rate=0.03), seed=3,
                          fleet=Fleet(baseline_windows=0))[0]
    assert result.phase is Phase.ROLLED_BACK
    assert "per device;" in result.reason and "baseline-adjusted" not in result.reason


@pytest.mark.parametrize(("mode", "canary", "never"), [
    ("errors", STABLE, Phase.ROLLED_BACK),
    ("slow", STABLE, Phase.ROLLED_BACK),
    ("clean_flood", ArmProfile(error_rate=0.03), Phase.PROMOTED),
    ("clean_flood", with_latency_factor(STABLE, 1.5), Phase.PROMOTED),
    ("poisoned_baseline", ArmProfile(error_rate=0.03), Phase.PROMOTED),
])
def test_twelve_hostile_devices_of_three_hundred_canary_do_not_decide(mode, canary, never):
    """3,000 devices, ~300 canary at 10%, 12 of them hostile (4%): an identical release is not
    rolled back, a bad one not promoted (the benchmark's hostile table does 40 of 1,000)."""
    fleet = Fleet(devices=3000, hostile_devices=12, hostile_mode=mode)
    results = run_rollouts(4, SPEC, STABLE, canary, seed=29, fleet=fleet, max_windows=16)
    assert not any(r.phase is never for r in results)
    if never is Phase.PROMOTED:
        assert all(r.phase is Phase.ROLLED_BACK for r in results)
