"""Guards on hand-computable cases: each metric, per-class fails, inconsistent data, the primitives."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeship.contract.latency import BUCKET_COUNT
from rollout_server.analysis import (
    ArmWindow,
    Guard,
    GuardSpec,
    Measurements,
    Metric,
    Mode,
    Outcome,
    assess,
    assess_guard,
    look_alpha,
    worst,
)
from rollout_server.analysis.arm_profile import ArmProfile
from rollout_server.analysis.latency import latencies_above, quantile_seconds
from rollout_server.analysis.stats import binomial_above, binomial_below, count_above, excess_test

ALPHA = 0.01


def errors_window(errors: int, inferences: int) -> ArmWindow:
    return ArmWindow(inferences=inferences, errors={"runtime_error": errors})


def labelled(correct: int, total: int) -> ArmWindow:
    return ArmWindow(inferences=total, labelled_samples=total, labelled_correct=correct)


def latency_window(median_seconds: float, n: int = 100_000) -> ArmWindow:
    probabilities = ArmProfile(latency_median_seconds=median_seconds).bucket_probabilities()
    counts = tuple(round(float(p) * n) for p in probabilities)
    return ArmWindow(inferences=sum(counts), latency_counts=counts)


def run(guard: Guard, stable: ArmWindow, canary: ArmWindow, alpha: float = ALPHA) -> Outcome:
    return assess_guard(guard, Measurements(stable, canary), alpha).outcome


# -- primitives -------------------------------------------------------------------------------


def test_look_alpha_spends_alpha_over_any_number_of_looks():
    assert look_alpha(0.05, 1) == pytest.approx(0.025)
    assert look_alpha(0.05, 2, tests=2) == pytest.approx(0.05 / 12)
    assert sum(look_alpha(0.05, k) for k in range(1, 100_000)) < 0.05
    with pytest.raises(ValueError):
        look_alpha(0.05, 0)


def test_excess_test_is_the_agresti_caffo_statistic():
    z, p = excess_test(20, 1000, 10, 1000)
    pa, pb = 21 / 1002, 11 / 1002
    expected = (pa - pb) / math.sqrt(pa * (1 - pa) / 1002 + pb * (1 - pb) / 1002)
    assert z == pytest.approx(expected) and z == pytest.approx(1.7835, abs=1e-3)
    assert p == pytest.approx(0.5 * math.erfc(expected / math.sqrt(2)))
    z_margin, _ = excess_test(20, 1000, 10, 1000, scale=1.0, margin=0.01)
    assert z_margin < 0  # 2% is not above 1% + 1 point


def test_binomial_tails_are_exact():
    assert binomial_above(1, 10, 0.1) == pytest.approx(1 - 0.9**10)
    assert binomial_below(0, 10, 0.1) == pytest.approx(0.9**10)
    assert binomial_above(0, 10, 0.1) == 1.0 and binomial_below(10, 10, 0.1) == 1.0


def test_count_above_interpolates_linearly_inside_the_bucket():
    counts = [0] * BUCKET_COUNT
    counts[7] = 100  # the (0.05, 0.075] bucket
    counts[-1] = 7  # +Inf: always above
    assert count_above(counts, 0.0625) == pytest.approx(57)
    assert count_above(counts, 0.01) == pytest.approx(107)


def test_smooth_quantile_recovers_a_lognormal_p95_across_a_wide_bucket():
    # p95 of LogNormal(median m, sigma 0.5) is m·e^(0.5·1.645); 0.06 puts it inside (0.1, 0.25].
    for median in (0.02, 0.04, 0.06, 0.1):
        window = latency_window(median, n=1_000_000)
        assert quantile_seconds(window.latency_counts, 0.95) == pytest.approx(
            median * math.exp(0.5 * 1.6449), rel=0.03
        )
        p95 = quantile_seconds(window.latency_counts, 0.95)
        assert latencies_above(window.latency_counts, p95) == pytest.approx(50_000, rel=0.01)


def test_outcomes_are_ordered_and_no_data_is_not_a_pass():
    assert worst([Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE]) is Outcome.FAIL
    assert worst([Outcome.PASS, Outcome.ERROR, Outcome.INCONCLUSIVE]) is Outcome.ERROR
    assert worst([]) is Outcome.INCONCLUSIVE


# -- error rate ------------------------------------------------------------------------------------


def test_error_rate_guard():
    guard = Guard(Metric.ERROR_RATE)  # limit = stable × 1.1 + 0.1 point, cap 5%
    stable = errors_window(100, 10_000)
    assert run(guard, stable, errors_window(100, 10_000)) is Outcome.PASS
    assert run(guard, stable, errors_window(300, 10_000)) is Outcome.FAIL
    assert (
        run(guard, stable, errors_window(14, 1_000)) is Outcome.INCONCLUSIVE
    )  # 1.4% > 1.2%, not significant
    assert run(guard, stable, errors_window(100, 500)) is Outcome.INCONCLUSIVE  # too few inferences


def devices_window(per_device: list[tuple[int, int]]) -> ArmWindow:
    """An arm from (errors, inferences) per device, with the per-device sums the server adds."""
    return ArmWindow(
        inferences=sum(n for _, n in per_device), errors={"runtime_error": sum(x for x, _ in per_device)},
        error_devices=len(per_device), device_errors_sq=sum(x * x for x, _ in per_device),
        device_errors_inferences=sum(x * n for x, n in per_device),
        device_inferences_sq=sum(n * n for _, n in per_device),
    )


def test_the_design_effect_is_one_for_even_errors_and_large_for_clustered_ones():
    even = devices_window([(1, 100)] * 100)  # 1% everywhere: less spread than binomial
    assert even.error_design_effect() == 1.0
    clustered = devices_window([(50, 100)] * 2 + [(0, 100)] * 98)  # same 1%, on two devices
    assert clustered.error_design_effect() > 30
    assert errors_window(100, 10_000).error_design_effect() == 1.0  # per-device sums unknown
    assert devices_window([(5, 100)]).error_design_effect() == 1.0  # one device: not estimable
    # the sums add over disjoint devices (device classes pool into the arm)
    a, b = devices_window([(3, 100), (0, 50)]), devices_window([(9, 80)])
    assert (a + b).error_design_effect() == devices_window([(3, 100), (0, 50), (9, 80)]).error_design_effect()


def test_errors_clustered_on_a_few_canary_devices_are_not_a_significant_regression():
    """3 of 100 canary devices fail 20% of the time, the rest never: 0.6% overall would be
    'significantly' above stable's 0.3% if every inference were independent; it is one draw
    of which devices got unlucky, so the guard holds instead of rolling back."""
    guard = Guard(Metric.ERROR_RATE)
    stable = devices_window([(3, 1_000)] * 900)
    clustered = devices_window([(200, 1_000)] * 3 + [(0, 1_000)] * 97)
    independent = ArmWindow(inferences=clustered.inferences, errors=clustered.errors)
    assert run(guard, stable, independent) is Outcome.FAIL
    verdict = assess_guard(guard, Measurements(stable, clustered), ALPHA)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "errors cluster on devices" in verdict.reason
    assert verdict.stats["pooled"]["canary_design_effect"] > 10
    # a regression on every canary device is still caught with clustering accounted for
    everywhere = devices_window([(12, 1_000)] * 100)
    assert run(guard, stable, everywhere) is Outcome.FAIL


def test_error_rate_cap_fails_even_when_stable_is_as_bad():
    verdict = assess_guard(
        Guard(Metric.ERROR_RATE), Measurements(errors_window(800, 10_000), errors_window(800, 10_000)), ALPHA
    )
    assert verdict.outcome is Outcome.FAIL and "cap" in verdict.reason


def test_error_rate_verdict_has_the_numbers_and_json_stats():
    verdict = assess_guard(
        Guard(Metric.ERROR_RATE), Measurements(errors_window(100, 10_000), errors_window(300, 10_000)), ALPHA
    )
    assert "3%" in verdict.reason and "300/10,000" in verdict.reason and "1%" in verdict.reason
    stats = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))["stats"]
    assert stats["pooled"]["canary_rate"] == pytest.approx(0.03)
    assert stats["pooled"]["stable_rate"] == pytest.approx(0.01)


# -- latency ---------------------------------------------------------------------------------------


def test_latency_limit_guard():
    guard = Guard(Metric.LATENCY)  # p95 ratio <= 1.2
    stable = latency_window(0.04)
    assert run(guard, stable, latency_window(0.04)) is Outcome.PASS
    assert run(guard, stable, latency_window(0.044)) is Outcome.PASS  # 1.1×
    assert run(guard, stable, latency_window(0.06)) is Outcome.FAIL  # 1.5×
    few = ArmWindow(
        inferences=100, latency_counts=tuple(c // 1000 for c in latency_window(0.06).latency_counts)
    )
    assert run(guard, stable, few) is Outcome.INCONCLUSIVE


def latency_devices(histograms: list[tuple[int, ...]]) -> ArmWindow:
    """An arm from per-device latency histograms, with the per-device sums the server adds."""
    counts = tuple(sum(column) for column in zip(*histograms, strict=True))
    samples = [sum(h) for h in histograms]
    above = [[sum(h[k + 1:]) for k in range(BUCKET_COUNT - 1)] for h in histograms]
    return ArmWindow(
        inferences=sum(samples), latency_counts=counts, latency_devices=len(histograms),
        device_latency_sq=sum(n * n for n in samples),
        device_above_sq=tuple(sum(a[k] ** 2 for a in above) for k in range(BUCKET_COUNT - 1)),
        device_above_samples=tuple(sum(a[k] * n for a, n in zip(above, samples, strict=True))
                                   for k in range(BUCKET_COUNT - 1)),
    )


def _histogram(median_seconds: float, n: int) -> tuple[int, ...]:
    probabilities = ArmProfile(latency_median_seconds=median_seconds).bucket_probabilities()
    return tuple(round(n * p) for p in probabilities)


def test_the_latency_design_effect_is_one_for_alike_devices_and_large_for_slow_ones():
    alike = latency_devices([_histogram(0.04, 1_000)] * 100)
    assert alike.latency_design_effect(0.1) == pytest.approx(1.0, abs=0.05)
    mixed = latency_devices([_histogram(0.1, 1_000)] * 10 + [_histogram(0.03, 1_000)] * 90)
    assert mixed.latency_design_effect(0.1) > 20
    assert latency_window(0.04).latency_design_effect(0.1) == 1.0  # per-device sums unknown
    # the sums add over disjoint devices (device classes pool into the arm), through JSON too
    a, b = latency_devices([_histogram(0.1, 500)]), latency_devices([_histogram(0.03, 800)] * 3)
    both = latency_devices([_histogram(0.1, 500)] + [_histogram(0.03, 800)] * 3)
    assert a + b == both
    assert ArmWindow.from_dict(json.loads(json.dumps(both.to_dict()))) == both
    assert not both.problems()
    assert ArmWindow(device_above_sq=(1, 2)).problems() == [
        f"device_above_sq has 2 values, expected {BUCKET_COUNT - 1} (or none)"]


def test_latency_on_a_few_slow_canary_devices_is_not_a_significant_regression():
    """The canary's devices happen to include slower hardware: its pooled p95 is over 1.2x
    stable's on identical models. Read as independent samples that is a 'significant'
    regression; it is one draw of which devices landed in the canary, so the guard holds."""
    guard = Guard(Metric.LATENCY)  # limit: p95 at most 1.2× stable
    stable = latency_devices([_histogram(0.04, 1_000)] * 900)
    slow_few = latency_devices([_histogram(0.12, 1_000)] * 8 + [_histogram(0.04, 1_000)] * 92)
    independent = ArmWindow(inferences=slow_few.inferences, latency_counts=slow_few.latency_counts)
    assert run(guard, stable, independent) is Outcome.FAIL
    verdict = assess_guard(guard, Measurements(stable, slow_few), ALPHA)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert verdict.stats["pooled"]["canary_design_effect"] > 5
    # slower on every canary device is still a failure with clustering accounted for
    everywhere = latency_devices([_histogram(0.06, 1_000)] * 100)
    assert run(guard, stable, everywhere) is Outcome.FAIL


@pytest.mark.parametrize(("stable_samples", "canary_samples"), [(2_000, 2_000), (600, 100_000)])
def test_a_canary_exactly_at_the_latency_limit_fails_at_most_alpha_of_the_time(
        stable_samples: int, canary_samples: int):
    """Stable's p95 is estimated too: with few stable latencies (a 50% stage, or a small
    stable class) taking it as exact failed a canary at exactly 1.2x in 7% (equal arms) and
    42% (600 stable latencies) of 400 draws at alpha 5%; both arms' noise counted, within 5%."""
    rng = np.random.default_rng(20_261_203)

    def drawn(median_seconds: float, n: int) -> ArmWindow:
        p = np.asarray(ArmProfile(latency_median_seconds=median_seconds).bucket_probabilities())
        return ArmWindow(inferences=n, latency_counts=tuple(int(c) for c in rng.multinomial(n, p / p.sum())))

    draws = 400
    fails = sum(assess_guard(Guard(Metric.LATENCY), Measurements(drawn(0.04, stable_samples),
                                                                 drawn(0.048, canary_samples)), 0.05
                             ).outcome is Outcome.FAIL for _ in range(draws))
    assert fails / draws <= 0.05


