"""Assignment is a pure function of device, rollout and release data: no database, no cache."""

from __future__ import annotations

import ast
import inspect
from types import SimpleNamespace

from rollout_server import assignment, targeting
from rollout_server.assignment import ReleaseInfo, VariantInfo, choose_variant, cohort_for

GIB = 2**30


def variant(variant_id: str, runtime: str, p50_ms: float, validation: str = "passed",
            peak_rss_bytes: int = 0) -> VariantInfo:
    return VariantInfo(variant_id, runtime, "2.0", validation, "0" * 64, 1000, peak_rss_bytes, p50_ms, {})


def device(**runtimes: str) -> SimpleNamespace:
    """A plain object with a device's attributes: assignment needs nothing else."""
    return SimpleNamespace(id="device-1", device_class="rpi4", ram_bytes=4 * GIB, runtimes=runtimes)


def test_the_fastest_validated_variant_the_device_can_run_is_chosen_from_plain_inputs():
    release = ReleaseInfo(1, "1", {}, (
        variant("onnx", "onnxruntime", 1.0),                      # runtime not on the device
        variant("tflite-slow", "litert", 3.0),
        variant("tflite-fast", "litert", 2.0),
        variant("tflite-unchecked", "litert", 0.5, validation="not_validated"),
        variant("tflite-big", "litert", 1.0, peak_rss_bytes=3 * GIB),  # over half the RAM
    ))
    assert choose_variant(release, device(**{"ai-edge-litert": "2.3"})).variant_id == "tflite-fast"
    assert choose_variant(release, device(coreml="8.0")) is None


def test_the_cohort_follows_the_rollout_share():
    assert cohort_for(device(), SimpleNamespace(salt="salt", canary_percent=0.0, stratify=False)) == "stable"
    assert cohort_for(device(), SimpleNamespace(salt="salt", canary_percent=100.0, stratify=True)) == "canary"


def imports_of(module) -> set[str]:
    tree = ast.parse(inspect.getsource(module))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return imported | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                       for alias in node.names}


def test_assignment_imports_neither_the_database_nor_the_cache():
    assert imports_of(assignment) <= {"__future__", "collections.abc", "dataclasses", "typing",
                                      "rollout_server.bucketing", "rollout_server.targeting"}
    assert imports_of(targeting) <= {"__future__", "collections.abc", "dataclasses", "functools", "re",
                                     "typing"}
