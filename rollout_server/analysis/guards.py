"""One comparison of canary against stable per metric, for one slice (pooled or one device class).

Every check returns a :class:`Check`: ``inconclusive`` below the guard's minimum samples; for a
limit, ``fail`` only when the canary is *significantly* beyond it at the look-corrected level,
``inconclusive`` when the point estimate is beyond it but not yet significantly (hold, gather
more), ``pass`` when the point estimate is within it (with the guard's ``pass_alpha``: only when
it is significantly within it, see :func:`_within`); for a required gain, ``pass`` only when
the gain is significant, otherwise ``inconclusive``. Gains never fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scipy.special import stdtr

from edgeship.contract.latency import quantile
from edgeship.contract.sketch import RELATIVE_ERROR
from rollout_server.analysis.check import Check, ms, pct, too_few, within
from rollout_server.analysis.device_checks import (
    accuracy_by_device,
    device_tables,
    error_rate_by_device,
    latency_by_device,
    latency_tables,
)
from rollout_server.analysis.latency import latencies_above, quantile_seconds
from rollout_server.analysis.spec import Guard, Metric, Mode
from rollout_server.analysis.stats import binomial_above, binomial_below, excess_test
from rollout_server.analysis.verdict import Outcome
from rollout_server.analysis.window import ArmWindow


def _rate_limit(
    what: str, x_c: int, n_c: int, x_s: int, n_s: int, guard: Guard, alpha: float, stats: dict[str, Any]
) -> Check:
    """Shared by error rate and load failures: relative + absolute margin over stable, and a cap."""
    r_c, r_s = x_c / n_c, x_s / n_s
    scale = 1.0 + (guard.relative_margin or 0.0)
    margin = guard.threshold or 0.0
    cap = guard.cap if guard.cap is not None else 1.0
    bound = scale * r_s + margin
    z, p = excess_test(x_c, n_c, x_s, n_s, scale, margin)
    p_cap = binomial_above(x_c, n_c, cap)
    stats.update(
        canary_rate=r_c, stable_rate=r_s, limit=bound, cap=cap, z=z, p_value=p, p_cap=p_cap, alpha=alpha
    )
    head = f"canary {what} {pct(r_c)} ({x_c:,}/{n_c:,}) vs stable {pct(r_s)} ({x_s:,}/{n_s:,})"
    limit_text = f"{pct(bound)} (stable × {scale:g} + {pct(margin)})"
    if r_c > cap and p_cap < alpha:
        return Check(
            Outcome.FAIL,
            f"{head}: above the {pct(cap)} cap (exact binomial p = {p_cap:.2g} < α = {alpha:.2g})",
            stats,
        )
    if r_c > bound and p < alpha:
        return Check(
            Outcome.FAIL,
            f"{head}: significantly above the limit {limit_text} "
            f"(z = {z:.2f}, p = {p:.2g} < α = {alpha:.2g})",
            stats,
        )
    if r_c > bound or r_c > cap:
        return Check(
            Outcome.INCONCLUSIVE,
            f"{head}: above the limit {limit_text} or cap {pct(cap)} but not "
            f"significantly yet (p = {min(p, p_cap):.2g}, α = {alpha:.2g})",
            stats,
        )
    return within(guard, head, f"within the limit {limit_text} and cap {pct(cap)}",
                   lambda: max(1.0 - p, binomial_below(x_c, n_c, cap)), stats)


def check_error_rate(guard: Guard, stable: ArmWindow, canary: ArmWindow, alpha: float) -> Check:
    """Canary error rate against stable's, with margin and cap (one-sided tests)."""
    reasons = guard.reasons or ()
    n_c, n_s = canary.inferences, stable.inferences
    x_c, x_s = canary.error_count(reasons), stable.error_count(reasons)
    stats: dict[str, Any] = {
        "canary_errors": x_c,
        "canary_inferences": n_c,
        "stable_errors": x_s,
        "stable_inferences": n_s,
    }
    if min(n_c, n_s) < (guard.min_samples or 1):
        return too_few("inferences", n_c, n_s, guard.min_samples or 1, stats)
    tables = device_tables(stable, canary)
    if tables is not None:
        return error_rate_by_device(guard, tables, alpha, stats)
    deff_c, deff_s = canary.error_design_effect(), stable.error_design_effect()
    if max(deff_c, deff_s) <= 1.0:
        return _rate_limit("error rate", x_c, n_c, x_s, n_s, guard, alpha, stats)
    (ex_c, en_c), (ex_s, en_s) = _effective(x_c, n_c, deff_c), _effective(x_s, n_s, deff_s)
    stats.update(canary_design_effect=deff_c, stable_design_effect=deff_s)
    check = _rate_limit("error rate", ex_c, en_c, ex_s, en_s, guard, alpha, stats)
    return _noting_clusters(check, "errors", "inferences", (en_c, n_c), (en_s, n_s))


