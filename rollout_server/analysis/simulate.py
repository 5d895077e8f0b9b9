"""A fleet simulator that drives ``assess`` and ``decide`` through a whole rollout.

Usage::

    result = simulate_rollout(GuardSpec.default(), ArmProfile(), ArmProfile(error_rate=0.02), seed=1)
    result.phase, result.canary_inferences        # Phase.ROLLED_BACK, 3_800

Real statistics, nothing mocked: each window every device reports with some probability,
draws Poisson inferences, binomial errors at its arm's rate (optionally with per-device
heterogeneity), latencies from a log-normal per arm binned on ``edgeship.contract.latency`` (exact
multinomial on the bucket probabilities, so no per-request sampling), labelled samples and
correct predictions. Devices are canary while their uniform bucket is below percent × 100,
the same sticky rule as ``rollout_server.bucketing`` (uniform draws stand in for the hash to
keep thousands of rollouts fast). Data are cumulative within a stage, as the server does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import ndtr

from edgeship.contract.latency import BUCKET_COUNT, LATENCY_BUCKETS_SECONDS
from rollout_server.analysis.assess import assess
from rollout_server.analysis.rollout import Action, Phase, RolloutState, decide, start
from rollout_server.analysis.sample_ratio import SRM_ALPHA, SRM_GRACE_SECONDS, SampleRatio, sample_ratio
from rollout_server.analysis.spec import GuardSpec
from rollout_server.analysis.stages import Stage
from rollout_server.analysis.stats import look_alpha
from rollout_server.analysis.verdict import Outcome
from rollout_server.analysis.window import SPREAD_CUTS, SPREAD_FIELDS, ArmWindow, Measurements

#: how inference errors split over reasons in the simulation.
ERROR_SPLIT = {"runtime_error": 0.6, "timeout": 0.3, "other": 0.1}
#: stages of the simulated rollouts: 30 min and a few thousand canary inferences per stage.
SIM_STAGES: tuple[Stage, ...] = (Stage(10, 1800, 2000), Stage(50, 1800, 5000), Stage(100, 0, 0))


@dataclass(frozen=True)
class ArmProfile:
    """How one model behaves on devices.

    Attributes:
        error_rate: probability an inference fails.
        latency_median_seconds: median of the log-normal latency.
        latency_sigma: log-normal shape (0.5 puts p95 at about 2.3× the median).
        accuracy: probability a labelled sample is correct.
        load_failure_rate: probability a reporting device had a load / golden-check failure.
        shadow_agreement: probability candidate and stable agree top-1 (shadow mode).
        silent_device_share: share of the arm's devices that never report (the model crashes
            the app before it can): what the sample ratio check must catch.
    """

    error_rate: float = 0.01
    latency_median_seconds: float = 0.04
    latency_sigma: float = 0.5
    accuracy: float = 0.9
    load_failure_rate: float = 0.002
    shadow_agreement: float = 0.99
    silent_device_share: float = 0.0

    def bucket_probabilities(self) -> np.ndarray:
        """Probability of each latency bucket (``BUCKET_COUNT`` long, summing to 1)."""
        bounds = np.log(np.asarray(LATENCY_BUCKETS_SECONDS))
        cdf = ndtr((bounds - np.log(self.latency_median_seconds)) / self.latency_sigma)
        return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


_LOG_BOUNDS = np.log(np.asarray(LATENCY_BUCKETS_SECONDS))


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
    """

    phase: Phase
    windows: int
    canary_inferences: int
    reason: str
    failed_guards: tuple[str, ...]
    stage_index: int


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

    @classmethod
    def draw(cls, fleet: Fleet, rng: np.random.Generator) -> _Devices:
        shares = np.asarray(list(fleet.classes.values()), dtype=float)
        device_class = rng.choice(len(shares), size=fleet.devices, p=shares / shares.sum())
        bucket = rng.integers(0, 10_000, size=fleet.devices)
        latency_factor = (np.exp(rng.normal(0.0, fleet.latency_dispersion, size=fleet.devices))
                          if fleet.latency_dispersion > 0 else np.ones(fleet.devices))
        return cls(device_class, bucket, _factors(fleet.error_dispersion, fleet.devices, rng),
                   _factors(fleet.accuracy_dispersion, fleet.devices, rng), latency_factor)


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


