"""What one analysis window measured: aggregates per cohort (arm), pooled and per device class.

Usage::

    stable = ArmWindow(inferences=9_000, errors={"runtime_error": 90}, latency_counts=hist_s)
    canary = ArmWindow(inferences=1_000, errors={"runtime_error": 20}, latency_counts=hist_c)
    m = Measurements.from_classes({"rpi4": stable}, {"rpi4": canary}, look=3)

Windows add up (``a + b``): the server merges a stage's windows into stage-cumulative data and
device classes into the pooled arm. Construction never raises on inconsistent numbers (a
report pipeline bug must become an ``error`` verdict, not a crash); :meth:`ArmWindow.problems`
lists them and :func:`rollout_server.analysis.assess` turns them into that verdict.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from itertools import zip_longest
from typing import Any

from edgeship.contract.latency import BUCKET_COUNT, LATENCY_BUCKETS_SECONDS
from edgeship.contract.reports import ERROR_REASONS, INFERENCE_ERROR_REASONS
from rollout_server.analysis.device_latency import DeviceLatencies
from rollout_server.analysis.device_table import DeviceTable
from rollout_server.analysis.stats import design_effect

_COUNT_FIELDS = (
    "inferences",
    "labelled_samples",
    "labelled_correct",
    "devices_reporting",
    "devices_load_failed",
    "shadow_samples",
    "shadow_agreements",
    "v1_latency_samples",
    "error_devices",
    "device_errors_sq",
    "device_errors_inferences",
    "device_inferences_sq",
    "labelled_devices",
    "device_wrong_sq",
    "device_wrong_labelled",
    "device_labelled_sq",
    "latency_devices",
    "device_latency_sq",
)
#: the per-device sums (over a stage, not a window): how unevenly errors, wrong predictions and
#: slow inferences fall on devices. They add over disjoint sets of devices, not over windows of
#: the same devices.
SPREAD_FIELDS: tuple[str, ...] = _COUNT_FIELDS[8:]
#: one value per device (concatenated when arms of disjoint devices add).
_DEVICE_VALUES: tuple[str, ...] = ("device_peak_rss", "device_load_seconds")
#: the per-device sums that are one number per latency bucket bound (``BUCKET_COUNT - 1`` long).
SPREAD_CUTS: tuple[str, ...] = ("device_above_sq", "device_above_samples")


@dataclass(frozen=True)
class ArmWindow:
    """Aggregates of one cohort (stable or canary) over one window, for one class or pooled.

    Attributes:
        inferences: inference attempts (failed ones included).
        errors: error counts by reason (keys from :data:`ERROR_REASONS`).
        latency_counts: every latency of the arm on the v1 histogram (``edgeship.contract.latency``,
            ``BUCKET_COUNT`` long): v1 reports' counts plus schema-2 sketches mapped onto it.
        v1_latency_samples: of those, the latencies that came from v1 reports, known only at
            the v1 histogram's resolution. While any arm has some, the latency guard reads both
            arms at that resolution and says so.
        device_latency: the latencies of schema-2 reports at sketch resolution, per device
            (stage-cumulative; None when not known). The latency guard reads these when no
            latency of either arm is v1-only.
        device_peak_rss, device_load_seconds: one value per device that reported it (its
            largest peak RSS in bytes, its longest model load in seconds, over the stage), for
            the memory and load time guards. They add as devices do (concatenated).
        labelled_samples: inferences with a known label (labelled traffic or golden probes).
        labelled_correct: of those, how many the model got right.
        devices_reporting: devices that reported (device-windows once windows are added; the
            server may put distinct counts here for stage-cumulative data).
        devices_load_failed: of those, devices whose model failed to load or its golden check.
        shadow_samples: inputs on which candidate and stable both ran (shadow mode).
        shadow_agreements: of those, inputs where their top-1 outputs agreed.
        error_devices: devices behind the three per-device sums below (0 when they are not
            known; the error-rate test then treats inferences as independent).
        device_errors_sq: over those devices, the sum of (its inference errors)², its errors
            and inferences counted over the same data as the fields above (the stage).
        device_errors_inferences: the sum of its inference errors × its inferences.
        device_inferences_sq: the sum of (its inferences)².
            With these the error-rate test sees how much errors cluster on some devices
            (:meth:`error_design_effect`). They add up over disjoint sets of devices (device
            classes), not over windows of the same devices: the server computes them per stage.
        labelled_devices, device_wrong_sq, device_wrong_labelled, device_labelled_sq: the same
            for wrong predictions (labelled - correct) on labelled samples, for the accuracy
            test (:meth:`accuracy_design_effect`): devices with labelled samples, and the sums of
            (wrong)², wrong × labelled and (labelled)² over them.
        latency_devices, device_latency_sq: devices with latency samples, and the sum of
            (its latency samples)² over them.
        device_above_sq, device_above_samples: per latency bucket bound ``k`` (``BUCKET_COUNT -
            1`` long; empty when not known), the sums over those devices of (its latencies above
            bound k)² and of its latencies above bound k × its latency samples: how much slow
            inferences cluster on slow devices, for the latency test
            (:meth:`latency_design_effect`).
    """

    inferences: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    latency_counts: tuple[int, ...] = (0,) * BUCKET_COUNT
    labelled_samples: int = 0
    labelled_correct: int = 0
    devices_reporting: int = 0
    devices_load_failed: int = 0
    shadow_samples: int = 0
    shadow_agreements: int = 0
    v1_latency_samples: int = 0
    error_devices: int = 0
    device_errors_sq: int = 0
    device_errors_inferences: int = 0
    device_inferences_sq: int = 0
    labelled_devices: int = 0
    device_wrong_sq: int = 0
    device_wrong_labelled: int = 0
    device_labelled_sq: int = 0
    latency_devices: int = 0
    device_latency_sq: int = 0
    device_above_sq: tuple[int, ...] = ()
    device_above_samples: tuple[int, ...] = ()
    device_latency: DeviceLatencies | None = None
    device_peak_rss: tuple[float, ...] = ()
    device_load_seconds: tuple[float, ...] = ()
    device_table: DeviceTable | None = None

    def __add__(self, other: ArmWindow) -> ArmWindow:
        if not isinstance(other, ArmWindow):
            return NotImplemented
        reasons = dict(self.errors)
        for reason, count in other.errors.items():
            reasons[reason] = reasons.get(reason, 0) + count
        # zip_longest keeps a wrong-length histogram wrong-length, so problems() still sees it.
        latency = tuple(a + b for a, b in zip_longest(self.latency_counts, other.latency_counts, fillvalue=0))
        sums = {name: getattr(self, name) + getattr(other, name) for name in _COUNT_FIELDS}
        cuts = {name: tuple(a + b for a, b in zip_longest(getattr(self, name), getattr(other, name),
                                                          fillvalue=0))
                for name in SPREAD_CUTS}
        device_latency = (other.device_latency if self.device_latency is None
                          else self.device_latency if other.device_latency is None
                          else self.device_latency + other.device_latency)
        table = (other.device_table if self.device_table is None
                 else self.device_table if other.device_table is None
                 else self.device_table + other.device_table)
        return ArmWindow(errors=reasons, latency_counts=latency, device_latency=device_latency,
                         device_table=table,
                         device_peak_rss=self.device_peak_rss + other.device_peak_rss,
                         device_load_seconds=self.device_load_seconds + other.device_load_seconds,
                         **sums, **cuts)

    @property
    def precise_latency(self) -> bool:
        """Whether every latency of the arm is known at sketch resolution (per device)."""
        return (self.v1_latency_samples == 0 and self.device_latency is not None
                and self.device_latency.samples == self.latency_samples)

    def error_count(self, reasons: Iterable[str] = INFERENCE_ERROR_REASONS) -> int:
        """Errors summed over ``reasons``."""
        return sum(self.errors.get(reason, 0) for reason in reasons)

    def error_design_effect(self) -> float:
        """How much clustering of inference errors (:data:`INFERENCE_ERROR_REASONS`) on devices
        inflates the variance of the error rate (:func:`design_effect`)."""
        return design_effect(self.error_devices, self.error_count(), self.inferences, self.device_errors_sq,
                             self.device_errors_inferences, self.device_inferences_sq)

    def accuracy_design_effect(self) -> float:
        """The same for wrong predictions on labelled samples: how much some devices seeing
        harder inputs than others inflates the variance of the accuracy."""
        return design_effect(self.labelled_devices, self.labelled_samples - self.labelled_correct,
                             self.labelled_samples, self.device_wrong_sq, self.device_wrong_labelled,
                             self.device_labelled_sq)

    def latency_design_effect(self, seconds: float) -> float:
        """How much slow devices inflate the variance of the share of latencies above
        ``seconds`` (:func:`design_effect`, at the bucket bounds either side of it, the larger);
        1 when the per-device sums are not known."""
        if any(len(getattr(self, name)) != BUCKET_COUNT - 1 for name in SPREAD_CUTS):
            return 1.0
        bounds = LATENCY_BUCKETS_SECONDS
        n = self.latency_samples
        effects = []
        for k in (bisect.bisect_right(bounds, seconds) - 1, bisect.bisect_left(bounds, seconds)):
            if 0 <= k < len(bounds):
                above = sum(self.latency_counts[k + 1:])
                effects.append(design_effect(self.latency_devices, above, n, self.device_above_sq[k],
                                             self.device_above_samples[k], self.device_latency_sq))
        return max(effects, default=1.0)

    @property
    def latency_samples(self) -> int:
        """How many latencies the histogram holds."""
        return sum(self.latency_counts)

    def problems(self) -> list[str]:
        """Inconsistencies in the numbers, as sentences; empty when the window is usable."""
        return list(self._problems)

    @cached_property
    def _problems(self) -> tuple[str, ...]:
        """Computed once: every guard asks, for every slice."""
        found = [
            f"{name} is negative ({getattr(self, name)})" for name in _COUNT_FIELDS if getattr(self, name) < 0
        ]
        for reason, count in sorted(self.errors.items()):
            if reason not in ERROR_REASONS:
                found.append(f"unknown error reason {reason!r}")
            if count < 0:
                found.append(f"errors[{reason}] is negative ({count})")
        if len(self.latency_counts) != BUCKET_COUNT:
            found.append(f"latency histogram has {len(self.latency_counts)} buckets, expected {BUCKET_COUNT}")
        for name in SPREAD_CUTS:
            cuts = getattr(self, name)
            if cuts and len(cuts) != BUCKET_COUNT - 1:
                found.append(f"{name} has {len(cuts)} values, expected {BUCKET_COUNT - 1} (or none)")
            if any(value < 0 for value in cuts):
                found.append(f"{name} has negative values")
        if any(count < 0 for count in self.latency_counts):
            found.append("latency histogram has a negative count")
        if self.labelled_correct > self.labelled_samples:
            found.append(
                f"labelled_correct {self.labelled_correct} > labelled_samples {self.labelled_samples}"
            )
        if self.devices_load_failed > self.devices_reporting:
            found.append(
                f"devices_load_failed {self.devices_load_failed} > devices_reporting {self.devices_reporting}"
            )
        if self.shadow_agreements > self.shadow_samples:
            found.append(f"shadow_agreements {self.shadow_agreements} > shadow_samples {self.shadow_samples}")
        if self.error_count() > self.inferences:
            found.append(f"inference errors {self.error_count()} > inferences {self.inferences}")
        if self.v1_latency_samples > self.latency_samples:
            found.append(f"v1 latency samples {self.v1_latency_samples} > all ({self.latency_samples})")
        for name in ("device_peak_rss", "device_load_seconds"):
            if any(not value >= 0 for value in getattr(self, name)):
                found.append(f"{name} has a negative or missing value")
        if self.device_latency is not None and self.device_latency.has_negative:
            found.append("per-device latency counts have a negative count")
        if self.latency_samples > self.inferences:
            found.append(f"latency samples {self.latency_samples} > inferences {self.inferences}")
        if self.device_table is not None:
            found += self.device_table.problems()
        return tuple(found)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the inverse of :meth:`from_dict`)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _COUNT_FIELDS}
        out["errors"] = dict(self.errors)
        out["latency_counts"] = list(self.latency_counts)
        for name in SPREAD_CUTS:
            out[name] = list(getattr(self, name))
        for name in ("device_peak_rss", "device_load_seconds"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        if self.device_latency is not None:
            out["device_latency"] = [sorted(map(list, row.items())) for row in self.device_latency.sketches()]
        if self.device_table is not None:
            out["device_table"] = self.device_table.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmWindow:
        """Build from a plain dict; missing fields are zero.

        Raises:
            ValueError: a field has the wrong type or is unknown (naming the field). Values
                that are merely inconsistent are accepted and reported by :meth:`problems`.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"arm window must be an object, got {type(data).__name__}")
        unknown = set(data) - {*_COUNT_FIELDS, *SPREAD_CUTS, *_DEVICE_VALUES, "errors", "latency_counts",
                               "device_latency", "device_table"}
        if unknown:
            raise ValueError(f"unknown arm window field(s): {', '.join(sorted(unknown))}")
        counts = {name: _int(data.get(name, 0), name) for name in _COUNT_FIELDS}
        errors = data.get("errors", {})
        if not isinstance(errors, Mapping):
            raise ValueError(f"errors must be an object of counts, got {errors!r}")
        latency = data.get("latency_counts", [0] * BUCKET_COUNT)
        if not isinstance(latency, (list, tuple)):
            raise ValueError(f"latency_counts must be a list of counts, got {latency!r}")
        cuts = {}
        for name in SPREAD_CUTS:
            values = data.get(name, [])
            if not isinstance(values, (list, tuple)):
                raise ValueError(f"{name} must be a list of integers, got {values!r}")
            cuts[name] = tuple(_int(v, f"{name}[{i}]") for i, v in enumerate(values))
        values = {}
        for name in _DEVICE_VALUES:
            given = data.get(name, [])
            if not isinstance(given, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in given):
                raise ValueError(f"{name} must be a list of numbers, got {given!r}")
            values[name] = tuple(float(v) for v in given)
        table = data.get("device_table")
        return cls(
            device_latency=_device_latency(data.get("device_latency")),
            device_table=None if table is None else DeviceTable.from_dict(table),
            **values,
            errors={str(k): _int(v, f"errors.{k}") for k, v in errors.items()},
            latency_counts=tuple(_int(v, f"latency_counts[{i}]") for i, v in enumerate(latency)),
            **counts,
            **cuts,
        )


