"""A fleet simulator that drives ``assess`` and ``decide`` through a whole rollout.

Usage::

    result = simulate_rollout(GuardSpec.default(), ArmProfile(), ArmProfile(error_rate=0.02), seed=1)
    result.phase, result.canary_inferences        # Phase.ROLLED_BACK, 3_800

Real statistics, nothing mocked: each window every device reports with some probability,
draws Poisson inferences, binomial errors at its arm's rate (optionally with per-device
heterogeneity), one latency per inference from its arm's latency shape (``analysis/arm_profile.py``:
a log-normal body, optionally with a share of slower inferences, see its ``LATENCY_SHAPES``),
labelled samples and correct predictions. Latencies are reported as agents of report schema 2
do by default, in the log-bucketed sketch of ``edgeship.contract.sketch`` (the windows carry
each device's stage-cumulative sketch counts, ``ArmWindow.device_latency``, and the same
latencies on the v1 histogram); with ``Fleet(report_schema=1)`` as v1 agents do, on the v1
histogram of ``edgeship.contract.latency`` only. Devices are canary while their uniform bucket is
below percent × 100, the same sticky rule as ``rollout_server.bucketing`` (uniform draws stand
in for the hash to keep thousands of rollouts fast). Data are cumulative within a stage, as
the server does. ``Fleet(hostile_devices=n, hostile_mode=...)`` makes n canary devices report
broken or forged windows (:data:`HOSTILE_MODES`): what one device's weight in a verdict does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from edgeship.contract.latency import BUCKET_COUNT, LATENCY_BUCKETS_SECONDS
from edgeship.contract.sketch import MAX_INDEX, MIN_INDEX, SCHEMA
from rollout_server.analysis.arm_profile import ArmProfile
from rollout_server.analysis.assess import assess
from rollout_server.analysis.device_latency import DeviceLatencies
from rollout_server.analysis.device_table import DeviceTable
from rollout_server.analysis.rollout import Action, Phase, RolloutState, decide, start
from rollout_server.analysis.sample_ratio import SRM_ALPHA, SRM_GRACE_SECONDS, SampleRatio, sample_ratio
from rollout_server.analysis.spec import GuardSpec
from rollout_server.analysis.stages import Stage
from rollout_server.analysis.stats import look_alpha
from rollout_server.analysis.verdict import Outcome
from rollout_server.analysis.window import SPREAD_CUTS, SPREAD_FIELDS, ArmWindow, Measurements
from rollout_server.config import DEFAULTS

#: how inference errors split over reasons in the simulation.
ERROR_SPLIT = {"runtime_error": 0.6, "timeout": 0.3, "other": 0.1}
#: stages of the simulated rollouts: 30 min and a few thousand canary inferences per stage.
SIM_STAGES: tuple[Stage, ...] = (Stage(10, 1800, 2000), Stage(50, 1800, 5000), Stage(100, 0, 0))
#: report schemas a simulated fleet can speak (``Fleet.report_schema``).
REPORT_SCHEMAS = (1, 2)
#: what a hostile canary device (``Fleet.hostile_devices``) reports, each window:
#: ``errors``: every inference failed, at normal volume (a broken device, or a forger);
#: ``slow``: every latency × :data:`HOSTILE_SLOW_FACTOR`;
#: ``clean_flood``: a perfect window at the server's physical cap (:func:`hostile_flood_inferences`):
#: no errors, every labelled sample correct, latencies exactly the stable model's distribution;
#: ``poisoned_baseline``: before the rollout (its baseline) every inference failed, every label
#: was wrong and every latency × :data:`HOSTILE_SLOW_FACTOR`; in the rollout it reports honestly,
#: so its windows look like a large gain over its own history.
HOSTILE_MODES = ("errors", "slow", "clean_flood", "poisoned_baseline")
HOSTILE_SLOW_FACTOR = 10.0
#: the most inferences per second of window the server accepts from one device
MAX_INFERENCES_PER_SECOND = float(DEFAULTS["MAX_INFERENCES_PER_SECOND"])

_SCALE = float(2**SCHEMA)  # sketch positions per doubling: bucket i spans positions (i - 1, i]
_LN2 = math.log(2.0)
#: the v1 bounds on the sketch's position axis (32 × log2 seconds)
_V1_POSITIONS = np.log2(np.asarray(LATENCY_BUCKETS_SECONDS)) * _SCALE


@dataclass(frozen=True)
class Fleet:
    """The simulated fleet and its reporting.

    Attributes:
        devices: fleet size.
        classes: device classes with their share of the fleet.
        inferences_per_window: mean inferences per device per window (Poisson).
        labelled_fraction: share of inferences with a label.
        shadow_fraction: share of inferences also run by the other model (shadow mode).
        report_probability: chance a device reports in a window.
        error_dispersion: 0 for identical devices; otherwise each device's error rate is the
            arm's times a Gamma(1/d, d) factor (mean 1, variance d): real fleets are clumpy.
        accuracy_dispersion: the same for the share of wrong predictions (1 - accuracy): some
            devices see harder inputs than others, whichever model runs.
        latency_dispersion: 0 for identical devices; otherwise each device's latencies are the
            arm's times a log-normal factor (median 1, this sigma of its log): some devices are
            slower than others whichever model runs (older hardware, thermal limits, load).
        window_seconds: analysis window.
        report_schema: 2 (default): devices report latency sketches and the windows carry them
            per device (``ArmWindow.device_latency``), so the latency guard reads at sketch
            resolution; 1: devices report the v1 histogram only, as agents before schema 2
            (every latency counts in ``ArmWindow.v1_latency_samples``).
        hostile_devices: this many canary devices are hostile: the ones with the lowest buckets,
            so canary from the first stage on (the server refuses canary claims from a device
            bucketed stable, so a forger acts within its own bucket only). They report as often
            as honest devices, what ``hostile_mode`` says (:data:`HOSTILE_MODES`); a hostile
            device that is not canary at the stage (a fleet too small for its hostile devices at
            the stage's percent) reports honestly. Honest devices' draws within a window are
            the same as without hostile devices (later windows differ: the group draws differ).
        hostile_mode: what the hostile devices report (:data:`HOSTILE_MODES`).
        baseline_windows: each device ran the stable model for this many windows before the
            rollout began, reporting as in the rollout (its baseline, what the server reads
            before the rollout's creation): the windows carry it per device
            (``ArmWindow.device_table``). 0: no device has a baseline.
        per_device: the windows carry per-device tables, so the guards compare device by
            device (``analysis/adjusted.py``); False: aggregates only, as before the tables
            (the pooled tests with design effects).
    """

    devices: int = 1000
    classes: Mapping[str, float] = field(default_factory=lambda: {"rpi4": 0.5, "android": 0.3, "ios": 0.2})
    inferences_per_window: float = 20.0
    labelled_fraction: float = 0.2
    shadow_fraction: float = 0.0
    report_probability: float = 0.95
    error_dispersion: float = 0.0
    accuracy_dispersion: float = 0.0
    latency_dispersion: float = 0.0
    window_seconds: float = 300.0
    report_schema: int = 2
    hostile_devices: int = 0
    hostile_mode: str = "errors"
    baseline_windows: int = 48
    per_device: bool = True

    def __post_init__(self) -> None:
        if self.report_schema not in REPORT_SCHEMAS:
            raise ValueError(f"report_schema must be one of {REPORT_SCHEMAS}, got {self.report_schema!r}")
        if self.hostile_mode not in HOSTILE_MODES:
            raise ValueError(f"hostile_mode must be one of {HOSTILE_MODES}, got {self.hostile_mode!r}")
        if self.baseline_windows < 0:
            raise ValueError(f"baseline_windows must be >= 0, got {self.baseline_windows!r}")
        if not 0 <= self.hostile_devices <= self.devices:
            raise ValueError(f"hostile_devices must be within 0..{self.devices}, "
                             f"got {self.hostile_devices!r}")


def hostile_flood_inferences(fleet: Fleet) -> int:
    """Inferences a ``clean_flood`` device reports per window: the server's cap,
    ``MAX_INFERENCES_PER_SECOND`` × the window's seconds."""
    return int(MAX_INFERENCES_PER_SECOND * fleet.window_seconds)


@dataclass(frozen=True)
class SimResult:
    """How one simulated rollout ended.

    Attributes:
        phase: final phase (``running`` when it still held at ``max_windows``).
        windows: analysis windows run.
        canary_inferences: canary inferences served over the whole rollout.
        reason: the last decision's reason.
        failed_guards: guards that failed in the last window.
        stage_index: stage reached.
        latency_ratio: canary over stable latency quantile as the first latency guard read it
            (pooled) in the last window; None without such a guard or samples.
    """

    phase: Phase
    windows: int
    canary_inferences: int
    reason: str
    failed_guards: tuple[str, ...]
    stage_index: int
    latency_ratio: float | None = None


@dataclass
class _Devices:
    """Per-device state fixed for a rollout: class, sticky bucket, error-rate, wrong-share and
    latency factors."""

    device_class: np.ndarray
    bucket: np.ndarray
    error_factor: np.ndarray
    wrong_factor: np.ndarray
    latency_factor: np.ndarray
    silence: np.ndarray | None = None  # uniform per device, drawn only when an arm has silent devices
    hostile: np.ndarray | None = None  # bool per device (``Fleet.hostile_devices``); None: none
    baseline: Baseline | None = None  # drawn in its own stream (``Fleet.baseline_windows``)

    @classmethod
    def draw(cls, fleet: Fleet, rng: np.random.Generator) -> _Devices:
        shares = np.asarray(list(fleet.classes.values()), dtype=float)
        device_class = rng.choice(len(shares), size=fleet.devices, p=shares / shares.sum())
        bucket = rng.integers(0, 10_000, size=fleet.devices)
        latency_factor = (np.exp(rng.normal(0.0, fleet.latency_dispersion, size=fleet.devices))
                          if fleet.latency_dispersion > 0 else np.ones(fleet.devices))
        hostile = None
        if fleet.hostile_devices:  # the lowest buckets: no draw, so honest devices stay as they were
            hostile = np.zeros(fleet.devices, dtype=bool)
            hostile[np.argsort(bucket, kind="stable")[:fleet.hostile_devices]] = True
        return cls(device_class, bucket, _factors(fleet.error_dispersion, fleet.devices, rng),
                   _factors(fleet.accuracy_dispersion, fleet.devices, rng), latency_factor, hostile=hostile)


@dataclass(frozen=True)
class Baseline:
    """Each device's windows on the stable model before the rollout (``Fleet.baseline_windows``).

    Attributes:
        counts: 4 rows × devices: inferences, inference errors, labelled samples, wrong
            predictions (the rows of :class:`StageCounts`).
        offset: the sketch bucket of ``sketch``'s first column.
        sketch: devices × buckets, its latencies (schema 2; no columns for schema 1).
    """

    counts: np.ndarray
    offset: int
    sketch: np.ndarray

    @classmethod
    def draw(cls, fleet: Fleet, devices: _Devices, stable: Sequence[ArmProfile],
             rng: np.random.Generator) -> Baseline:
        """Draw every device's baseline: ``stable[c]`` is class c's stable model; the device's
        own factors apply as in the rollout (its latency factor rounded to a whole sketch bucket)."""
        profile = [stable[c] for c in devices.device_class]
        mean = fleet.inferences_per_window * fleet.report_probability * fleet.baseline_windows
        n = rng.poisson(mean, size=fleet.devices)
        rates = np.array([p.error_rate for p in profile]) * devices.error_factor
        x = rng.binomial(n, np.clip(rates, 0.0, 1.0))
        lab = rng.binomial(n, fleet.labelled_fraction)
        w = rng.binomial(lab, np.clip((1.0 - np.array([p.accuracy for p in profile])) * devices.wrong_factor,
                                      0.0, 1.0))
        shift = np.rint(np.log2(devices.latency_factor) * _SCALE).astype(np.int64)
        if fleet.hostile_mode == "poisoned_baseline" and devices.hostile is not None:
            poisoned = devices.hostile
            x, w = np.where(poisoned, n, x), np.where(poisoned, lab, w)
            shift = shift + np.where(poisoned, round(math.log2(HOSTILE_SLOW_FACTOR) * _SCALE), 0)
        counts = np.stack([n, x, lab, w]).astype(np.int64)
        if fleet.report_schema == 1:
            return cls(counts, 0, np.zeros((fleet.devices, 0), dtype=np.int64))
        parts = []
        for model in dict.fromkeys(stable):
            rows = np.flatnonzero([p == model for p in profile])
            low, probabilities = _sketch_probabilities(model)
            parts.append((rows, low, rng.multinomial(n[rows], probabilities / probabilities.sum())))
        start = min(low + int(shift[rows].min()) for rows, low, _ in parts if len(rows))
        end = max(low + int(shift[rows].max()) + drawn.shape[1] for rows, low, drawn in parts if len(rows))
        sketch = np.zeros((fleet.devices, end - start), dtype=np.int64)
        for rows, low, drawn in parts:
            columns = (low - start + shift[rows])[:, None] + np.arange(drawn.shape[1])[None, :]
            sketch[rows[:, None], columns] = drawn
        return cls(counts, start, sketch)

    def latency(self, rows: np.ndarray) -> DeviceLatencies | None:
        """The baseline latency rows of the devices ``rows`` selects (None for schema 1)."""
        if self.sketch.shape[1] == 0:
            return None
        return DeviceLatencies(self.offset, self.sketch[rows])


def _factors(dispersion: float, devices: int, rng: np.random.Generator) -> np.ndarray:
    """Per-device Gamma(1/d, d) factors (mean 1, variance d); all 1 when d is 0."""
    if dispersion <= 0:
        return np.ones(devices)
    return rng.gamma(1.0 / dispersion, dispersion, size=devices)


def _profiles(
    classes: Sequence[str], stable: ArmProfile, canary: ArmProfile, canary_by_class: Mapping[str, ArmProfile]
) -> list[ArmProfile]:
    """One profile per group, group = arm × n_classes + class (arm 0 stable, 1 canary)."""
    return [stable for _ in classes] + [canary_by_class.get(c, canary) for c in classes]


@dataclass
class StageCounts:
    """Each device's counts since its stage began, as the server keeps them per stage.

    Attributes:
        counts: 4 rows × devices: inferences, inference errors, labelled samples, wrong predictions.
        v1: devices × ``BUCKET_COUNT``: latencies on the v1 histogram.
        offset: the sketch bucket of ``sketch``'s first column.
        sketch: devices × buckets: latencies at sketch resolution (schema 2; no columns for
            schema 1). Widened as latencies outside its range come in.
    """

    counts: np.ndarray
    v1: np.ndarray
    offset: int = 0
    sketch: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))

    @classmethod
    def empty(cls, devices: int) -> StageCounts:
        return cls(np.zeros((4, devices), dtype=np.int64), np.zeros((devices, BUCKET_COUNT), dtype=np.int64),
                   0, np.zeros((devices, 0), dtype=np.int64))

    def add_latencies(self, device: np.ndarray, index: np.ndarray) -> None:
        """Count one latency of ``device[k]`` in sketch bucket ``index[k]`` for every k."""
        if not len(index):
            return
        self._widen(int(index.min()), int(index.max()))
        np.add.at(self.sketch, (device, index - self.offset), 1)

    def add_counts(self, device: np.ndarray, low: int, counts: np.ndarray) -> None:
        """Add ``counts[k]`` (sketch buckets from ``low`` on) to the row of ``device[k]``."""
        if not len(device):
            return
        self._widen(low, low + counts.shape[1] - 1)
        self.sketch[device, low - self.offset:low - self.offset + counts.shape[1]] += counts

    def _widen(self, low: int, high: int) -> None:
        """Make room for sketch buckets ``low`` to ``high``."""
        width = self.sketch.shape[1]
        if width == 0:
            self.offset, width = low, 0
        start, end = min(self.offset, low), max(self.offset + width, high + 1)
        if (start, end) != (self.offset, self.offset + width):
            wider = np.zeros((self.sketch.shape[0], end - start), dtype=np.int64)
            wider[:, self.offset - start:self.offset - start + width] = self.sketch
            self.sketch, self.offset = wider, start

    def device_latency(self, rows: np.ndarray) -> DeviceLatencies:
        """The sketch rows of the devices ``rows`` selects (a copy), trimmed to their buckets."""
        counts = self.sketch[rows]
        used = np.flatnonzero(counts.any(axis=0))
        if counts.shape[0] == 0 or not len(used):
            return DeviceLatencies()
        return DeviceLatencies(self.offset + int(used[0]), counts[:, used[0]:used[-1] + 1])


