"""Canary against stable device by device: bounded weights, each device's own baseline, and
verdicts no handful of devices can force.

When the guards have per-device data (:class:`~rollout_server.analysis.device_table.DeviceTable`)
they compare arms on per-device values instead of pooled counts:

* **Bounded weight.** A device's value (its error rate, its share of wrong predictions, its
  share of latencies above a cut) weighs its trials, capped at :data:`WEIGHT_CAP` times the
  median device's: a device that reports a million inferences counts as three typical ones.
* **Its own baseline** (CUPED, as Statsig and Eppo do with pre-exposure data; Deng et al.
  2013). Each device ran the stable model before the rollout; its value then is a covariate.
  An arm's estimate is its mean minus ``theta × (its devices' mean baseline - every device's
  mean baseline)``, ``theta`` the regression slope of device values on their baselines within
  the arms, pooled (one slope: a 100-device canary's own slope would add its noise). Which devices
  happened to land in the canary (slow phones, users with hard inputs) then cancels, and the
  test keeps the power it has on identical devices. Devices without a baseline take the mean;
  baselines are clipped to the 1st-99th percentile of all devices' (a forged history of
  failures must not turn clean canary windows into a gain).
* **Device-level variance.** The variance of each arm's estimate is the spread of its devices'
  residuals (a cluster-robust variance: devices, not inferences, are the samples), floored at
  the binomial variance of the same weights.
* **No handful of devices decides.** A verdict against the canary (a limit failed, a required
  gain shown) must hold again after removing the canary's :data:`TRIM_SHARE` of devices that
  push hardest towards it: 40 forged or broken devices in a 1,000-device canary cannot roll an
  identical release back, nor (with bounded weights) promote a bad one. A regression confined
  to fewer devices than that is left to the per-class guards.

Why and what it costs: docs/rollout-analysis.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

#: a device weighs at most this many times the median device of both arms
WEIGHT_CAP = 3.0
#: a verdict against the canary must survive losing this share of its devices (rounded up)
TRIM_SHARE = 0.05
#: devices with a baseline an arm needs before its slope on the baseline is estimated
MIN_BASELINE_DEVICES = 10
#: baselines are clipped to the quantiles BASELINE_CLIP and 1 - BASELINE_CLIP of every device's
BASELINE_CLIP = 0.01


@dataclass(frozen=True)
class ArmValues:
    """One arm's per-device values: ``value`` (events / trials in the stage), ``weight`` (its
    bounded trials), ``trials`` and ``baseline`` (the same value before the rollout, NaN when
    the device has none)."""

    value: np.ndarray
    weight: np.ndarray
    trials: np.ndarray
    baseline: np.ndarray

    @property
    def devices(self) -> int:
        return int((self.weight > 0).sum())

    def without(self, drop: np.ndarray) -> ArmValues:
        keep = ~drop
        return ArmValues(self.value[keep], self.weight[keep], self.trials[keep], self.baseline[keep])


@dataclass(frozen=True)
class Estimate:
    """An arm's baseline-adjusted weighted mean, its variance, and what went into it."""

    mean: float
    variance: float
    raw: float
    slope: float
    devices: int


def arm_values(events: np.ndarray, trials: np.ndarray, base_events: np.ndarray,
               base_trials: np.ndarray, cap: float) -> ArmValues:
    """Per-device values of one arm, devices without trials left out, weights capped at ``cap``."""
    used = trials > 0
    trials, events = trials[used], events[used]
    base_trials, base_events = base_trials[used], base_events[used]
    with np.errstate(divide="ignore", invalid="ignore"):
        baseline = np.where(base_trials > 0, base_events / base_trials, np.nan)
    return ArmValues(events / trials, np.minimum(trials, cap), trials, baseline)


def weight_cap(*trials: np.ndarray) -> float:
    """:data:`WEIGHT_CAP` times the median positive trials over the given arms (inf without any)."""
    every = np.concatenate([t[t > 0] for t in trials]) if trials else np.zeros(0)
    return WEIGHT_CAP * float(np.median(every)) if len(every) else math.inf


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # events, trials, base events, base trials