def test_latency_gain_guard_passes_only_a_significant_gain_and_never_fails():
    guard = Guard(Metric.LATENCY, Mode.GAIN, threshold=0.3)  # p95 at least 30% lower
    stable = latency_window(0.04)
    assert run(guard, stable, latency_window(0.024)) is Outcome.PASS  # 40% lower
    assert run(guard, stable, latency_window(0.04)) is Outcome.INCONCLUSIVE  # equal: hold
    assert run(guard, stable, latency_window(0.08)) is Outcome.INCONCLUSIVE  # slower: a gain never fails


# -- accuracy, load failures, agreement ----------------------------------------------------------


def test_accuracy_guard():
    limit = Guard(Metric.ACCURACY)  # drop < 0.5 point
    stable = labelled(9_000, 10_000)
    assert run(limit, stable, labelled(900, 1_000)) is Outcome.PASS
    assert run(limit, stable, labelled(850, 1_000)) is Outcome.FAIL  # 5 points down
    assert run(limit, stable, labelled(893, 1_000)) is Outcome.INCONCLUSIVE  # 0.7 point, not significant
    assert run(limit, stable, labelled(90, 100)) is Outcome.INCONCLUSIVE  # too few labelled
    gain = Guard(Metric.ACCURACY, Mode.GAIN)
    assert run(gain, stable, labelled(960, 1_000)) is Outcome.PASS
    assert run(gain, stable, labelled(900, 1_000)) is Outcome.INCONCLUSIVE