def _latency_positions(rng: np.random.Generator, profiles: Sequence[ArmProfile], group: np.ndarray,
                       base: np.ndarray) -> np.ndarray:
    """One latency per entry of ``group`` (each latency's group), as its position on the
    sketch's axis (32 × log2 seconds, so bucket ``ceil(position)``); ``base`` is the position
    of each latency's device's median."""
    sigma = np.array([p.latency_sigma for p in profiles]) * (_SCALE / _LN2)
    positions = base + sigma[group] * rng.standard_normal(len(group))
    shares = np.array([p.latency_slow_share for p in profiles])
    if shares.any():
        slow = rng.random(len(group)) < shares[group]
        slow_group = group[slow]
        extra = (np.log2([p.latency_slow_factor for p in profiles]) * _SCALE)[slow_group]
        alphas = np.array([p.latency_tail_alpha for p in profiles])
        if (alphas > 0).any():  # log2 of a Pareto(α) factor is Exponential(1) / (α ln 2)
            per_unit = np.where(alphas > 0, _SCALE / _LN2 / np.where(alphas > 0, alphas, 1.0), 0.0)
            extra = extra + per_unit[slow_group] * rng.standard_exponential(len(slow_group))
        positions[slow] += extra
    return positions


def _resplit(split: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """``split`` (groups × reasons) changed to sum to ``errors`` per group: errors added split
    as :data:`ERROR_SPLIT` says (in whole counts), errors taken away from the first reasons first."""
    out = split.copy()
    shares = np.array(list(ERROR_SPLIT.values()))
    for g, change in enumerate(errors - split.sum(axis=1)):
        if change > 0:
            out[g] += _exact_counts(int(change), shares)
        for r in range(out.shape[1]) if change < 0 else ():
            taken = min(int(out[g, r]), -int(change))
            out[g, r] -= taken
            change += taken
    return out


def _forge_latencies(fleet: Fleet, stable: Sequence[ArmProfile], flooders: np.ndarray,
                     stage: StageCounts) -> np.ndarray:
    """A ``clean_flood`` window's latencies: for each device ``flooders[k]``, the cap's
    inferences spread exactly as ``stable[k]`` (its class's stable model) spreads them, counted in
    ``stage``'s sketch rows (schema 2). Returns their v1 histograms (one row per device)."""
    total = hostile_flood_inferences(fleet)
    v1_rows = np.zeros((len(flooders), BUCKET_COUNT), dtype=np.int64)
    for profile in dict.fromkeys(stable):  # one stable model for every class
        rows = np.array([p == profile for p in stable])
        if fleet.report_schema == 1:
            v1_rows[rows] = _exact_counts(total, profile.bucket_probabilities())
            continue
        low, probabilities = _sketch_probabilities(profile)
        counts = _exact_counts(total, probabilities)
        used = np.flatnonzero(counts)
        counts, low = counts[used[0]:used[-1] + 1], low + int(used[0])
        stage.add_counts(flooders[rows], low, np.tile(counts, (int(rows.sum()), 1)))
        v1 = np.searchsorted(_V1_POSITIONS, np.arange(low, low + len(counts)) - 0.5, side="left")
        v1_rows[rows] = np.bincount(v1, weights=counts, minlength=BUCKET_COUNT).astype(np.int64)
    return v1_rows


@lru_cache(maxsize=32)
def _sketch_probabilities(profile: ArmProfile) -> tuple[int, np.ndarray]:
    """The first sketch bucket and the probability of each bucket from it for a latency of
    ``profile`` (the buckets holding all but 1e-9 of it either side; the ends take the rest)."""
    low = max(MIN_INDEX, math.floor(math.log2(profile.latency_quantile(1e-9)) * _SCALE))
    high = min(MAX_INDEX, math.ceil(math.log2(profile.latency_quantile(1 - 1e-9)) * _SCALE))
    cdf = profile.latency_cdf(2.0 ** (np.arange(low, high) / _SCALE))  # bucket i: (2^((i-1)/32), 2^(i/32)]
    return low, np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def _exact_counts(total: int, probabilities: np.ndarray) -> np.ndarray:
    """``total`` split as ``probabilities`` say, in whole counts (largest remainders)."""
    raw = total * probabilities / probabilities.sum()
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(counts - raw, kind="stable")[:total - int(counts.sum())]] += 1
    return counts