def simulate_window(
    rng: np.random.Generator,
    fleet: Fleet,
    devices: _Devices,
    profiles: Sequence[ArmProfile],
    percent: float,
    look: int,
    stage_counts: np.ndarray | None = None,
) -> Measurements:
    """One window of reports from the whole fleet, aggregated per arm and class.

    ``stage_counts`` (4 + BUCKET_COUNT rows × devices: inferences, inference errors, labelled,
    wrong predictions, then latencies per bucket) accumulates each device's counts over the
    stage; when given, the windows carry the per-device sums of the stage so far
    (:class:`ArmWindow`'s ``error_devices`` ..., ``labelled_devices`` ..., ``latency_devices``
    ...), as the server computes them. Replace them, do not add them, when merging this window
    into stage-cumulative data.
    """
    names = list(fleet.classes)
    n_classes = len(names)
    groups = 2 * n_classes
    reporting = rng.random(fleet.devices) < fleet.report_probability
    group = (devices.bucket < round(percent * 100)).astype(int) * n_classes + devices.device_class
    if devices.silence is not None:
        reporting &= devices.silence >= np.array([p.silent_device_share for p in profiles])[group]
    inferences = rng.poisson(fleet.inferences_per_window, size=fleet.devices) * reporting
    rates = np.array([p.error_rate for p in profiles])[group] * devices.error_factor
    errors = rng.binomial(inferences, np.clip(rates, 0.0, 1.0))
    inf_g = np.bincount(group, weights=inferences, minlength=groups).astype(np.int64)
    err_g = np.bincount(group, weights=errors, minlength=groups).astype(np.int64)
    dev_g = np.bincount(group, weights=reporting, minlength=groups).astype(np.int64)
    split = rng.multinomial(err_g, list(ERROR_SPLIT.values()))
    # each device its own histogram, from its arm's median times its own factor
    medians = np.array([p.latency_median_seconds for p in profiles])[group] * devices.latency_factor
    sigmas = np.array([p.latency_sigma for p in profiles])[group]
    cdf = ndtr((_LOG_BOUNDS[None, :] - np.log(medians)[:, None]) / sigmas[:, None])
    edges = np.concatenate([np.zeros((fleet.devices, 1)), cdf, np.ones((fleet.devices, 1))], axis=1)
    per_device = rng.multinomial(inferences, np.diff(edges, axis=1))
    latency = np.stack([np.bincount(group, weights=per_device[:, k], minlength=groups)
                        for k in range(BUCKET_COUNT)], axis=1).astype(np.int64)
    labelled_d = rng.binomial(inferences, fleet.labelled_fraction)
    wrong_rates = (1.0 - np.array([p.accuracy for p in profiles]))[group] * devices.wrong_factor
    wrong_d = rng.binomial(labelled_d, np.clip(wrong_rates, 0.0, 1.0))
    labelled = np.bincount(group, weights=labelled_d, minlength=groups).astype(np.int64)
    correct = labelled - np.bincount(group, weights=wrong_d, minlength=groups).astype(np.int64)
    load_failed = rng.binomial(dev_g, [p.load_failure_rate for p in profiles])
    shadow = rng.binomial(inf_g, fleet.shadow_fraction)
    agree = rng.binomial(shadow, [p.shadow_agreement for p in profiles])
    spread = [{} for _ in range(groups)]
    if stage_counts is not None:
        stage_counts += np.concatenate([np.stack([inferences, errors, labelled_d, wrong_d]), per_device.T])
        n, x, lab, w = stage_counts[:4]
        slow = np.cumsum(stage_counts[4:][::-1], axis=0)[::-1]  # row k: latencies in bucket k or above
        samples, above = slow[0], slow[1:]  # above[k]: latencies above bound k
        sums = [np.bincount(group, weights=v, minlength=groups)
                for v in ((n > 0).astype(float), x * x, x * n, n * n, (lab > 0).astype(float), w * w, w * lab,
                          lab * lab, (samples > 0).astype(float), samples * samples)]
        above_sq = [np.bincount(group, weights=a * a, minlength=groups) for a in above]
        above_samples = [np.bincount(group, weights=a * samples, minlength=groups) for a in above]
        spread = [dict(zip(SPREAD_FIELDS, (round(float(s[g])) for s in sums), strict=True),
                       device_above_sq=tuple(round(float(a[g])) for a in above_sq),
                       device_above_samples=tuple(round(float(a[g])) for a in above_samples))
                  for g in range(groups)]
    windows = [
        ArmWindow(
            inferences=int(inf_g[g]),
            errors=dict(zip(ERROR_SPLIT, map(int, split[g]), strict=True)),
            latency_counts=tuple(int(c) for c in latency[g]),
            labelled_samples=int(labelled[g]),
            labelled_correct=int(correct[g]),
            devices_reporting=int(dev_g[g]),
            devices_load_failed=int(load_failed[g]),
            shadow_samples=int(shadow[g]),
            shadow_agreements=int(agree[g]),
            **spread[g],
        )
        for g in range(groups)
    ]
    stable = {name: windows[i] for i, name in enumerate(names)}
    canary = {
        name: windows[n_classes + i]
        for i, name in enumerate(names)
        if windows[n_classes + i].devices_reporting
    }
    return Measurements.from_classes(stable, canary, look=look)


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
    now = 0.0
    state = start(RolloutState(stages=tuple(stages)), now).state
    cumulative: Measurements | None = None
    served = 0
    decision = None
    verdicts: tuple = ()
    stage_counts = np.zeros((4 + BUCKET_COUNT, fleet.devices))
    for _ in range(max_windows):
        now += fleet.window_seconds
        window = simulate_window(rng, fleet, devices, profiles, state.stage.percent, state.next_look,
                                 stage_counts)
        served += window.canary.inferences
        cumulative = window if cumulative is None else _merged(cumulative, window)
        verdicts = assess(spec, cumulative)
        decision = decide(state, verdicts, now, canary_samples=cumulative.canary.inferences,
                          sample_ratio=stage_sample_ratio(cumulative, devices, state, now))
        state = decision.state
        if decision.action is Action.ADVANCE:
            cumulative = None  # the next stage starts its own cumulative data
            stage_counts[:] = 0
        if state.phase.is_terminal or state.phase is Phase.PAUSED:
            break
    failed = tuple(v.guard for v in verdicts if v.outcome is Outcome.FAIL)
    reason = decision.reason if decision else ""
    return SimResult(state.phase, state.windows, served, reason, failed, state.stage_index)


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