def _device_latency(rows: Any) -> DeviceLatencies | None:
    """``to_dict``'s per-device sketches (a list of ``[[index, count], ...]``) back, checked."""
    if rows is None:
        return None
    if not isinstance(rows, list):
        raise ValueError(f"device_latency must be a list of per-device sketches, got {rows!r}")
    sketches = []
    for d, row in enumerate(rows):
        if not isinstance(row, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in row):
            raise ValueError(f"device_latency[{d}] must be a list of [index, count] pairs")
        sketches.append({_int(i, f"device_latency[{d}] index"): _int(c, f"device_latency[{d}] count")
                         for i, c in row})
    return DeviceLatencies.from_sketches(sketches)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def pool(windows: Iterable[ArmWindow]) -> ArmWindow:
    """Sum of windows (pooled classes or stage-cumulative data); empty input → empty window."""
    total = ArmWindow()
    for window in windows:
        total = total + window
    return total


@dataclass(frozen=True)
class Measurements:
    """Stable and canary aggregates for one analysis, pooled and per device class.

    Attributes:
        stable: the stable arm pooled over classes.
        canary: the canary arm pooled over classes.
        stable_by_class: the stable arm per device class.
        canary_by_class: the canary arm per device class.
        look: 1-based index of this analysis in the rollout (``RolloutState.windows + 1``);
            the significance level is corrected for it (docs/rollout-analysis.md).
    """

    stable: ArmWindow
    canary: ArmWindow
    stable_by_class: Mapping[str, ArmWindow] = field(default_factory=dict)
    canary_by_class: Mapping[str, ArmWindow] = field(default_factory=dict)
    look: int = 1

    @classmethod
    def from_classes(
        cls, stable_by_class: Mapping[str, ArmWindow], canary_by_class: Mapping[str, ArmWindow], look: int = 1
    ) -> Measurements:
        """Per-class windows, with the pooled arms computed as their sums."""
        return cls(
            stable=pool(stable_by_class.values()),
            canary=pool(canary_by_class.values()),
            stable_by_class=dict(stable_by_class),
            canary_by_class=dict(canary_by_class),
            look=look,
        )

    @property
    def classes(self) -> list[str]:
        """Device classes seen in either arm, sorted."""
        return sorted(set(self.stable_by_class) | set(self.canary_by_class))

    def arms(self, device_class: str | None = None) -> tuple[ArmWindow, ArmWindow]:
        """``(stable, canary)`` for a class (an empty window where an arm has none), or pooled."""
        if device_class is None:
            return self.stable, self.canary
        empty = ArmWindow()
        return self.stable_by_class.get(device_class, empty), self.canary_by_class.get(device_class, empty)

    def __add__(self, other: Measurements) -> Measurements:
        """Merge two analyses' data (stage-cumulative); the look is the later one's."""
        if not isinstance(other, Measurements):
            return NotImplemented
        classes = set(self.classes) | set(other.classes)
        stable = {c: self.arms(c)[0] + other.arms(c)[0] for c in classes}
        canary = {c: self.arms(c)[1] + other.arms(c)[1] for c in classes}
        return Measurements(
            stable=self.stable + other.stable,
            canary=self.canary + other.canary,
            stable_by_class=stable,
            canary_by_class=canary,
            look=max(self.look, other.look),
        )

    def problems(self) -> list[str]:
        """Inconsistencies of every window, prefixed with where they are."""
        found = [f"stable: {p}" for p in self.stable.problems()] + [
            f"canary: {p}" for p in self.canary.problems()
        ]
        for device_class in self.classes:
            stable, canary = self.arms(device_class)
            found += [f"stable/{device_class}: {p}" for p in stable.problems()]
            found += [f"canary/{device_class}: {p}" for p in canary.problems()]
        if self.look < 1:
            found.append(f"look must be >= 1, got {self.look}")
        return found