def labelled_devices(per_device: list[tuple[int, int]]) -> ArmWindow:
    """An arm from (wrong predictions, labelled samples) per device, with the per-device sums."""
    return ArmWindow(
        labelled_samples=sum(n for _, n in per_device), labelled_correct=sum(n - w for w, n in per_device),
        labelled_devices=len(per_device), device_wrong_sq=sum(w * w for w, _ in per_device),
        device_wrong_labelled=sum(w * n for w, n in per_device),
        device_labelled_sq=sum(n * n for _, n in per_device),
    )


def test_the_accuracy_design_effect_is_one_for_even_mistakes_and_large_for_clustered_ones():
    assert labelled_devices([(10, 100)] * 100).accuracy_design_effect() == 1.0
    assert labelled_devices([(50, 100)] * 20 + [(0, 100)] * 80).accuracy_design_effect() > 10
    assert labelled(9_000, 10_000).accuracy_design_effect() == 1.0  # per-device sums unknown
    # errors and wrong predictions are separate: clustered errors leave accuracy independent
    assert labelled_devices([(10, 100)] * 100).error_design_effect() == 1.0


def test_an_accuracy_drop_on_devices_with_harder_inputs_is_not_significant_alone():
    """Canary devices that happen to see harder inputs (a few get half their samples wrong)
    drop 3 points; as independent samples that would be a significant regression, but it is
    one draw of which devices joined the canary, so the guard holds instead of rolling back."""
    guard = Guard(Metric.ACCURACY)
    stable = labelled_devices([(10, 100)] * 900)
    harder = labelled_devices([(50, 100)] * 20 + [(4, 100)] * 80)  # 13.2% wrong overall, stable 10%
    independent = ArmWindow(labelled_samples=harder.labelled_samples,
                            labelled_correct=harder.labelled_correct)
    assert run(guard, stable, independent) is Outcome.FAIL
    verdict = assess_guard(guard, Measurements(stable, harder), ALPHA)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "wrong predictions cluster on devices" in verdict.reason
    assert verdict.stats["pooled"]["canary_design_effect"] > 3
    # a drop on every canary device is still a failure with clustering accounted for
    assert run(guard, stable, labelled_devices([(16, 100)] * 100)) is Outcome.FAIL


