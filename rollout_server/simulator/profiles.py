"""How each release behaves on the simulated devices, and one reporting window drawn from it.

Usage::

    table = ProfileTable({"1": Profile(), "2": Profile(error_rate=0.05)})   # a bad canary
    key, profile = table.lookup("2", "tflite-int8")      # "2/tflite-int8", then "2", then "*"
    behaviour = profile.for_device(rng)                  # this device's draw of the heterogeneity
    counts = draw_window(rng, behaviour, expected_inferences=40.0, labelled_fraction=0.2)

The distributions are those of :mod:`rollout_server.analysis.arm_profile` (:class:`ArmProfile`:
binomial errors split over reasons by ``ERROR_SPLIT``, latencies of the profile's shape binned
on the report sketch (``edgeship.contract.sketch``) by an exact multinomial, binomial
labelled/correct samples, and the Gamma per-device error factor of its
``Fleet.error_dispersion``); here they are drawn per device and window and sent as real
schema-2 reports instead of being aggregated in memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from edgeship.contract.sketch import SCHEMA as SKETCH_SCHEMA
from edgeship.contract.sketch import bucket_bounds, bucket_of, bucket_value
from rollout_server.analysis.arm_profile import ArmProfile, with_latency_factor
from rollout_server.analysis.simulate import ERROR_SPLIT
from rollout_server.simulator.errors import SettingsError

#: profile key used for any release without its own profile.
ANY_RELEASE = "*"
#: ``--profile`` spec keys → (Profile field, factor from the spec's unit).
SPEC_KEYS: dict[str, tuple[str, float]] = {
    "error": ("error_rate", 1.0),
    "p50_ms": ("latency_median_seconds", 1e-3),
    "sigma": ("latency_sigma", 1.0),
    "accuracy": ("accuracy", 1.0),
    "load_fail": ("load_failure_rate", 1.0),
    "agreement": ("shadow_agreement", 1.0),
    "error_dispersion": ("error_dispersion", 1.0),
    "latency_dispersion": ("latency_dispersion", 1.0),
}
_PROBABILITIES = ("error_rate", "accuracy", "load_failure_rate", "shadow_agreement")


@dataclass(frozen=True)
class Profile(ArmProfile):
    """:class:`ArmProfile` (error rate, log-normal latency, accuracy, load failures, shadow
    agreement) plus how much devices differ from each other.

    Attributes:
        error_dispersion: 0 for identical devices; otherwise each device's error rate is the
            profile's times a Gamma(1/d, d) factor (mean 1, variance d), as in
            ``analysis.simulate.Fleet``: a few devices fail much more than the rest.
        latency_dispersion: 0 for identical devices; otherwise each device's latencies are
            multiplied by a log-normal factor with median 1 and this sigma (slow and fast units).

    Raises:
        SettingsError: a probability outside [0, 1], a non-positive median or sigma, or a
            negative dispersion.
    """

    error_dispersion: float = 0.0
    latency_dispersion: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SettingsError(f"profile {f.name} must be a finite number, got {value!r}")
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SettingsError(f"profile {name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.latency_median_seconds <= 0 or self.latency_sigma <= 0:
            raise SettingsError("profile latency median and sigma must be positive, got "
                                f"{self.latency_median_seconds!r} s and {self.latency_sigma!r}")
        if self.error_dispersion < 0 or self.latency_dispersion < 0:
            raise SettingsError("profile dispersions must be >= 0, got "
                                f"{self.error_dispersion!r} and {self.latency_dispersion!r}")

    def for_device(self, rng: np.random.Generator) -> Behaviour:
        """This profile as one device sees it, its heterogeneity drawn once."""
        error_rate = self.error_rate
        if self.error_dispersion > 0:
            k = 1.0 / self.error_dispersion
            error_rate = min(1.0, error_rate * float(rng.gamma(k, self.error_dispersion)))
        factor = float(np.exp(rng.normal(0.0, self.latency_dispersion))) if self.latency_dispersion else 1.0
        offset, probabilities = sketch_probabilities(with_latency_factor(self, factor))
        values = np.array([bucket_value(offset + j) for j in range(len(probabilities))])
        mean_seconds = float(probabilities @ values)
        return Behaviour(error_rate, offset, probabilities, mean_seconds, self.accuracy,
                         self.load_failure_rate, self.shadow_agreement)


def sketch_probabilities(profile: ArmProfile, tail: float = 1e-9) -> tuple[int, np.ndarray]:
    """The probability of each sketch bucket from ``offset`` on, for the profile's latency: the
    buckets between its ``tail`` and ``1 - tail`` quantiles (the rest folded into the ends)."""
    low = bucket_of(profile.latency_quantile(tail))
    high = bucket_of(profile.latency_quantile(1.0 - tail))
    bounds = np.array([bucket_bounds(i)[1] for i in range(low, high)])
    cdf = np.concatenate([[0.0], profile.latency_cdf(bounds), [1.0]])
    return low, np.clip(np.diff(cdf), 0.0, None) / max(cdf[-1] - cdf[0], 1e-300)


@dataclass(frozen=True)
class Behaviour:
    """One device's draw of a :class:`Profile`.

    Attributes:
        error_rate: probability an inference fails.
        sketch_offset: the sketch bucket index of ``sketch_probabilities[0]``.
        sketch_probabilities: latency sketch bucket probabilities from ``sketch_offset`` on.
        mean_latency_seconds: mean of the device's latency.
        accuracy: probability a labelled sample is correct.
        load_failure_rate: probability an install of this release fails to load.
        shadow_agreement: probability this release agrees top-1 with the live model in shadow.
    """

    error_rate: float
    sketch_offset: int
    sketch_probabilities: np.ndarray
    mean_latency_seconds: float
    accuracy: float
    load_failure_rate: float
    shadow_agreement: float


class ProfileTable:
    """Profiles by release: ``"VERSION/VARIANT"``, then ``"VERSION"``, then ``"*"``, then ``default``.

    Args:
        profiles: profile per key.
        default: for releases no key matches (``Profile()``: 1% errors, 40 ms median, 0.9 accuracy).
    """

    def __init__(self, profiles: Mapping[str, Profile] | None = None, default: Profile | None = None) -> None:
        self.profiles = dict(profiles or {})
        self.default = default or Profile()

    def lookup(self, version: str, variant: str) -> tuple[str, Profile]:
        """The key that matched (``"default"`` when none did) and its profile."""
        for key in (f"{version}/{variant}", version, ANY_RELEASE):
            if key in self.profiles:
                return key, self.profiles[key]
        return "default", self.default

    def to_dict(self) -> dict[str, dict[str, float]]:
        """Plain dict for the summary."""
        out = {key: _plain(p) for key, p in self.profiles.items()}
        out["default"] = _plain(self.default)
        return out


def _plain(profile: Profile) -> dict[str, float]:
    return {f.name: getattr(profile, f.name) for f in fields(profile)}


def parse_profile(spec: str) -> tuple[str, Profile]:
    """``VERSION[/VARIANT]:key=value,...`` → (key, profile); unset keys keep ``Profile()``'s values.

    Keys: ``error``, ``p50_ms``, ``sigma``, ``accuracy``, ``load_fail``, ``agreement``,
    ``error_dispersion``, ``latency_dispersion``. Example: ``2:error=0.05,p50_ms=12``.

    Raises:
        SettingsError: naming the bad part of ``spec``.
    """
    release, sep, rest = spec.partition(":")
    release = release.strip()
    if not sep or not release:
        raise SettingsError(f"--profile {spec!r}: expected VERSION[/VARIANT]:key=value,...")
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, raw = item.partition("=")
        if not eq or key.strip() not in SPEC_KEYS:
            raise SettingsError(f"--profile {spec!r}: {item!r} is not key=value with a key in "
                                f"{', '.join(SPEC_KEYS)}")
        name, unit = SPEC_KEYS[key.strip()]
        try:
            values[name] = float(raw) * unit
        except ValueError:
            raise SettingsError(f"--profile {spec!r}: {key.strip()} must be a number, got {raw!r}") from None
    try:
        return release, Profile(**values)
    except SettingsError as err:
        raise SettingsError(f"--profile {spec!r}: {err}") from None


def draw_window(rng: np.random.Generator, behaviour: Behaviour, expected_inferences: float,
                labelled_fraction: float, shadow_share: float = 0.0,
                shadow_agreement: float = 1.0) -> dict[str, Any]:
    """The counting fields of one report (``/v1/reports`` schema).

    Inferences are Poisson; failed ones binomial at the device's error rate and split over
    ``runtime_error`` / ``timeout`` / ``other`` (they count as inferences without a latency
    sample, as on a real device); successful ones fill the latency sketch; labelled samples
    are a binomial share of those, correct ones binomial at the accuracy. ``latency_sum_seconds``
    is the expected sum (successes × the latency's mean): no guard reads it.

    Args:
        rng: the worker's generator.
        behaviour: the device's draw of its release's profile.
        expected_inferences: mean inferences in the window (rate × simulated seconds).
        labelled_fraction: share of successful inferences with a label.
        shadow_share: share of successes also run by the shadow candidate (0 without shadow).
        shadow_agreement: probability the shadow candidate agrees.
    """
    inferences = int(rng.poisson(expected_inferences))
    failed = int(rng.binomial(inferences, behaviour.error_rate))
    split = rng.multinomial(failed, list(ERROR_SPLIT.values()))
    ok = inferences - failed
    latency = rng.multinomial(ok, behaviour.sketch_probabilities)
    labelled = int(rng.binomial(ok, labelled_fraction))
    shadow = int(rng.binomial(ok, shadow_share)) if shadow_share > 0 else 0
    return {
        "inferences": inferences,
        "errors": {reason: int(n) for reason, n in zip(ERROR_SPLIT, split, strict=True) if n},
        "schema": 2,
        "latency": {"schema": SKETCH_SCHEMA, "buckets": [[behaviour.sketch_offset + int(j), int(latency[j])]
                                                         for j in np.flatnonzero(latency)]},
        "latency_sum_seconds": round(ok * behaviour.mean_latency_seconds, 6),
        "labelled": labelled,
        "correct": int(rng.binomial(labelled, behaviour.accuracy)),
        "shadow_samples": shadow,
        "shadow_agree": int(rng.binomial(shadow, shadow_agreement)) if shadow else 0,
    }
