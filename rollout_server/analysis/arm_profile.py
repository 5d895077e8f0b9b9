"""How one model's inferences behave on the simulated devices: errors, accuracy, and the latency
shape (a log-normal body, optionally with a share of slower inferences: a second mode, a
throttled or a heavy tail). Used by the fleet simulators (``analysis/simulate.py``,
``rollout_server/simulator``) and the rollout statistics benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr

from edgeship.contract.latency import LATENCY_BUCKETS_SECONDS

#: named latency shapes: the :class:`ArmProfile` latency parameters each sets (the median is
#: the profile's). ``with_latency_shape(profile, name, median)`` applies one.
LATENCY_SHAPES: dict[str, dict[str, float]] = {
    # log-normal, p95 ≈ 2.3× the median
    "lognormal": {"latency_sigma": 0.5},
    # 70% around the median, 30% around 2.5× it (two modes of σ 0.2: clearly apart)
    "two_modes": {"latency_sigma": 0.2, "latency_slow_share": 0.3, "latency_slow_factor": 2.5},
    # a log-normal body with 5% of inferences × a Pareto(α 1.5) factor (≥ 1): a long tail
    "heavy_tail": {"latency_sigma": 0.5, "latency_slow_share": 0.05, "latency_tail_alpha": 1.5},
    # 10% of inferences at 3× the median, as on a thermally throttled device; p95 is then the
    # throttled inferences' median
    "throttled": {"latency_sigma": 0.2, "latency_slow_share": 0.1, "latency_slow_factor": 3.0},
    # nearly constant: p95 only 8.6% above the median
    "tight": {"latency_sigma": 0.05},
}
_NO_SLOW_PART = {"latency_slow_share": 0.0, "latency_slow_factor": 1.0, "latency_tail_alpha": 0.0}


@dataclass(frozen=True)
class ArmProfile:
    """How one model behaves on devices.

    The latency of an inference is ``median × exp(sigma × Z)`` (Z standard normal: the body),
    except for a share ``latency_slow_share`` of inferences, which take that times
    ``latency_slow_factor`` and, when ``latency_tail_alpha`` is above 0, times a Pareto factor
    ``U ** (-1 / alpha)`` (≥ 1, heavy-tailed). Every part scales with the median, so
    :func:`with_latency_factor` multiplies every latency, hence every quantile, by its factor.
    :data:`LATENCY_SHAPES` names the shapes the benchmark uses (:func:`with_latency_shape`).

    Attributes:
        error_rate: probability an inference fails.
        latency_median_seconds: median of the log-normal body (the whole latency's median when
            there is no slow part).
        latency_sigma: log-normal shape of the body (0.5 puts p95 at about 2.3× the median).
        accuracy: probability a labelled sample is correct.
        load_failure_rate: probability a reporting device had a load / golden-check failure.
        shadow_agreement: probability candidate and stable agree top-1 (shadow mode).
        silent_device_share: share of the arm's devices that never report (the model crashes
            the app before it can): what the sample ratio check must catch.
        latency_slow_share: share of inferences in the slow part (0: none).
        latency_slow_factor: the slow part's latency over the body's (a second mode, or
            throttled inferences).
        latency_tail_alpha: when above 0, the slow part is also multiplied by a Pareto factor
            of this index (1.5: a heavy tail, infinite variance).
    """

    error_rate: float = 0.01
    latency_median_seconds: float = 0.04
    latency_sigma: float = 0.5
    accuracy: float = 0.9
    load_failure_rate: float = 0.002
    shadow_agreement: float = 0.99
    silent_device_share: float = 0.0
    latency_slow_share: float = 0.0
    latency_slow_factor: float = 1.0
    latency_tail_alpha: float = 0.0

    def latency_cdf(self, seconds: np.ndarray | float) -> np.ndarray:
        """Probability that a latency is at most ``seconds`` (the exact mixture, elementwise)."""
        x = np.log(np.maximum(np.asarray(seconds, dtype=float), 1e-300))
        sigma, share = self.latency_sigma, self.latency_slow_share
        body = ndtr((x - math.log(self.latency_median_seconds)) / sigma)
        if share <= 0:
            return body
        a = (x - math.log(self.latency_median_seconds * self.latency_slow_factor)) / sigma
        alpha = self.latency_tail_alpha
        if alpha > 0:
            # P(B·P ≤ x) for a log-normal B and a Pareto P: Φ(a) - (x/m)^-α e^{α²σ²/2} Φ(a - ασ)
            log_tail = -alpha * sigma * a + (alpha * sigma) ** 2 / 2 + log_ndtr(a - alpha * sigma)
            slow = np.maximum(ndtr(a) - np.exp(log_tail), 0.0)
        else:
            slow = ndtr(a)
        return (1.0 - share) * body + share * slow

    def latency_quantile(self, q: float) -> float:
        """The true ``q`` quantile (0 < q < 1) of the latency, in seconds."""
        m = self.latency_median_seconds
        low, high = math.log(m) - 40 * self.latency_sigma, math.log(m) + 40 * self.latency_sigma
        if self.latency_slow_share > 0:
            high += math.log(self.latency_slow_factor)
            if self.latency_tail_alpha > 0:
                high += 60.0 / self.latency_tail_alpha
        return math.exp(brentq(lambda x: float(self.latency_cdf(math.exp(x))) - q, low, high, xtol=1e-12))

    def bucket_probabilities(self) -> np.ndarray:
        """Probability of each v1 latency bucket (``BUCKET_COUNT`` long, summing to 1)."""
        cdf = self.latency_cdf(np.asarray(LATENCY_BUCKETS_SECONDS))
        return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def with_latency_factor(profile: ArmProfile, factor: float) -> ArmProfile:
    """The profile with every latency multiplied by ``factor`` (so every quantile is)."""
    return replace(profile, latency_median_seconds=profile.latency_median_seconds * factor)


def with_latency_shape(profile: ArmProfile, shape: str, median_seconds: float | None = None) -> ArmProfile:
    """The profile with one of :data:`LATENCY_SHAPES` (and its body's median, when given).

    Raises:
        ValueError: an unknown shape.
    """
    if shape not in LATENCY_SHAPES:
        raise ValueError(f"unknown latency shape {shape!r}; known: {', '.join(LATENCY_SHAPES)}")
    median = profile.latency_median_seconds if median_seconds is None else median_seconds
    return replace(profile, latency_median_seconds=median, **{**_NO_SLOW_PART, **LATENCY_SHAPES[shape]})