def test_load_failure_guard_needs_enough_devices():
    guard = Guard(Metric.LOAD_FAILURES)
    stable = ArmWindow(devices_reporting=1_000, devices_load_failed=2)
    assert run(guard, stable, ArmWindow(devices_reporting=100, devices_load_failed=0)) is Outcome.PASS
    assert run(guard, stable, ArmWindow(devices_reporting=100, devices_load_failed=10)) is Outcome.FAIL
    assert run(guard, stable, ArmWindow(devices_reporting=10, devices_load_failed=5)) is Outcome.INCONCLUSIVE


def test_shadow_agreement_guard():
    guard = Guard(Metric.AGREEMENT)  # >= 98%
    stable = ArmWindow()
    assert run(guard, stable, ArmWindow(shadow_samples=1_000, shadow_agreements=990)) is Outcome.PASS
    assert run(guard, stable, ArmWindow(shadow_samples=1_000, shadow_agreements=950)) is Outcome.FAIL
    assert run(guard, stable, ArmWindow(shadow_samples=100, shadow_agreements=100)) is Outcome.INCONCLUSIVE


# -- per class, errors, the whole spec ---------------------------------------------------------------


def test_a_class_that_fails_alone_fails_the_guard_and_is_named():
    good = errors_window(100, 10_000)
    measurements = Measurements.from_classes(
        {"rpi4": good, "ios": errors_window(30, 3_000)},
        {"rpi4": good, "ios": errors_window(150, 3_000)},  # ios canary at 5%, pooled only 1.9%
    )
    verdict = assess_guard(Guard(Metric.ERROR_RATE), measurements, ALPHA)
    assert verdict.outcome is Outcome.FAIL
    assert "ios" in verdict.reason and verdict.stats["failing_classes"] == ["ios"]