def simulate_window(
    rng: np.random.Generator,
    fleet: Fleet,
    devices: _Devices,
    profiles: Sequence[ArmProfile],
    percent: float,
    look: int,
    stage: StageCounts | None = None,
) -> Measurements:
    """One window of reports from the whole fleet, aggregated per arm and class.

    ``stage`` accumulates each device's counts over the stage (a new one for this window alone
    when omitted); the windows carry the per-device sums of the stage so far
    (:class:`ArmWindow`'s ``error_devices`` ..., ``labelled_devices`` ..., ``latency_devices``
    ..., and ``device_latency`` with schema 2), as the server computes them. Replace them, do
    not add them, when merging this window into stage-cumulative data (:func:`merge_window`).
    """
    stable, canary = _window_classes(rng, fleet, devices, profiles, percent, stage)
    return Measurements.from_classes(stable, canary, look=look)


_ByClass = dict[str, ArmWindow]


def _window_classes(rng: np.random.Generator, fleet: Fleet, devices: _Devices, profiles: Sequence[ArmProfile],
                    percent: float, stage: StageCounts | None) -> tuple[_ByClass, _ByClass]:
    """:func:`simulate_window`'s windows per class, stable and canary (not pooled yet)."""
    names = list(fleet.classes)
    n_classes = len(names)
    groups = 2 * n_classes
    stage = stage if stage is not None else StageCounts.empty(fleet.devices)
    reporting = rng.random(fleet.devices) < fleet.report_probability
    group = (devices.bucket < round(percent * 100)).astype(int) * n_classes + devices.device_class
    if devices.silence is not None:
        reporting &= devices.silence >= np.array([p.silent_device_share for p in profiles])[group]
    # hostile devices act while canary (and report when they would have); every draw is made as
    # for an honest device first (so honest devices' draws stay as they were), then overridden
    hostile = devices.hostile & (group >= n_classes) & reporting if devices.hostile is not None else None
    mode = fleet.hostile_mode if hostile is not None and hostile.any() else None
    if mode == "poisoned_baseline":  # forged only its history: in the rollout it is honest
        hostile, mode = None, None
    inferences = rng.poisson(fleet.inferences_per_window, size=fleet.devices) * reporting
    rates = np.array([p.error_rate for p in profiles])[group] * devices.error_factor
    errors = rng.binomial(inferences, np.clip(rates, 0.0, 1.0))
    drawn, drawn_errors = inferences, errors  # the honest draws: what the group draws below are of
    if mode == "errors":
        errors = np.where(hostile, inferences, errors)
    elif mode == "clean_flood":
        inferences = np.where(hostile, hostile_flood_inferences(fleet), inferences)
        errors = np.where(hostile, 0, errors)
    inf_g = np.bincount(group, weights=inferences, minlength=groups).astype(np.int64)
    err_g = np.bincount(group, weights=errors, minlength=groups).astype(np.int64)
    dev_g = np.bincount(group, weights=reporting, minlength=groups).astype(np.int64)
    if mode is None:
        split = rng.multinomial(err_g, list(ERROR_SPLIT.values()))
    else:  # the honest draw, then the hostile devices' errors added or taken away
        split = rng.multinomial(np.bincount(group, weights=drawn_errors, minlength=groups).astype(np.int64),
                                list(ERROR_SPLIT.values()))
        split = _resplit(split, err_g)
    # one latency per inference, from its arm's shape times its device's own factor
    device = np.repeat(np.arange(fleet.devices), drawn)
    medians = np.array([p.latency_median_seconds for p in profiles])[group] * devices.latency_factor
    positions = _latency_positions(rng, profiles, group[device], (np.log2(medians) * _SCALE)[device])
    if mode == "slow":
        positions = positions + np.where(hostile[device], math.log2(HOSTILE_SLOW_FACTOR) * _SCALE, 0.0)
    elif mode == "clean_flood":  # their drawn latencies give way to the forged ones below
        keep = ~hostile[device]
        device, positions = device[keep], positions[keep]
    if fleet.report_schema == 2:
        index = np.clip(np.ceil(positions), MIN_INDEX, MAX_INDEX).astype(np.int64)
        stage.add_latencies(device, index)
        # on the v1 histogram as DeviceLatencies.v1_counts maps the sketch
        v1 = np.searchsorted(_V1_POSITIONS, index - 0.5, side="left")
    else:
        v1 = np.searchsorted(_V1_POSITIONS, positions, side="left")
    latency = np.bincount(group[device] * BUCKET_COUNT + v1,
                          minlength=groups * BUCKET_COUNT).reshape(groups, BUCKET_COUNT)
    np.add.at(stage.v1, (device, v1), 1)
    labelled_d = rng.binomial(drawn, fleet.labelled_fraction)
    wrong_rates = (1.0 - np.array([p.accuracy for p in profiles]))[group] * devices.wrong_factor
    wrong_d = rng.binomial(labelled_d, np.clip(wrong_rates, 0.0, 1.0))
    if mode == "clean_flood":
        flooders = np.flatnonzero(hostile)
        stable_of = [profiles[c] for c in devices.device_class[flooders]]  # its class's stable model
        v1_rows = _forge_latencies(fleet, stable_of, flooders, stage)
        stage.v1[flooders] += v1_rows
        np.add.at(latency, group[flooders], v1_rows)
        forged_labels = round(hostile_flood_inferences(fleet) * fleet.labelled_fraction)
        labelled_d = np.where(hostile, forged_labels, labelled_d)
        wrong_d = np.where(hostile, 0, wrong_d)
    labelled = np.bincount(group, weights=labelled_d, minlength=groups).astype(np.int64)
    correct = labelled - np.bincount(group, weights=wrong_d, minlength=groups).astype(np.int64)
    load_failed = rng.binomial(dev_g, [p.load_failure_rate for p in profiles])
    shadow = rng.binomial(inf_g, fleet.shadow_fraction)
    agree = rng.binomial(shadow, [p.shadow_agreement for p in profiles])
    stage.counts += np.stack([inferences, errors, labelled_d, wrong_d])
    spread = _spread(stage, group, groups)
    rows = [(group == g) & (stage.counts[0] > 0) for g in range(groups)]
    if fleet.report_schema == 2:
        precise = [{"device_latency": stage.device_latency(rows[g])} for g in range(groups)]
    else:
        precise = [{"v1_latency_samples": int(latency[g].sum())} for g in range(groups)]
    if fleet.per_device:
        for g in range(groups):
            precise[g]["device_table"] = _device_table(stage, devices.baseline, rows[g],
                                                       precise[g].get("device_latency"))
    windows = [
        ArmWindow(
            inferences=int(inf_g[g]),
            errors=dict(zip(ERROR_SPLIT, map(int, split[g]), strict=True)),
            latency_counts=tuple(latency[g].tolist()),
            labelled_samples=int(labelled[g]),
            labelled_correct=int(correct[g]),
            devices_reporting=int(dev_g[g]),
            devices_load_failed=int(load_failed[g]),
            shadow_samples=int(shadow[g]),
            shadow_agreements=int(agree[g]),
            **spread[g],
            **precise[g],
        )
        for g in range(groups)
    ]
    stable = {name: windows[i] for i, name in enumerate(names)}
    canary = {
        name: windows[n_classes + i]
        for i, name in enumerate(names)
        if windows[n_classes + i].devices_reporting
    }
    return stable, canary


