"""What a device should run now: the release (stable or canary) and the variant it can run.

Variant preference, documented for operators: among the release's variants whose runtime the
device reports (same major version or newer than the one the converter validated with) and
whose measured peak memory fits in half the device's RAM,

1. ``passed`` before ``not_validated`` (a not-validated variant, e.g. CoreML checked off
   macOS, is only chosen when nothing validated fits the device);
2. then the lowest p50 latency the converter measured (all gated variants already meet the
   accuracy gates, so the fastest is the best);
3. then the smallest file; then the variant id, so the choice is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollout_server.analysis import RolloutState
from rollout_server.bucketing import assign_cohort
from rollout_server.models import Device, Release, Rollout, Variant

#: manifest runtime name → the names a device may report for it.
RUNTIME_ALIASES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime",),
    "litert": ("litert", "ai-edge-litert", "tflite-runtime", "tensorflow"),
    "coreml": ("coreml", "coremltools"),
}
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class Choice:
    release: Release
    variant: Variant
    cohort: str
    rollout: Rollout | None


def device_runtime_version(device: Device, runtime: str) -> str | None:
    for alias in RUNTIME_ALIASES.get(runtime, (runtime,)):
        if alias in (device.runtimes or {}):
            return str(device.runtimes[alias])
    return None


def _major(version: str) -> int:
    head = version.split(".")[0].split(" ")[-1]
    return int(head) if head.isdigit() else 0


def can_run(device: Device, variant: Variant) -> bool:
    version = device_runtime_version(device, variant.runtime)
    if version is None:
        return False
    if variant.runtime_min_version and _major(version) < _major(variant.runtime_min_version):
        return False
    peak = variant.peak_rss_bytes or 0
    return not (device.ram_bytes and peak > device.ram_bytes * MEMORY_SHARE)


def choose_variant(release: Release, device: Device) -> Variant | None:
    """The preferred variant of ``release`` for ``device`` (module docstring), or None."""
    metrics = {v.variant_id: v for v in release.variants}
    candidates = [
        v for v in metrics.values() if v.validation in ("passed", "not_validated") and can_run(device, v)
    ]
    if not candidates:
        return None
    p50 = {e["id"]: (e.get("metrics") or {}).get("latency_ms", {}).get("p50") for e in
           release.manifest.get("variants", [])}
    return min(candidates, key=lambda v: (
        v.validation != "passed", p50.get(v.variant_id) or float("inf"), v.size_bytes, v.variant_id))


def cohort_for(device: Device, rollout: Rollout) -> str:
    """``canary`` or ``stable`` at the rollout's current share (sticky, see bucketing)."""
    percent = RolloutState.from_dict(rollout.state).canary_percent
    device_class = device.device_class if rollout.spec.get("stratify") else None
    return assign_cohort(rollout.salt, device.id, percent, device_class)
