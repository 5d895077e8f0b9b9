"""4-bit weights and per-layer mixed precision (``compress_bench --only precision``): the
MiniLM-L6-style encoder (22.7M parameters, ``benchmarks.convert_bench``) in ONNX and TFLite.

One conversion holds, per format, the fp32 export, the uniform int8 variant
(``*-int8-dynamic``, untuned: the same int8 every layer), ``*-int4-weights`` and ``*-mixed``
under a size budget of :data:`SIZE_BUDGET` x fp32, all validated on their runtime over the
same eval samples in the same run. Rows: size, cosine and p50 of int4 and mixed against the
uniform int8 variant. Targets: int4 smaller than int8 with cosine >= 0.99 (the default
embedding gate); mixed within its budget with cosine at least int8's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the mixed variants' budget: file size as a ratio to the fp32 export of the format.
SIZE_BUDGET = 0.4
#: eval samples each variant is validated on (cosine and p50).
EVAL_SAMPLES = 200
FORMATS = ("onnx", "tflite")


def bench_precision(out: Path, key: Path) -> list[dict[str, Any]]:
    """Rows: int4 and mixed against the uniform int8 variant of each format (same run)."""
    from benchmarks.compress_rows import row
    from benchmarks.convert_bench import bench_models
    from converter import run_conversion
    from converter.progress import Progress

    model = bench_models()["minilm-l6"]
    directory = model.prepare(out)
    recipe = directory / "precision-recipe.toml"
    recipe.write_text(f"[validation]\nmax_samples = {EVAL_SAMPLES}\n" + "".join(
        f'[[variants]]\nkind = "{fmt}-fp32"\n'
        f'[[variants]]\nkind = "{fmt}-int8-dynamic"\ntuning = false\n'
        f'[[variants]]\nkind = "{fmt}-int4-weights"\n'
        f'[[variants]]\nkind = "{fmt}-mixed"\nbudget = {{ size_ratio = {SIZE_BUDGET} }}\n'
        for fmt in FORMATS))
    conversion = run_conversion(
        directory / "model.pt", list(model.input_specs), directory / "eval.npz",
        directory / "precision-release", calib_data=directory / "calib.npz", recipe=recipe,
        model_name=model.name, version="bench-precision", signing_key=key, force=True,
        progress=Progress())
    results = {r.id: r for r in conversion.results}
    rows = []
    for fmt in FORMATS:
        fp32, int8 = results[f"{fmt}-fp32"], results[f"{fmt}-int8-dynamic"]
        for kind in ("int4-weights", "mixed"):
            r = results[f"{fmt}-{kind}"]
            if not r.size_bytes or not r.metrics:
                rows.append(row("precision", f"{fmt} {kind}", None, "built and measured", False,
                                 f"{r.status}: {r.reason}"))
                continue
            cosine, int8_cosine = r.metrics.get("cosine"), int8.metrics.get("cosine")
            size, size_int8 = r.size_bytes / fp32.size_bytes, int8.size_bytes / fp32.size_bytes
            if kind == "int4-weights":
                target, met = "size < int8, cosine >= 0.99", size < size_int8 and (cosine or 0) >= 0.99
            else:
                target = f"size <= {SIZE_BUDGET}x fp32, cosine >= int8's"
                met = size <= SIZE_BUDGET and (cosine or 0) >= (int8_cosine or 1)
            chosen = (r.built.details.get("mixed") or {}).get("layers") if r.built else None
            layers = ("" if not chosen else "; layers fp32/fp16/int8 " + "/".join(
                str(sum(layer["precision"] == p for layer in chosen)) for p in ("fp32", "fp16", "int8")))
            rows.append(row(
                "precision", f"{fmt} {kind} size ×fp32 (int8 {size_int8:.3f})", round(size, 3),
                target, met,
                f"{r.status}; cosine {_fmt(cosine)} (int8 {_fmt(int8_cosine)}); p50 "
                f"{_p50(r)} ms (int8 {_p50(int8)}, fp32 {_p50(fp32)}){layers}"))
    return rows


def _p50(result: Any) -> str:
    p50 = (result.metrics.get("latency_ms") or {}).get("p50")
    return "–" if p50 is None else f"{p50:.2f}"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"