def paired_values(canary: Columns, stable: Columns) -> tuple[ArmValues, ArmValues, float]:
    """Both arms' values with one weight cap (:func:`weight_cap` over both) and their baselines
    clipped to the middle :data:`BASELINE_CLIP` of all devices' baselines: a device whose
    history says it fails everything (broken, or forged before the rollout) would otherwise
    make its clean canary windows look like a large gain. Returns the arms and the cap."""
    cap = weight_cap(canary[1], stable[1])
    arm_c, arm_s = arm_values(*canary, cap), arm_values(*stable, cap)
    x = np.concatenate([arm_c.baseline, arm_s.baseline])
    w = np.concatenate([arm_c.weight, arm_s.weight])
    known = ~np.isnan(x)
    if known.sum() < MIN_BASELINE_DEVICES:
        return arm_c, arm_s, cap
    low, high = _weighted_quantiles(x[known], w[known], (BASELINE_CLIP, 1.0 - BASELINE_CLIP))

    def clipped(arm: ArmValues) -> ArmValues:
        return ArmValues(arm.value, arm.weight, arm.trials, np.clip(arm.baseline, low, high))

    return clipped(arm_c), clipped(arm_s), cap


def _weighted_quantiles(x: np.ndarray, w: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Weighted quantiles (the smallest value whose cumulative weight reaches q of the total)."""
    order = np.argsort(x, kind="stable")
    cumulative = np.cumsum(w[order])
    total = float(cumulative[-1])
    return [float(x[order][min(int(np.searchsorted(cumulative, q * total)), len(x) - 1)]) for q in qs]


def baseline_centre(*arms: ArmValues) -> tuple[float, float]:
    """The weighted mean baseline over every device that has one, and its variance."""
    x = np.concatenate([a.baseline for a in arms])
    w = np.concatenate([a.weight for a in arms])
    known = ~np.isnan(x)
    if known.sum() < 2:
        return math.nan, 0.0
    x, w = x[known], w[known]
    total = float(w.sum())
    centre = float(w @ x) / total
    return centre, _spread(w, x - centre, total)


def _filled(arm: ArmValues, centre: float) -> np.ndarray | None:
    """The arm's baselines, the centre standing in for devices without one; None when too few
    devices have one to estimate a slope on."""
    if math.isnan(centre) or (~np.isnan(arm.baseline)).sum() < MIN_BASELINE_DEVICES:
        return None
    return np.where(np.isnan(arm.baseline), centre, arm.baseline)


def common_slope(centre: float, *arms: ArmValues) -> float:
    """The regression slope of device values on their baselines within arms, pooled over the
    arms (weighted): one slope for both, so a small canary's own noise does not steer it."""
    sxy = sxx = 0.0
    for arm in arms:
        x, total = _filled(arm, centre), float(arm.weight.sum())
        if x is None or total <= 0:
            continue
        w = arm.weight
        dx = x - float(w @ x) / total
        sxy += float(w @ (dx * (arm.value - float(w @ arm.value) / total)))
        sxx += float(w @ (dx * dx))
    return sxy / sxx if sxx > 0 else 0.0


def estimate(arm: ArmValues, centre: float, slope: float) -> Estimate:
    """The arm's mean adjusted to the common baseline ``centre`` with ``slope`` (see the module
    docstring), and its device-level variance."""
    w, y = arm.weight, arm.value
    total = float(w.sum())
    if total <= 0:
        return Estimate(math.nan, math.inf, math.nan, 0.0, 0)
    raw = float(w @ y) / total
    x = _filled(arm, centre)
    if x is None:
        slope = 0.0
        mean, residual = raw, y - raw
    else:
        x_mean = float(w @ x) / total
        mean = raw - slope * (x_mean - centre)
        residual = y - raw - slope * (x - x_mean)
    variance = _spread(w, residual, total)
    # floor: what the trials alone would give (a device's value is a share of its trials)
    p = (float(w @ y) + 1.0) / (total + 2.0)
    binomial = p * (1.0 - p) * float((w * w / arm.trials).sum()) / (total * total)
    return Estimate(mean, max(variance, binomial), raw, slope, arm.devices)


def _spread(w: np.ndarray, residual: np.ndarray, total: float) -> float:
    """The cluster-robust variance of a weighted mean from its devices' residuals."""
    n = len(w)
    if n < 2:
        return math.inf
    return n / (n - 1) * float((w * w) @ (residual * residual)) / (total * total)


@dataclass(frozen=True)
class Contrast:
    """``canary - scale × stable - margin`` on adjusted estimates, with its z and one-sided p."""

    canary: Estimate
    stable: Estimate
    difference: float
    z: float
    p_above: float  # P(difference this large | true difference 0): small when canary is above
    trimmed: int = 0  # canary devices removed for this contrast (:func:`robust_above`)

    @property
    def p_below(self) -> float:
        return 1.0 - self.p_above


def contrast(canary: ArmValues, stable: ArmValues, scale: float = 1.0, margin: float = 0.0,
             centre: tuple[float, float] | None = None, trimmed: int = 0) -> Contrast:
    """Compare the arms' adjusted estimates (``centre`` from :func:`baseline_centre` of both
    when omitted, so trimming the canary does not move it)."""
    mid, centre_variance = centre if centre is not None else baseline_centre(canary, stable)
    slope = common_slope(mid, canary, stable)
    est_c, est_s = estimate(canary, mid, slope), estimate(stable, mid, slope)
    difference = est_c.mean - scale * est_s.mean - margin
    slopes = est_c.slope - scale * est_s.slope
    variance = est_c.variance + scale * scale * est_s.variance + slopes * slopes * centre_variance
    if not math.isfinite(variance) or math.isnan(difference):
        return Contrast(est_c, est_s, difference, math.nan, 1.0, trimmed)
    z = difference / math.sqrt(max(variance, 1e-300))
    return Contrast(est_c, est_s, difference, z, float(ndtr(-z)), trimmed)


def robust_above(canary: ArmValues, stable: ArmValues, scale: float = 1.0, margin: float = 0.0) -> Contrast:
    """:func:`contrast` after removing the canary's ``ceil(TRIM_SHARE × devices)`` devices that
    raise its estimate most (largest weighted residual): the evidence that the canary is
    *above* must not rest on a handful of them."""
    return _robust(canary, stable, scale, margin, up=True)


def robust_below(canary: ArmValues, stable: ArmValues, scale: float = 1.0, margin: float = 0.0) -> Contrast:
    """The same for evidence that the canary is *below* (a required gain): without the devices
    that lower its estimate most."""
    return _robust(canary, stable, scale, margin, up=False)


def _robust(canary: ArmValues, stable: ArmValues, scale: float, margin: float, up: bool) -> Contrast:
    centre = baseline_centre(canary, stable)
    k = math.ceil(TRIM_SHARE * canary.devices)
    if k == 0 or canary.devices - k < 2:
        return contrast(canary, stable, scale, margin, centre)
    kept = canary.without(_pushing(canary, stable, centre[0], k, up))
    return contrast(kept, stable, scale, margin, centre, trimmed=k)


def _pushing(arm: ArmValues, other: ArmValues, centre: float, k: int, up: bool) -> np.ndarray:
    """A mask of the ``k`` devices of ``arm`` whose weighted residual pushes its estimate
    furthest up (or down)."""
    est = estimate(arm, centre, common_slope(centre, arm, other))
    x = _filled(arm, centre)
    residual = arm.value - est.raw
    if x is not None:
        residual = residual - est.slope * (x - float(arm.weight @ x) / float(arm.weight.sum()))
    push = np.where(arm.weight > 0, arm.weight * residual, -np.inf if up else np.inf)
    order = np.argsort(-push if up else push, kind="stable")
    mask = np.zeros(len(push), dtype=bool)
    mask[order[:k]] = True
    return mask