def _merged(cumulative: Measurements, window: Measurements) -> Measurements:
    """Stage-cumulative data plus one window: counts add, the per-device sums are the window's
    (already over the whole stage)."""
    total = cumulative + window

    def spread_of(arm: ArmWindow, latest: ArmWindow) -> ArmWindow:
        return replace(arm, **{name: getattr(latest, name) for name in (*SPREAD_FIELDS, *SPREAD_CUTS)})

    return Measurements.from_classes(
        {c: spread_of(total.arms(c)[0], window.arms(c)[0]) for c in total.stable_by_class},
        {c: spread_of(total.arms(c)[1], window.arms(c)[1]) for c in total.canary_by_class},
        look=total.look,
    )


def run_rollouts(
    count: int, spec: GuardSpec, stable: ArmProfile, canary: ArmProfile, *, seed: int = 0, **kwargs: object
) -> list[SimResult]:
    """``count`` independent rollouts seeded ``(seed, i)``; kwargs go to :func:`simulate_rollout`."""
    return [simulate_rollout(spec, stable, canary, seed=(seed, i), **kwargs) for i in range(count)]  # type: ignore[arg-type]


def summarize(results: Sequence[SimResult]) -> dict[str, float | int | None]:
    """Shares of each ending and canary inferences to rollback (median, p90)."""
    n = len(results)
    rolled_back = [r.canary_inferences for r in results if r.phase is Phase.ROLLED_BACK]
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
    }


def with_latency_factor(profile: ArmProfile, factor: float) -> ArmProfile:
    """The profile with every latency multiplied by ``factor`` (so every quantile is)."""
    return replace(profile, latency_median_seconds=profile.latency_median_seconds * factor)
