"""Measuring converted files side by side: outputs on the eval set, quality against the PyTorch
reference, and p50 latency taken round-robin over every file in one loop (on a shared machine
the load then falls on all files alike, so the ratios hold better than separate runs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def runner_for(fmt: str, path: Path, input_names: list[str], output_names: list[str]) -> Any:
    """The device agent's runner for ``path``, one thread."""
    if fmt == "onnx":
        from edgeship.runtimes.onnx import OnnxRunner

        return OnnxRunner(path, input_names, threads=1)
    from edgeship.runtimes.litert import LiteRTRunner

    return LiteRTRunner(path, input_names, threads=1, output_names=output_names)


def outputs_on(runner: Any, samples: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    collected = [runner.run(sample) for sample in samples]
    return [np.concatenate([c[k] for c in collected]) for k in range(len(collected[0]))]


def quality(outputs: list[np.ndarray], reference: list[np.ndarray], labels: np.ndarray | None) -> dict:
    """``cosine`` (mean over samples, all outputs), and with labels ``accuracy_drop`` (ratio)."""
    from edgeship.contract.fidelity import accuracy, per_sample_cosine

    outputs = [o.reshape(r.shape) for o, r in zip(outputs, reference, strict=True)]
    result = {"cosine": float(per_sample_cosine(outputs, reference).mean())}
    if labels is not None:
        result["accuracy_drop"] = accuracy(reference[0], labels) - accuracy(outputs[0], labels)
    return result


def interleaved_p50_ms(runners: dict[str, Any], samples: list[dict[str, np.ndarray]],
                       rounds: int = 2, warmup: int = 3) -> dict[str, float]:
    """p50 latency per runner, one sample at a time, the runners taking turns per sample."""
    for runner in runners.values():
        for sample in samples[:warmup]:
            runner.run(sample)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for sample in samples:
            for name, runner in runners.items():
                started = time.perf_counter()
                runner.run(sample)
                times[name].append((time.perf_counter() - started) * 1e3)
    return {name: float(np.median(values)) for name, values in times.items()}