def _device_table(stage: StageCounts, baseline: Baseline | None, rows: np.ndarray,
                  latency: DeviceLatencies | None) -> DeviceTable:
    """The stage's counts of the devices ``rows`` selects, with their baselines (zeros without)."""
    base = (baseline.counts[:, rows] if baseline is not None
            else np.zeros((4, int(rows.sum())), dtype=np.int64)).astype(float)
    return DeviceTable(*stage.counts[:, rows].astype(float), *base, latency=latency,
                       base_latency=baseline.latency(rows) if baseline is not None else None)


def _spread(stage: StageCounts, group: np.ndarray, groups: int) -> list[dict[str, object]]:
    """Per group, the per-device sums of the stage (``SPREAD_FIELDS`` and ``SPREAD_CUTS``)."""
    n, x, lab, w = stage.counts.astype(float)
    slow = np.cumsum(stage.v1[:, ::-1], axis=1)[:, ::-1].astype(float)  # column k: in bucket k or above
    samples, above = slow[:, 0], slow[:, 1:]  # above[:, k]: latencies above bound k
    member = (group[None, :] == np.arange(groups)[:, None]).astype(float)  # groups × devices
    sums = member @ np.stack([n > 0, x * x, x * n, n * n, lab > 0, w * w, w * lab, lab * lab, samples > 0,
                              samples * samples], axis=1)
    above_sq, above_samples = member @ (above * above), member @ (above * samples[:, None])
    return [dict(zip(SPREAD_FIELDS, (round(float(s)) for s in sums[g]), strict=True),
                 device_above_sq=tuple(round(float(a)) for a in above_sq[g]),
                 device_above_samples=tuple(round(float(a)) for a in above_samples[g]))
            for g in range(groups)]


