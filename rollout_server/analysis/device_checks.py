"""The error-rate, accuracy and latency guards on per-device data (:mod:`.adjusted`).

Used by :mod:`rollout_server.analysis.guards` whenever both arms carry a
:class:`~rollout_server.analysis.device_table.DeviceTable` that covers them; the guards keep
their pooled tests for data without one (aggregates only, or latencies known only at v1
resolution). The verdicts mean the same: a limit fails only when the canary is significantly
beyond it (and still is without the canary's devices that push hardest, ``TRIM_SHARE``), a
gain passes only when significant; the estimates are per device, with bounded weights and each
device's own baseline.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeship.contract.sketch import RELATIVE_ERROR
from rollout_server.analysis.adjusted import (
    ArmValues,
    Columns,
    Contrast,
    contrast,
    paired_values,
    robust_above,
    robust_below,
    weight_cap,
)
from rollout_server.analysis.check import Check, ms, pct, within
from rollout_server.analysis.device_latency import DeviceLatencies
from rollout_server.analysis.device_table import DeviceTable
from rollout_server.analysis.spec import Guard, Mode
from rollout_server.analysis.verdict import Outcome
from rollout_server.analysis.window import ArmWindow


def device_tables(stable: ArmWindow, canary: ArmWindow) -> tuple[DeviceTable, DeviceTable] | None:
    """Both arms' tables when each covers every inference of its arm, else None."""
    s, c = stable.device_table, canary.device_table
    if s is None or c is None:
        return None
    for table, arm in ((s, stable), (c, canary)):
        if round(float(table.inferences.sum())) != arm.inferences:
            return None
    return s, c


def _basis(test: Contrast, cap: float) -> tuple[str, dict[str, Any]]:
    """How the estimates were made, for the reason and the stats."""
    adjusted = bool(test.canary.slope or test.stable.slope)
    text = (f"per device{', baseline-adjusted' if adjusted else ''}; "
            f"{test.canary.devices:,} canary, {test.stable.devices:,} stable devices")
    return text, {"per_device": True, "baseline_adjusted": adjusted, "weight_cap": cap,
                  "canary_slope": test.canary.slope, "stable_slope": test.stable.slope,
                  "canary_raw": test.canary.raw, "stable_raw": test.stable.raw,
                  "canary_devices": test.canary.devices, "stable_devices": test.stable.devices}


def _robust_note(test: Contrast) -> str:
    return f", also without its {test.trimmed:,} devices most against it" if test.trimmed else ""


def error_rate_by_device(guard: Guard, tables: tuple[DeviceTable, DeviceTable], alpha: float,
                         stats: dict[str, Any]) -> Check:
    """The error-rate limit (stable × (1 + relative margin) + threshold) and cap, per device."""
    ts, tc = tables
    arm_c, arm_s, cap = paired_values((tc.errors, tc.inferences, tc.base_errors, tc.base_inferences),
                                      (ts.errors, ts.inferences, ts.base_errors, ts.base_inferences))
    scale, margin = 1.0 + (guard.relative_margin or 0.0), guard.threshold or 0.0
    ceiling = guard.cap if guard.cap is not None else 1.0
    limit, over_cap = contrast(arm_c, arm_s, scale, margin), contrast(arm_c, arm_s, 0.0, ceiling)
    r_c, r_s = limit.canary.mean, limit.stable.mean
    bound = scale * r_s + margin
    basis, more = _basis(limit, cap)
    stats.update(more, canary_rate=r_c, stable_rate=r_s, limit=bound, cap=ceiling, z=limit.z,
                 p_value=limit.p_above, p_cap=over_cap.p_above, alpha=alpha)
    head = f"canary error rate {pct(r_c)} vs stable {pct(r_s)} ({basis})"
    limit_text = f"{pct(bound)} (stable × {scale:g} + {pct(margin)})"
    above = [_above(test, arm_c, arm_s, scale_margin, head, what, alpha, dict(stats))
             for test, scale_margin, what in ((over_cap, (0.0, ceiling), f"the {pct(ceiling)} cap"),
                                              (limit, (scale, margin), f"the limit {limit_text}"))
             if test.difference > 0]
    if above:
        return next((check for check in above if check.outcome is Outcome.FAIL), above[0])
    return within(guard, head, f"within the limit {limit_text} and cap {pct(ceiling)}",
                  lambda: max(limit.p_below, over_cap.p_below), stats)