def test_a_small_class_is_skipped_not_held():
    good = errors_window(100, 10_000)
    measurements = Measurements.from_classes(
        {"rpi4": good, "ios": errors_window(1, 100)}, {"rpi4": good, "ios": errors_window(5, 100)}
    )
    assert assess_guard(Guard(Metric.ERROR_RATE), measurements, ALPHA).outcome is Outcome.PASS


@pytest.mark.parametrize(
    "bad",
    [
        ArmWindow(inferences=10, labelled_samples=5, labelled_correct=6),
        ArmWindow(inferences=-1),
        ArmWindow(inferences=10, latency_counts=(1, 2, 3)),
        ArmWindow(inferences=10, errors={"runtime_error": 11}),
        ArmWindow(inferences=10, errors={"cosmic_ray": 1}),
        ArmWindow(devices_reporting=1, devices_load_failed=2),
    ],
)
def test_inconsistent_data_is_an_error_verdict(bad: ArmWindow):
    verdicts = assess(GuardSpec.default(), Measurements(errors_window(100, 10_000), bad))
    assert {v.outcome for v in verdicts} == {Outcome.ERROR}
    assert "inconsistent" in verdicts[0].reason


def test_assess_returns_one_named_verdict_per_guard():
    window = errors_window(100, 10_000)
    verdicts = assess(GuardSpec.default(shadow=True), Measurements(window, window))
    assert [v.guard for v in verdicts] == ["error_rate", "latency", "accuracy", "load_failures", "agreement"]
    assert verdicts[0].outcome is Outcome.PASS
    assert verdicts[1].outcome is Outcome.INCONCLUSIVE  # no latency data is not a pass