def _effective(x: int, n: int, deff: float) -> tuple[int, int]:
    """Events and trials of an arm whose events cluster on devices: the trials are not
    independent, so the arm counts as its effective sample size ``n / deff`` (Kish), with the
    same rate."""
    effective = max(1, round(n / deff))
    return round(x / n * effective), effective


def _noting_clusters(check: Check, events: str, trials: str, canary: tuple[int, int],
                     stable: tuple[int, int]) -> Check:
    note = (f" [{events} cluster on devices: effective {trials} canary {canary[0]:,} of {canary[1]:,}, "
            f"stable {stable[0]:,} of {stable[1]:,}]")
    return Check(check.outcome, check.reason + note, check.stats, check.enough)


def check_load_failures(guard: Guard, stable: ArmWindow, canary: ArmWindow, alpha: float) -> Check:
    """Share of devices whose model failed to load or its golden check, against stable's."""
    n_c, n_s = canary.devices_reporting, stable.devices_reporting
    x_c, x_s = canary.devices_load_failed, stable.devices_load_failed
    stats: dict[str, Any] = {
        "canary_failed_devices": x_c,
        "canary_devices": n_c,
        "stable_failed_devices": x_s,
        "stable_devices": n_s,
    }
    if min(n_c, n_s) < (guard.min_samples or 1):
        return too_few("devices", n_c, n_s, guard.min_samples or 1, stats)
    return _rate_limit("load/golden failure share", x_c, n_c, x_s, n_s, guard, alpha, stats)


@dataclass(frozen=True)
class _Latencies:
    """How the latency guard reads one arm: at sketch resolution per device (schema-2 reports),
    or on the v1 histogram with its smooth interpolation and per-bound clustering sums."""

    samples: int
    quantile: Callable[[float], float | None]
    count_above: Callable[[float], float]
    design_effect: Callable[[float], float]


def _latencies(stable: ArmWindow, canary: ArmWindow) -> tuple[_Latencies, _Latencies, float, str]:
    """Both arms' readers, the resolution the verdict cannot see below (a relative margin on the
    ratio) and a note for the reason when some latencies are only known at v1 resolution."""
    if stable.precise_latency and canary.precise_latency:
        readers = tuple(_Latencies(arm.latency_samples, arm.device_latency.quantile,
                                   arm.device_latency.count_above, arm.device_latency.design_effect)
                        for arm in (stable, canary) if arm.device_latency is not None)
        return readers[0], readers[1], RELATIVE_ERROR, ""
    readers = tuple(_Latencies(arm.latency_samples, lambda q, c=arm.latency_counts: quantile_seconds(c, q),
                               lambda t, c=arm.latency_counts: latencies_above(c, t),
                               arm.latency_design_effect) for arm in (stable, canary))
    v1 = stable.v1_latency_samples + canary.v1_latency_samples
    total = stable.latency_samples + canary.latency_samples
    note = (f" [read at v1 histogram resolution: {v1:,} of {total:,} latencies are from agents "
            f"reporting schema 1]" if v1 else "")
    return readers[0], readers[1], 0.0, note