def _above(test: Contrast, canary: ArmValues, stable: ArmValues, scale_margin: tuple[float, float],
           head: str, what: str, alpha: float, stats: dict[str, Any]) -> Check:
    """A canary estimate above a bound: ``fail`` when significant and still so without the
    devices pushing it up most, else ``inconclusive``."""
    strict = robust_above(canary, stable, *scale_margin) if test.p_above < alpha else test
    stats.update(robust_p_value=strict.p_above, trimmed_devices=strict.trimmed)
    if test.p_above < alpha and strict.difference > 0 and strict.p_above < alpha:
        return Check(Outcome.FAIL, f"{head}: significantly above {what} (z = {test.z:.2f}, "
                                   f"p = {test.p_above:.2g} < α = {alpha:.2g}){_robust_note(strict)}", stats)
    if test.p_above < alpha:
        return Check(Outcome.INCONCLUSIVE, f"{head}: above {what}, but not without its {strict.trimmed:,} "
                                           f"devices most above it (p = {strict.p_above:.2g}, "
                                           f"α = {alpha:.2g})", stats)
    return Check(Outcome.INCONCLUSIVE, f"{head}: above {what} but not significantly yet "
                                       f"(p = {test.p_above:.2g}, α = {alpha:.2g})", stats)


def _below(test: Contrast, canary: ArmValues, stable: ArmValues, scale_margin: tuple[float, float],
           head: str, what: str, alpha: float, stats: dict[str, Any]) -> Check:
    """A required gain: ``pass`` when the canary is significantly below the bound and still so
    without the devices pushing it down most, else ``inconclusive``."""
    shown = test.difference < 0 and test.p_below < alpha
    strict = robust_below(canary, stable, *scale_margin) if shown else test
    stats.update(p_value=test.p_below, robust_p_value=strict.p_below, trimmed_devices=strict.trimmed)
    if shown and strict.difference < 0 and strict.p_below < alpha:
        return Check(Outcome.PASS, f"{head}: {what}, significantly (p = {test.p_below:.2g} < "
                                   f"α = {alpha:.2g}){_robust_note(strict)}", stats)
    return Check(Outcome.INCONCLUSIVE, f"{head}: {what} not shown (p = {strict.p_below:.2g}, "
                                       f"α = {alpha:.2g})", stats)


def accuracy_by_device(guard: Guard, tables: tuple[DeviceTable, DeviceTable], alpha: float,
                       stats: dict[str, Any]) -> Check:
    """The accuracy drop limit or required gain, on each device's share of wrong predictions."""
    ts, tc = tables
    arm_c, arm_s, cap = paired_values((tc.wrong, tc.labelled, tc.base_wrong, tc.base_labelled),
                                      (ts.wrong, ts.labelled, ts.base_wrong, ts.base_labelled))
    threshold = guard.threshold or 0.0
    sign = 1.0 if guard.mode is Mode.LIMIT else -1.0  # limit: wrong_c - wrong_s - t; gain: ... + t
    test = contrast(arm_c, arm_s, 1.0, sign * threshold)
    acc_c, acc_s = 1.0 - test.canary.mean, 1.0 - test.stable.mean
    basis, more = _basis(test, cap)
    head = f"canary accuracy {pct(acc_c)} vs stable {pct(acc_s)} ({basis})"
    stats.update(more, canary_accuracy=acc_c, stable_accuracy=acc_s, z=test.z, alpha=alpha)
    if guard.mode is Mode.LIMIT:
        drop = acc_s - acc_c
        head += f", drop {100 * drop:.2f} points"
        stats.update(drop=drop, max_drop=threshold, p_value=test.p_above)
        limit = f"the {100 * threshold:.2f}-point limit"
        if test.difference > 0:
            return _above(test, arm_c, arm_s, (1.0, threshold), head, limit, alpha, stats)
        return within(guard, head, f"within {limit}", lambda: test.p_below, stats)
    gain = acc_c - acc_s
    stats.update(gain=gain, min_gain=threshold)
    return _below(test, arm_c, arm_s, (1.0, -threshold), head,
                  f"gain {100 * gain:.2f} points, required {100 * threshold:.2f}", alpha, stats)