def test_windows_add_up():
    a = ArmWindow(inferences=10, errors={"timeout": 1}, labelled_samples=4, labelled_correct=3)
    b = ArmWindow(inferences=5, errors={"timeout": 2, "other": 1}, devices_reporting=2)
    total = a + b
    assert total.inferences == 15 and dict(total.errors) == {"timeout": 3, "other": 1}
    assert total.labelled_correct == 3 and total.devices_reporting == 2
    assert ArmWindow.from_dict(total.to_dict()) == total
    with pytest.raises(ValueError, match="inferences"):
        ArmWindow.from_dict({"inferences": "many"})


# -- pass_alpha: a limit that passes only when shown within it -----------------------------------


@pytest.mark.parametrize(
    ("metric", "stable", "unsure", "shown"),
    [
        (Metric.ERROR_RATE, errors_window(1_000, 100_000), errors_window(10, 1_000),
         errors_window(1_000, 100_000)),
        (Metric.LATENCY, latency_window(0.04), latency_window(0.046, n=600), latency_window(0.044)),
        (Metric.ACCURACY, labelled(90_000, 100_000), labelled(900, 1_000), labelled(90_000, 100_000)),
        (Metric.LOAD_FAILURES, ArmWindow(devices_reporting=1_000, devices_load_failed=2),
         ArmWindow(devices_reporting=100), ArmWindow(devices_reporting=5_000, devices_load_failed=10)),
        (Metric.AGREEMENT, ArmWindow(), ArmWindow(shadow_samples=1_000, shadow_agreements=985),
         ArmWindow(shadow_samples=1_000, shadow_agreements=995)),
    ],
)
def test_with_pass_alpha_a_limit_passes_only_once_the_canary_is_shown_within_it(
        metric: Metric, stable: ArmWindow, unsure: ArmWindow, shown: ArmWindow):
    """Within the limit on its point estimate but on few samples: the default passes, with
    ``pass_alpha`` the guard holds (and says why); on many samples both pass."""
    strict = Guard(metric, pass_alpha=0.05)
    assert run(Guard(metric), stable, unsure) is Outcome.PASS
    verdict = assess_guard(strict, Measurements(stable, unsure), ALPHA)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "not significantly yet" in verdict.reason
    assert verdict.stats["pooled"]["p_within"] >= 0.05 and verdict.stats["pooled"]["pass_alpha"] == 0.05
    shown_verdict = assess_guard(strict, Measurements(stable, shown), ALPHA)
    assert shown_verdict.outcome is Outcome.PASS, shown_verdict.reason
    assert shown_verdict.stats["pooled"]["p_within"] < 0.05


def test_with_pass_alpha_a_slower_candidate_on_fast_canary_devices_is_held_not_passed():
    """Devices of mixed speeds, and the canary's hundred happen to be mostly fast ones: a
    candidate 1.3x slower on every device reads as within 1.2x stable's p95. On its point
    estimate the limit passes it; with ``pass_alpha`` it holds, since the design effect says
    how little a hundred devices show. A real 1.5x regression still fails either way."""
    speeds = (0.02, 0.04, 0.08)
    stable = latency_devices([_histogram(s, 1_000) for s in speeds for _ in range(300)])
    lucky = [_histogram(1.3 * s, 1_000) for s, k in zip(speeds, (45, 35, 20), strict=True) for _ in range(k)]
    canary = latency_devices(lucky)
    assert run(Guard(Metric.LATENCY), stable, canary) is Outcome.PASS
    verdict = assess_guard(Guard(Metric.LATENCY, pass_alpha=0.2), Measurements(stable, canary), ALPHA)
    assert verdict.outcome is Outcome.INCONCLUSIVE, verdict.reason
    pooled = verdict.stats["pooled"]
    assert 1.0 < pooled["ratio"] <= 1.2 and pooled["canary_design_effect"] > 5
    slow = latency_devices([_histogram(1.5 * s, 1_000) for s in speeds for _ in range(34)])
    assert run(Guard(Metric.LATENCY, pass_alpha=0.2), stable, slow) is Outcome.FAIL
