"""Measure a model on its runtime in a clean process: outputs, latency and peak memory.

Run as ``python -m edgeship.runtimes.measure REQUEST.json``. The request names the model,
its format, the inputs file (``.npz`` keyed by input name, samples stacked on axis 0), the
batch size and where to write the outputs. The process prints one JSON line::

    {"runtime": "onnxruntime", "version": "1.32.0", "latencies_ms": [...],
     "peak_rss_bytes": 61234176, "baseline_rss_bytes": 48123904}

A separate process keeps the converter's own memory (torch) out of the peak-memory figure, so
the number is close to what the model costs on a device. Only numpy and the runtime load here.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from edgeship.runtimes import RuntimeUnavailable, open_runner


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` survives ``execve``
    and would report the parent's (torch-sized) peak. Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def measure(request: dict) -> dict:
    """Load the model, run every sample once after ``warmup`` runs, save the outputs."""
    baseline = peak_rss_bytes()
    names: list[str] = request["input_names"]
    batch = int(request["batch"])
    with np.load(request["inputs"], allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in names}
    count = len(arrays[names[0]]) // batch
    runner = open_runner(
        Path(request["model"]), request["format"], names,
        io=request.get("io"), threads=request.get("threads"),
        output_names=request.get("output_names"),
    )

    def sample(i: int) -> dict[str, np.ndarray]:
        return {n: arrays[n][i * batch : (i + 1) * batch] for n in names}

    for i in range(min(int(request.get("warmup", 3)), count)):
        runner.run(sample(i))
    latencies: list[float] = []
    outputs: list[list[np.ndarray]] = []
    for i in range(count):
        feeds = sample(i)
        start = time.perf_counter()
        result = runner.run(feeds)
        latencies.append((time.perf_counter() - start) * 1000.0)
        outputs.append(result)
    stacked = {f"output_{k}": np.concatenate([o[k] for o in outputs]) for k in range(len(outputs[0]))}
    np.savez(request["out"], **stacked)
    return {
        "runtime": runner.runtime,
        "version": runner.version,
        "latencies_ms": latencies,
        "peak_rss_bytes": peak_rss_bytes(),
        "baseline_rss_bytes": baseline,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    request = json.loads(Path(args[0]).read_text())
    try:
        result = measure(request)
    except RuntimeUnavailable as err:
        print(json.dumps({"unavailable": str(err)}))
        return 0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