def simulate_rollout(
    spec: GuardSpec,
    stable: ArmProfile,
    canary: ArmProfile,
    *,
    seed: int | Sequence[int] = 0,
    fleet: Fleet | None = None,
    stages: Sequence[Stage] = SIM_STAGES,
    max_windows: int = 60,
    canary_by_class: Mapping[str, ArmProfile] | None = None,
) -> SimResult:
    """Run one rollout window by window until it is promoted, rolled back, paused or times out.

    Args:
        spec: the guards.
        stable: behaviour of the stable model.
        canary: behaviour of the candidate.
        seed: seed (or seed sequence) of the random generator.
        fleet: fleet and reporting; ``Fleet()`` when omitted.
        stages: the ramp.
        max_windows: give up (phase stays ``running``) after this many windows.
        canary_by_class: candidate behaviour overridden for some device classes.

    Returns:
        How the rollout ended and how many canary inferences it served.
    """
    fleet = fleet or Fleet()
    rng = np.random.default_rng(seed)
    devices = _Devices.draw(fleet, rng)
    profiles = _profiles(list(fleet.classes), stable, canary, canary_by_class or {})
    if any(p.silent_device_share > 0 for p in profiles):  # its own stream: other draws stay as they were
        devices = replace(devices, silence=np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])
                          .random(fleet.devices))
    if fleet.baseline_windows and fleet.per_device:  # its own stream too, after the silence's
        devices = replace(devices, baseline=Baseline.draw(
            fleet, devices, profiles[:len(fleet.classes)],
            np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])))
    now = 0.0
    state = start(RolloutState(stages=tuple(stages)), now).state
    cumulative: Measurements | None = None
    served = 0
    decision = None
    verdicts: tuple = ()
    stage = StageCounts.empty(fleet.devices)
    for _ in range(max_windows):
        now += fleet.window_seconds
        stable_w, canary_w = _window_classes(rng, fleet, devices, profiles, state.stage.percent, stage)
        served += sum(w.inferences for w in canary_w.values())
        if cumulative is None:
            cumulative = Measurements.from_classes(stable_w, canary_w, look=state.next_look)
        else:
            cumulative = _merged(cumulative, stable_w, canary_w, state.next_look)
        verdicts = assess(spec, cumulative)
        decision = decide(state, verdicts, now, canary_samples=cumulative.canary.inferences,
                          sample_ratio=stage_sample_ratio(cumulative, devices, state, now))
        state = decision.state
        if decision.action is Action.ADVANCE:
            cumulative = None  # the next stage starts its own cumulative data
            stage = StageCounts.empty(fleet.devices)
        if state.phase.is_terminal or state.phase is Phase.PAUSED:
            break
    failed = tuple(v.guard for v in verdicts if v.outcome is Outcome.FAIL)
    reason = decision.reason if decision else ""
    ratios = [v.stats.get("pooled", {}).get("ratio") for v in verdicts if v.stats.get("metric") == "latency"]
    return SimResult(state.phase, state.windows, served, reason, failed, state.stage_index,
                     ratios[0] if ratios else None)


