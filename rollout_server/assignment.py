"""What a device should run now: the release (stable or canary) and the variant it can run.

Variant preference, documented for operators: among the release's variants whose runtime the
device reports (same major version or newer than the one the converter validated with) and
whose measured peak memory fits in half the device's RAM,

1. ``passed`` before ``not_validated`` (a not-validated variant, e.g. CoreML checked off
   macOS, is only chosen when nothing validated fits the device);
2. then the lowest p50 latency the converter measured (all gated variants already meet the
   accuracy gates, so the fastest is the best);
3. then the smallest file; then the variant id, so the choice is deterministic.

A device that could not load the chosen variant names it in its next poll
(:func:`refused_variants`): the choice then skips it and offers the next-best variant of the
**same** release. The exclusion never changes the release or cohort (they are chosen first) and
only removes candidates, so a device cannot get anything it could not be assigned anyway.

The choice is a pure function of its inputs (no database, no cache, no clock), so it can be
tested and remembered freely: :mod:`rollout_server.hot_cache` reads the release once (releases
never change once published), calls :func:`choose_variant` and keeps the answer per kind of
device. Devices and rollouts come in as anything with the attributes of :class:`DeviceFacts`
and :class:`RolloutFacts` (the cache's snapshots).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rollout_server.bucketing import assign_cohort
from rollout_server.targeting import Condition, matches

#: manifest runtime name → the names a device may report for it.
RUNTIME_ALIASES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime",),
    "litert": ("litert", "ai-edge-litert", "tflite-runtime", "tensorflow"),
    "coreml": ("coreml", "coremltools"),
    "mnn": ("mnn",),
    "openvino": ("openvino",),
}
MEMORY_SHARE = 0.5


class DeviceFacts(Protocol):
    """What assignment reads of a device."""

    @property
    def id(self) -> str: ...
    @property
    def device_class(self) -> str: ...
    @property
    def ram_bytes(self) -> int: ...
    @property
    def runtimes(self) -> Mapping[str, str]: ...
    @property
    def attributes(self) -> Mapping[str, str]: ...


class RolloutFacts(Protocol):
    """What assignment reads of an active rollout."""

    @property
    def salt(self) -> str: ...
    @property
    def canary_percent(self) -> float: ...
    @property
    def stratify(self) -> bool: ...
    @property
    def target(self) -> Sequence[Condition]: ...


@dataclass(frozen=True)
class VariantInfo:
    variant_id: str
    runtime: str
    runtime_min_version: str
    validation: str
    sha256: str
    size_bytes: int
    peak_rss_bytes: int
    p50_ms: float
    entry: dict[str, Any]  # the manifest's variant entry


@dataclass(frozen=True)
class ReleaseInfo:
    """The immutable parts of a release that assignment needs."""

    id: int
    version: str
    manifest: dict[str, Any]
    variants: tuple[VariantInfo, ...]


def device_runtime_version(device: DeviceFacts, runtime: str) -> str | None:
    for alias in RUNTIME_ALIASES.get(runtime, (runtime,)):
        if alias in (device.runtimes or {}):
            return str(device.runtimes[alias])
    return None


def _major(version: str) -> int:
    head = version.split(".")[0].split(" ")[-1]
    return int(head) if head.isdigit() else 0


def can_run(device: DeviceFacts, variant: VariantInfo) -> bool:
    version = device_runtime_version(device, variant.runtime)
    if version is None:
        return False
    if variant.runtime_min_version and _major(version) < _major(variant.runtime_min_version):
        return False
    return not (device.ram_bytes and variant.peak_rss_bytes > device.ram_bytes * MEMORY_SHARE)


def choose_variant(release: ReleaseInfo, device: DeviceFacts,
                   excluded: frozenset[str] = frozenset()) -> VariantInfo | None:
    """The preferred variant of ``release`` for ``device`` (module docstring), or None.

    Args:
        excluded: ids of variants of ``release`` the device refused (:func:`refused_variants`).
    """
    candidates = [
        v for v in release.variants
        if v.validation in ("passed", "not_validated") and v.variant_id not in excluded and can_run(device, v)
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda v: (v.validation != "passed", v.p50_ms, v.size_bytes, v.variant_id))


def refused_variants(release: ReleaseInfo, version: str | None, variant_ids: Iterable[str]) -> frozenset[str]:
    """The ids among ``variant_ids`` that name variants of ``release``, if the device refused them
    in that release (``version`` is its version); else none: a refusal of another release (the
    device was moved since) says nothing about this one."""
    if version != release.version:
        return frozenset()
    known = {v.variant_id for v in release.variants}
    return frozenset(v for v in variant_ids if v in known)


def cohort_for(device: DeviceFacts, rollout: RolloutFacts) -> str:
    """``canary`` or ``stable`` at the rollout's current share (sticky, see bucketing)."""
    device_class = device.device_class if rollout.stratify else None
    return assign_cohort(rollout.salt, device.id, rollout.canary_percent, device_class)


def in_target(device: DeviceFacts, rollout: RolloutFacts) -> bool:
    """Whether the rollout's target admits the device (rollout_server/targeting.py). A device it
    does not admit is outside the rollout: stable release, no ``rollout_id``, never counted."""
    return matches(rollout.target, device.device_class, device.attributes)