def check_latency(guard: Guard, stable: ArmWindow, canary: ArmWindow, alpha: float) -> Check:
    """Ratio of canary to stable quantile from the merged latencies, with an exact binomial test.

    Canary's quantile q is above ``t`` exactly when more than ``1 - q`` of its latencies are
    above ``t``; so with ``t = threshold × stable quantile`` the test is on the count of
    canary latencies above ``t`` (interpolated in the bucket like the quantile itself). At
    sketch resolution a ratio within ``RELATIVE_ERROR`` (1.1%) of the limit is read as at it:
    the limit is tested at ``threshold × (1 + RELATIVE_ERROR)`` and a required gain at
    ``(1 - threshold) × (1 - RELATIVE_ERROR)``, so the sketch's own error never decides.
    """
    q = guard.quantile or 0.95
    label = f"p{100 * q:g}"
    n_c, n_s = canary.latency_samples, stable.latency_samples
    stats: dict[str, Any] = {"quantile": q, "canary_samples": n_c, "stable_samples": n_s}
    if min(n_c, n_s) < (guard.min_samples or 1):
        return too_few("latency samples", n_c, n_s, guard.min_samples or 1, stats)
    tables = latency_tables(stable, canary)
    if tables is not None:
        return latency_by_device(guard, tables, alpha, stats)
    read_s, read_c, resolution, note = _latencies(stable, canary)
    q_s, q_c = read_s.quantile(q), read_c.quantile(q)
    if not q_s or q_c is None:  # unreachable with samples; kept so no-data never passes
        return Check(Outcome.INCONCLUSIVE, f"stable {label} is zero: no ratio", stats, enough=False)
    ratio = q_c / q_s
    tail = 1.0 - q
    head = f"canary {label} {ms(q_c)} vs stable {ms(q_s)} (ratio {ratio:.2f})"
    # Prometheus' linear rule on the v1 histogram, as older dashboards read it (not used to decide).
    prom_s, prom_c = quantile(stable.latency_counts, q), quantile(canary.latency_counts, q)
    stats.update(
        canary_quantile_seconds=q_c,
        stable_quantile_seconds=q_s,
        ratio=ratio,
        alpha=alpha,
        resolution=resolution,
        v1_latency_samples=stable.v1_latency_samples + canary.v1_latency_samples,
        prometheus_ratio=prom_c / prom_s if prom_c and prom_s else None,
    )
    threshold = guard.threshold or 0.0
    if guard.mode is Mode.LIMIT:
        limit = threshold * (1.0 + resolution)
        above = read_c.count_above(limit * q_s)
        p = _above_p(read_c, read_s, above, (limit * q_s, q_s), tail, stats, binomial_above)
        stats.update(max_ratio=threshold, canary_above=above, p_value=p)
        if ratio > limit and p < alpha:
            return Check(
                Outcome.FAIL,
                f"{head}: significantly above {threshold:g}× stable ({above:,.0f} of "
                f"{n_c:,} above {ms(limit * q_s)}, p = {p:.2g} < α = {alpha:.2g}){note}",
                stats,
            )
        if ratio > limit:
            return Check(
                Outcome.INCONCLUSIVE,
                f"{head}: above {threshold:g}× stable but not significantly yet "
                f"(p = {p:.2g}, α = {alpha:.2g}){note}",
                stats,
            )
        return within(guard, head, f"within {threshold:g}× stable{note}", lambda: _above_p(
            read_c, read_s, above, (limit * q_s, q_s), tail, stats, binomial_below), stats)
    max_ratio = 1.0 - threshold
    required = max_ratio * (1.0 - resolution)
    above = read_c.count_above(required * q_s)
    p = _above_p(read_c, read_s, above, (required * q_s, q_s), tail, stats, binomial_below)
    stats.update(required_ratio=max_ratio, canary_above=above, p_value=p)
    if ratio <= required and p < alpha:
        return Check(
            Outcome.PASS,
            f"{head}: at least {pct(threshold)} lower, significantly (p = {p:.2g} < α = {alpha:.2g}){note}",
            stats,
        )
    return Check(
        Outcome.INCONCLUSIVE,
        f"{head}: required gain not shown, need ratio ≤ {max_ratio:.2f} "
        f"significantly (p = {p:.2g}, α = {alpha:.2g}){note}",
        stats,
    )


def _above_p(canary: _Latencies, stable: _Latencies, above: float, cuts: tuple[float, float], tail: float,
             stats: dict[str, Any], test: Callable[[int, int, float], float]) -> float:
    """``test``'s p-value (:func:`binomial_above` or :func:`binomial_below`) for ``above`` of
    the canary's latencies above ``cuts[0]`` (a multiple of stable's quantile ``cuts[1]``) when a
    share ``tail`` is expected.

    The binomial runs on the effective sample size of *both* arms, ``1 / (1/n_c + 1/n_s)``, each
    arm's ``n`` its latency samples over its design effect (slow inferences clustering on slow
    devices, measured at the cut). The canary's count carries its own noise;
    stable's quantile carries stable's, and when the canary sits exactly at the tested ratio its
    share above the cut moves with stable's estimate by a binomial share on stable's samples
    (the density terms cancel), so the two variances add. With ten times more stable samples
    the test loses a tenth of its samples; at a 50% stage, half. The count is rounded against
    what the test would show: down when testing for too many, up when testing for few enough.
    """
    n_c = canary.samples
    deff_c, deff_s = canary.design_effect(cuts[0]), stable.design_effect(cuts[1])
    effective_c, effective_s = n_c / deff_c, stable.samples / deff_s
    n = max(1, round(1.0 / (1.0 / effective_c + 1.0 / effective_s)))
    stats.update(effective_samples=n)
    if deff_c > 1.0:
        stats.update(canary_design_effect=deff_c, canary_effective_samples=round(effective_c))
    if deff_s > 1.0:
        stats.update(stable_design_effect=deff_s, stable_effective_samples=round(effective_s))
    scaled = above / n_c * n
    rounded = math.floor(scaled) if test is binomial_above else math.ceil(scaled)
    return test(rounded, n, tail)