def stage_sample_ratio(measurements: Measurements, devices: _Devices, state: RolloutState,
                       now: float) -> SampleRatio | None:
    """The sample ratio test: every simulated device is active, reporting ones sent inferences
    in the stage (None at 100%, where there is no stable arm, and in the stage's grace time)."""
    percent = state.stage.percent
    started = state.stage_started_at if state.stage_started_at is not None else now
    if not 0 < percent < 100 or now - started < SRM_GRACE_SECONDS:
        return None
    canary = int((devices.bucket < round(percent * 100)).sum())
    return sample_ratio(canary, measurements.canary.error_devices, len(devices.bucket) - canary,
                        measurements.stable.error_devices, alpha=look_alpha(SRM_ALPHA, measurements.look))


_STAGE_FIELDS = (*SPREAD_FIELDS, *SPREAD_CUTS, "device_latency", "device_table")


def merge_window(cumulative: Measurements, window: Measurements) -> Measurements:
    """Stage-cumulative data plus one window: counts add; the per-device sums and the
    per-device latencies are the window's (already over the whole stage), or stay as they were
    for a class none of whose devices reported in the window."""
    look = max(cumulative.look, window.look)
    return _merged(cumulative, window.stable_by_class, window.canary_by_class, look)


def _merged(cumulative: Measurements, stable: Mapping[str, ArmWindow], canary: Mapping[str, ArmWindow],
            look: int) -> Measurements:
    def merged(before: ArmWindow | None, latest: ArmWindow | None) -> ArmWindow:
        if before is None or latest is None:
            return before if latest is None else latest  # type: ignore[return-value]
        total = replace(before, device_latency=None, device_table=None) + latest  # no stacking of rows
        return replace(total, **{name: getattr(latest, name) for name in _STAGE_FIELDS})

    def by_class(before: Mapping[str, ArmWindow], latest: Mapping[str, ArmWindow]) -> _ByClass:
        return {c: merged(before.get(c), latest.get(c)) for c in sorted(set(before) | set(latest))}

    return Measurements.from_classes(by_class(cumulative.stable_by_class, stable),
                                     by_class(cumulative.canary_by_class, canary), look=look)


