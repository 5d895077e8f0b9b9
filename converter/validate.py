"""Validate a built variant on its real runtime, in a separate process, over the eval set."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.data import SampleSet
from converter.export.base import BuiltVariant
from converter.reference import Reference
from converter.task_metrics import task_fidelity
from edgeship.contract import fidelity as fm

MEASURE_TIMEOUT_SECONDS = 1800


@dataclass
class Measurement:
    """What the runtime did with the variant."""

    available: bool
    runtime: str = ""
    version: str = ""
    outputs: list[np.ndarray] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    unavailable_reason: str = ""


def host_description() -> str:
    """Where latency was measured, e.g. ``x86_64 Linux 6.1, 2 cpus`` (no host name)."""
    release = platform.release().split("-")[0]
    return f"{platform.machine()} {platform.system()} {release}, {os.cpu_count()} cpus"


def write_eval_inputs(samples: SampleSet, path: Path) -> Path:
    np.savez(path, **samples.arrays)
    return path


def measure_on_runtime(
    built: BuiltVariant,
    format: str,
    samples: SampleSet,
    inputs_file: Path,
    threads: int,
    warmup: int,
    output_names: list[str],
) -> Measurement:
    """Run ``built`` on its runtime in a child process over every sample in ``inputs_file``.

    Raises:
        RuntimeError: the child process crashed or printed no result (the message carries the
            last line of its error output).
    """
    with tempfile.TemporaryDirectory(prefix="edgeship-measure-") as tmp:
        request = {
            "model": str(built.path),
            "format": format,
            "inputs": str(inputs_file),
            "input_names": [s.name for s in samples.specs],
            "output_names": output_names,
            "batch": samples.batch,
            "io": built.io,
            "threads": threads,
            "warmup": warmup,
            "out": str(Path(tmp) / "outputs.npz"),
        }
        request_path = Path(tmp) / "request.json"
        request_path.write_text(json.dumps(request))
        proc = subprocess.run(
            [sys.executable, "-m", "edgeship.runtimes.measure", str(request_path)],
            capture_output=True, text=True, timeout=MEASURE_TIMEOUT_SECONDS,
            env={**os.environ, "PYTHONPATH": _python_path()},
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"runtime failed on {built.path.name}: {tail}")
        result = json.loads(lines[-1])
        if "unavailable" in result:
            return Measurement(available=False, unavailable_reason=result["unavailable"])
        with np.load(request["out"]) as npz:
            outputs = [npz[f"output_{k}"] for k in range(len(npz.files))]
    return Measurement(
        available=True,
        runtime=result["runtime"],
        version=result["version"],
        outputs=outputs,
        latencies_ms=result["latencies_ms"],
        peak_rss_bytes=result["peak_rss_bytes"],
    )


def variant_metrics(
    measurement: Measurement,
    reference: Reference,
    labels: np.ndarray | None,
    task_kind: str,
    agreement_cosine: float,
    golden_rows: int,
) -> dict[str, Any]:
    """Metrics for the manifest.

    Fidelity on the eval set as the task measures it (:func:`converter.task_metrics.task_fidelity`),
    accuracy and its drop (classification with labels), the golden probe set's agreement and
    error (its first ``golden_rows`` rows, by the device's rule: top-1 for classification,
    cosine >= ``agreement_cosine`` otherwise), latency percentiles, peak memory and the host.
    """
    outputs = measurement.outputs
    classification = task_kind == "classification"
    names = [s.name for s in reference.output_specs]
    result: dict[str, Any] = task_fidelity(outputs, reference.outputs, names, task_kind,
                                           agreement_cosine)
    if labels is not None and classification:
        result["accuracy"] = fm.accuracy(outputs[0], labels)
        result["accuracy_drop"] = fm.accuracy(reference.outputs[0], labels) - result["accuracy"]
    golden = fm.fidelity(
        [o[:golden_rows] for o in outputs],
        [r[:golden_rows] for r in reference.outputs],
        classification, agreement_cosine,
    )
    result["golden"] = {"agreement": golden["agreement"], "max_abs_err": golden["max_abs_err"]}
    result["latency_ms"] = {
        "p50": fm.percentile_ms(measurement.latencies_ms, 50),
        "p95": fm.percentile_ms(measurement.latencies_ms, 95),
    }
    if measurement.peak_rss_bytes:
        result["peak_rss_bytes"] = measurement.peak_rss_bytes
    result["host"] = host_description()
    return rounded(result)


def rounded(value: Any) -> Any:
    """Floats to 6 significant digits, non-finite ones to ``None`` (JSON null), in nested dicts."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def _python_path() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{existing}" if existing else root
