"""MNN and ExecuTorch benchmark (``compress_bench --only runtimes``): their int8 variants of the
trained ResNet-style CNN against the uniform int8 variant (``onnx-int8-static``) in one run.

One conversion builds ``onnx-fp32``, ``onnx-int8-static`` (tuning off: the uniform variant),
``mnn-fp32``, ``mnn-int8``, ``executorch-xnnpack-fp32`` and ``executorch-xnnpack-int8``; each is
validated on its own runtime over the same eval set, so size and accuracy compare directly. p50
latencies are then taken again with every shipped file loaded at once and the runners taking
turns per sample (one thread; :func:`benchmarks.convert_measure.interleaved_p50_ms`): the
validation p50s are measured one variant after another, and on a shared host the load moves in
between. Rows are information (no target): what a user gains or loses by picking the runtime
their devices have.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

MODEL = "resnet-style"
#: samples in the interleaved latency loop (two rounds).
LATENCY_SAMPLES = 60
#: (variant, its runtime's fp32 variant) compared with the uniform int8 variant.
COMPARED = (("mnn-int8", "mnn-fp32"), ("executorch-xnnpack-int8", "executorch-xnnpack-fp32"))


def bench_runtimes(out: Path, key: Path) -> list[dict[str, Any]]:
    """Rows per runtime: int8 size, accuracy and p50 against ``onnx-int8-static``, and the
    runtime's fp32 p50 against ``onnx-fp32``."""
    from benchmarks.compress_rows import row
    from benchmarks.convert_bench import bench_models
    from converter import run_conversion
    from converter.progress import Progress

    model = bench_models()[MODEL]
    directory = model.prepare(out)
    recipe = directory / "runtimes-recipe.toml"
    recipe.write_text("[validation]\nthreads = 1\n" + "".join(
        f'[[variants]]\nkind = "{kind}"\n' + ("tuning = false\n" if kind == "onnx-int8-static" else "")
        for kind in ("onnx-fp32", "onnx-int8-static", "mnn-fp32", "mnn-int8",
                     "executorch-xnnpack-fp32", "executorch-xnnpack-int8")))
    print(f"runtimes: {MODEL} on onnxruntime, MNN and ExecuTorch (XNNPACK)...", flush=True)
    started = time.monotonic()
    conversion = run_conversion(
        directory / "model.pt", list(model.input_specs), directory / "eval.npz",
        directory / "runtimes-release", calib_data=directory / "calib.npz", recipe=recipe,
        model_name=MODEL, version="runtimes-bench", signing_key=key, force=True, progress=Progress(),
    )
    results = {r.id: r for r in conversion.results}
    uniform, onnx_fp32 = results["onnx-int8-static"], results["onnx-fp32"]
    p50 = _interleaved_p50(conversion, directory / "eval.npz", [s.split(":")[0] for s in model.input_specs])
    rows = []
    for variant_id, fp32_id in COMPARED:
        v, fp32 = results[variant_id], results[fp32_id]
        rows += [
            row("runtimes", f"{variant_id} size (×onnx-int8-static)",
                 p50_ratio(v.size_bytes, uniform.size_bytes), "info", None,
                 f"{_kb(v.size_bytes)} vs {_kb(uniform.size_bytes)} KB; status {v.status}"
                 + (f" ({v.reason})" if v.reason else "")),
            row("runtimes", f"{variant_id} accuracy minus onnx-int8-static (pts)",
                 pts(_metric(v, "accuracy"), _metric(uniform, "accuracy")), "info", None,
                 f"{_metric(v, 'accuracy')} vs {_metric(uniform, 'accuracy')}; agreement with fp32 "
                 f"{_metric(v, 'agreement')}"),
            row("runtimes", f"{variant_id} p50 (×onnx-int8-static p50)",
                 p50_ratio(p50.get(variant_id), p50.get(uniform.id)), "info", None,
                 f"{p50.get(variant_id)} vs {p50.get(uniform.id)} ms interleaved, one thread "
                 f"(validation: {_p50(v)} vs {_p50(uniform)} ms)"),
            row("runtimes", f"{fp32_id} p50 (×onnx-fp32 p50)",
                 p50_ratio(p50.get(fp32_id), p50.get(onnx_fp32.id)), "info", None,
                 f"{p50.get(fp32_id)} vs {p50.get(onnx_fp32.id)} ms interleaved; size "
                 f"{_kb(fp32.size_bytes)} KB, build {fp32.build_seconds}s"),
        ]
    rows.append(row("runtimes", "whole run (s)", round(time.monotonic() - started), "info", None,
                     f"{len(results)} variants built and validated"))
    return rows


def _interleaved_p50(conversion: Any, eval_file: Path, input_names: list[str]) -> dict[str, float]:
    """p50 ms of every shipped variant, the runners taking turns per eval sample."""
    import numpy as np

    from benchmarks.convert_measure import interleaved_p50_ms
    from edgeship.runtimes import open_runner

    with np.load(eval_file) as npz:
        samples = [{n: npz[n][i : i + 1] for n in input_names} for i in range(LATENCY_SAMPLES)]
    runners = {v.id: open_runner(conversion.out / v.file, v.format, input_names, threads=1)
               for v in conversion.manifest.variants}
    return {k: round(v, 3) for k, v in interleaved_p50_ms(runners, samples).items()}


def _metric(result: Any, name: str) -> float | None:
    return (result.metrics or {}).get(name)


def _p50(result: Any) -> float | None:
    return ((result.metrics or {}).get("latency_ms") or {}).get("p50")


def p50_ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def pts(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((a - b) * 100, 2)


def _kb(size: int | None) -> str:
    return "–" if not size else f"{size / 1024:.0f}"