def latency_tables(stable: ArmWindow, canary: ArmWindow) -> tuple[DeviceTable, DeviceTable] | None:
    """Both tables when they also hold every latency of their arm at sketch resolution."""
    found = device_tables(stable, canary)
    if found is None or not (stable.precise_latency and canary.precise_latency):
        return None
    for table, arm in zip(found, (stable, canary), strict=True):
        if table.latency is None or table.latency.samples != arm.latency_samples:
            return None
    return found


def latency_by_device(guard: Guard, tables: tuple[DeviceTable, DeviceTable], alpha: float,
                      stats: dict[str, Any]) -> Check:
    """The latency limit or required gain per device.

    Stable's quantile ``q_s`` is read from its devices' latencies, each device weighing its
    bounded weight. Canary's quantile is above ``r × q_s`` exactly when more than ``1 - q`` of
    its latencies are above that cut, so the test compares each canary device's share of
    latencies above ``r × q_s`` with each stable device's share above ``q_s`` (both adjusted by
    the device's baseline share above ``q_s``): the stable side carries the noise of ``q_s``.
    At sketch resolution a ratio within ``RELATIVE_ERROR`` of ``r`` is read as at it.
    """
    ts, tc = tables
    lat_s, lat_c = ts.latency, tc.latency
    assert lat_s is not None and lat_c is not None  # latency_tables checked
    q = guard.quantile or 0.95
    label = f"p{100 * q:g}"
    samples_s, samples_c = lat_s.counts.sum(axis=1), lat_c.counts.sum(axis=1)
    cap = weight_cap(samples_s, samples_c)
    q_s = lat_s.quantile(q, _per_sample(samples_s, cap))
    q_c = lat_c.quantile(q, _per_sample(samples_c, cap))
    if not q_s or q_c is None:
        return Check(Outcome.INCONCLUSIVE, f"stable {label} is zero: no ratio", stats, enough=False)
    threshold = guard.threshold or 0.0
    limit = guard.mode is Mode.LIMIT
    ratio = (threshold * (1.0 + RELATIVE_ERROR) if limit
             else (1.0 - threshold) * (1.0 - RELATIVE_ERROR))
    arm_c, arm_s, _ = paired_values(_shares_above(lat_c, samples_c, tc.base_latency, ratio * q_s, q_s),
                                    _shares_above(lat_s, samples_s, ts.base_latency, q_s, q_s))
    test = contrast(arm_c, arm_s)
    basis, more = _basis(test, cap)
    point = q_c / q_s
    head = (f"canary {label} {ms(q_c)} vs stable {ms(q_s)} (ratio {point:.2f}; {basis}: "
            f"{pct(test.canary.mean)} of canary latencies above {ms(ratio * q_s)}, "
            f"stable {pct(test.stable.mean)} above {ms(q_s)})")
    stats.update(more, canary_quantile_seconds=q_c, stable_quantile_seconds=q_s, ratio=point, alpha=alpha,
                 resolution=RELATIVE_ERROR, v1_latency_samples=0, canary_share_above=test.canary.mean,
                 stable_share_above=test.stable.mean, z=test.z)
    if limit:
        stats.update(max_ratio=threshold, p_value=test.p_above)
        if test.difference > 0:
            return _above(test, arm_c, arm_s, (1.0, 0.0), head, f"{threshold:g}× stable", alpha, stats)
        return within(guard, head, f"within {threshold:g}× stable", lambda: test.p_below, stats)
    stats.update(required_ratio=1.0 - threshold)
    return _below(test, arm_c, arm_s, (1.0, 0.0), head, f"at least {pct(threshold)} lower", alpha, stats)


def _per_sample(samples: np.ndarray, cap: float) -> np.ndarray:
    """Each device's weight per latency: its bounded weight spread over its latencies."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(samples > 0, np.minimum(samples, cap) / samples, 0.0)


def _shares_above(latency: DeviceLatencies, samples: np.ndarray, base: DeviceLatencies | None, cut: float,
                  base_cut: float) -> Columns:
    """Per device, its latencies above ``cut`` in the stage and above ``base_cut`` before."""
    if base is None:
        base_above = base_samples = np.zeros(len(samples))
    else:
        base_above, base_samples = base.above(base_cut), base.counts.sum(axis=1).astype(float)
    return latency.above(cut), samples.astype(float), base_above, base_samples