def check_accuracy(guard: Guard, stable: ArmWindow, canary: ArmWindow, alpha: float) -> Check:
    """Accuracy on labelled/golden samples: drop below stable's (limit) or gain over it (gain)."""
    n_c, n_s = canary.labelled_samples, stable.labelled_samples
    x_c, x_s = canary.labelled_correct, stable.labelled_correct
    stats: dict[str, Any] = {
        "canary_correct": x_c,
        "canary_labelled": n_c,
        "stable_correct": x_s,
        "stable_labelled": n_s,
    }
    if min(n_c, n_s) < (guard.min_samples or 1):
        return too_few("labelled samples", n_c, n_s, guard.min_samples or 1, stats)
    tables = device_tables(stable, canary)
    if tables is not None:
        return accuracy_by_device(guard, tables, alpha, stats)
    deff_c, deff_s = canary.accuracy_design_effect(), stable.accuracy_design_effect()
    if max(deff_c, deff_s) <= 1.0:
        return _accuracy(guard, x_c, n_c, x_s, n_s, alpha, stats)
    # some devices see harder inputs than others: their samples are not independent trials
    (ex_c, en_c), (ex_s, en_s) = _effective(x_c, n_c, deff_c), _effective(x_s, n_s, deff_s)
    stats.update(canary_design_effect=deff_c, stable_design_effect=deff_s)
    check = _accuracy(guard, ex_c, en_c, ex_s, en_s, alpha, stats)
    return _noting_clusters(check, "wrong predictions", "labelled samples", (en_c, n_c), (en_s, n_s))


def _accuracy(guard: Guard, x_c: int, n_c: int, x_s: int, n_s: int, alpha: float,
              stats: dict[str, Any]) -> Check:
    """The accuracy limit or gain on correct counts ``x`` of ``n`` labelled samples per arm."""
    acc_c, acc_s = x_c / n_c, x_s / n_s
    threshold = guard.threshold or 0.0
    head = f"canary accuracy {pct(acc_c)} ({x_c:,}/{n_c:,}) vs stable {pct(acc_s)} ({x_s:,}/{n_s:,})"
    stats.update(canary_accuracy=acc_c, stable_accuracy=acc_s, alpha=alpha)
    if guard.mode is Mode.LIMIT:
        drop = acc_s - acc_c
        z, p = excess_test(x_s, n_s, x_c, n_c, 1.0, threshold)
        stats.update(drop=drop, max_drop=threshold, z=z, p_value=p)
        points = f"drop {100 * drop:.2f} points, limit {100 * threshold:.2f}"
        if drop > threshold and p < alpha:
            return Check(
                Outcome.FAIL,
                f"{head}: {points}, significant (z = {z:.2f}, p = {p:.2g} < α = {alpha:.2g})",
                stats,
            )
        if drop > threshold:
            return Check(
                Outcome.INCONCLUSIVE,
                f"{head}: {points}, not significant yet (p = {p:.2g}, α = {alpha:.2g})",
                stats,
            )
        return within(guard, head, points, lambda: 1.0 - p, stats)
    gain = acc_c - acc_s
    z, p = excess_test(x_c, n_c, x_s, n_s, 1.0, threshold)
    stats.update(gain=gain, min_gain=threshold, z=z, p_value=p)
    if gain > threshold and p < alpha:
        return Check(
            Outcome.PASS,
            f"{head}: gain {100 * gain:.2f} points > {100 * threshold:.2f}, significant "
            f"(p = {p:.2g} < α = {alpha:.2g})",
            stats,
        )
    return Check(
        Outcome.INCONCLUSIVE,
        f"{head}: required gain of {100 * threshold:.2f} points not shown (p = {p:.2g}, α = {alpha:.2g})",
        stats,
    )