def run_rollouts(
    count: int, spec: GuardSpec, stable: ArmProfile, canary: ArmProfile, *, seed: int = 0, **kwargs: object
) -> list[SimResult]:
    """``count`` independent rollouts seeded ``(seed, i)``; kwargs go to :func:`simulate_rollout`."""
    return [simulate_rollout(spec, stable, canary, seed=(seed, i), **kwargs) for i in range(count)]  # type: ignore[arg-type]


def summarize(results: Sequence[SimResult]) -> dict[str, float | int | None]:
    """Shares of each ending, canary inferences to rollback (median, p90), median windows and
    the median of the latency ratio read in each rollout's last window."""
    n = len(results)
    rolled_back = [r.canary_inferences for r in results if r.phase is Phase.ROLLED_BACK]
    ratios = [r.latency_ratio for r in results if r.latency_ratio is not None]
    share = {phase.value: sum(r.phase is phase for r in results) / n for phase in Phase if n}
    return {
        "rollouts": n,
        "rolled_back_rate": share.get("rolled_back", 0.0),
        "promoted_rate": share.get("promoted", 0.0),
        "held_rate": share.get("running", 0.0),
        "paused_rate": share.get("paused", 0.0),
        "median_canary_inferences_to_rollback": float(np.median(rolled_back)) if rolled_back else None,
        "p90_canary_inferences_to_rollback": float(np.percentile(rolled_back, 90)) if rolled_back else None,
        "median_windows": float(np.median([r.windows for r in results])) if n else None,
        "median_latency_ratio": float(np.median(ratios)) if ratios else None,
    }