def check_agreement(guard: Guard, stable: ArmWindow, canary: ArmWindow, alpha: float) -> Check:
    """Shadow mode: top-1 agreement of candidate with stable (both arms' shadow samples) ≥ threshold."""
    n = stable.shadow_samples + canary.shadow_samples
    x = stable.shadow_agreements + canary.shadow_agreements
    stats: dict[str, Any] = {"shadow_samples": n, "shadow_agreements": x}
    if n < (guard.min_samples or 1):
        return too_few("shadow samples", n, None, guard.min_samples or 1, stats)
    agreement = x / n
    threshold = guard.threshold or 0.0
    p = binomial_below(x, n, threshold)
    stats.update(agreement=agreement, min_agreement=threshold, p_value=p, alpha=alpha)
    head = f"agreement with stable {pct(agreement)} ({x:,}/{n:,}), minimum {pct(threshold)}"
    if agreement < threshold and p < alpha:
        return Check(Outcome.FAIL, f"{head}: significantly below (p = {p:.2g} < α = {alpha:.2g})", stats)
    if agreement < threshold:
        return Check(Outcome.INCONCLUSIVE, f"{head}: below but not significantly yet (p = {p:.2g})", stats)
    return within(guard, head, "within", lambda: binomial_above(x, n, threshold), stats)


def check_memory(guard: Guard, stable: ArmWindow, canary: ArmWindow, alpha: float) -> Check:
    """Canary devices' peak resident memory against stable devices' (a ratio limit)."""
    return _typical_ratio("peak RSS", stable.device_peak_rss, canary.device_peak_rss, guard, alpha,
                          lambda v: f"{v / 2**20:.1f} MiB")


def check_load_time(guard: Guard, stable: ArmWindow, canary: ArmWindow, alpha: float) -> Check:
    """Canary devices' model load time against stable devices' (a ratio limit)."""
    return _typical_ratio("model load time", stable.device_load_seconds, canary.device_load_seconds, guard,
                          alpha, ms)


def _typical_ratio(what: str, stable: tuple[float, ...], canary: tuple[float, ...], guard: Guard,
                   alpha: float, show: Callable[[float], str]) -> Check:
    """A limit on the ratio of the typical (geometric mean) per-device value, canary to stable.

    One value per device (its largest over the stage): devices are the samples, so a device
    that reports often weighs no more than one that reports rarely. Welch's t-test on the logs,
    one-sided against ``log(threshold)``.
    """
    n_c, n_s = len(canary), len(stable)
    need = guard.min_samples or 1
    stats: dict[str, Any] = {"canary_devices": n_c, "stable_devices": n_s}
    if min(n_c, n_s) < max(need, 2):
        return too_few(f"devices reporting {what}", n_c, n_s, max(need, 2), stats)
    floor = 1e-9  # a value of 0 (an instant load) must not make the log undefined
    log_c = [math.log(max(v, floor)) for v in canary]
    log_s = [math.log(max(v, floor)) for v in stable]
    mean_c, mean_s = sum(log_c) / n_c, sum(log_s) / n_s
    var_c = sum((v - mean_c) ** 2 for v in log_c) / (n_c - 1)
    var_s = sum((v - mean_s) ** 2 for v in log_s) / (n_s - 1)
    se2 = var_c / n_c + var_s / n_s
    ratio = math.exp(mean_c - mean_s)
    threshold = guard.threshold or 1.0
    se = math.sqrt(max(se2, 1e-12))
    parts = (var_c / n_c) ** 2 / (n_c - 1) + (var_s / n_s) ** 2 / (n_s - 1)
    df = se2 ** 2 / parts if parts > 0 else n_c + n_s - 2  # Welch–Satterthwaite
    t = (mean_c - mean_s - math.log(threshold)) / se
    p = float(stdtr(df, -t))  # P(T >= t)
    head = (f"canary {what} {show(math.exp(mean_c))} vs stable {show(math.exp(mean_s))} "
            f"(typical per device, ratio {ratio:.2f})")
    stats.update(ratio=ratio, max_ratio=threshold, p_value=p, alpha=alpha,
                 canary_typical=math.exp(mean_c), stable_typical=math.exp(mean_s))
    if ratio > threshold and p < alpha:
        return Check(Outcome.FAIL, f"{head}: significantly above {threshold:g}× stable "
                                   f"(p = {p:.2g} < α = {alpha:.2g})", stats)
    if ratio > threshold:
        return Check(Outcome.INCONCLUSIVE, f"{head}: above {threshold:g}× stable but not significantly "
                                           f"yet (p = {p:.2g}, α = {alpha:.2g})", stats)
    return within(guard, head, f"within {threshold:g}× stable", lambda: float(stdtr(df, t)), stats)


CHECKS: dict[Metric, Callable[[Guard, ArmWindow, ArmWindow, float], Check]] = {
    Metric.ERROR_RATE: check_error_rate,
    Metric.LATENCY: check_latency,
    Metric.ACCURACY: check_accuracy,
    Metric.LOAD_FAILURES: check_load_failures,
    Metric.AGREEMENT: check_agreement,
    Metric.MEMORY: check_memory,
    Metric.LOAD_TIME: check_load_time,
}
