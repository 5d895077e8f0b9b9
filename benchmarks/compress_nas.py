"""Architecture search benchmark (``compress_bench --only nas``): the trained ResNet-style
network searched under half its fp32 p50 on onnxruntime, against its uniform int8 variant.

One conversion holds the source's ``onnx-fp32`` and ``onnx-int8-static`` (the uniform int8
variant), the searched model as ``onnx-fp32`` and, sharing the same search, as
``onnx-int8-static``: all validated on onnxruntime over the eval set in the same run, so size,
accuracy and p50 latency compare directly. Target: the searched model within the budget on the
eval set too, within 2 accuracy points of the source.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

BUDGET_RATIO = 0.5
SEARCH_SECONDS = 420
MAX_CANDIDATES = 14
FINE_TUNE_EPOCHS = 1
FINAL_EPOCHS = 5


def bench_nas(out: Path, key: Path) -> list[dict[str, Any]]:
    """Rows: searched vs fp32 (budget, accuracy) and vs the uniform int8 variant (size,
    accuracy, p50), plus what the search measured."""
    from benchmarks.compress_rows import row
    from benchmarks.convert_bench import bench_models
    from converter import run_conversion
    from converter.progress import Progress
    from examples.vision import digits32

    model = bench_models()["resnet-style"]
    directory = model.prepare(out)
    x_tr, y_tr, _, _ = digits32()
    np.savez(directory / "train.npz", image=x_tr, labels=y_tr)
    search = (f'{{ step = "search:width+depth:{BUDGET_RATIO:g}x", seconds = {SEARCH_SECONDS}, '
              f'max_candidates = {MAX_CANDIDATES}, fine_tune_epochs = {FINE_TUNE_EPOCHS} }}')
    recipe = directory / "nas-recipe.toml"
    recipe.write_text(f"""
[compression]
fine_tune_epochs = {FINAL_EPOCHS}
threads = 2
[gates]
max_accuracy_drop = 0.02
[[variants]]
kind = "onnx-fp32"
[[variants]]
kind = "onnx-int8-static"
id = "onnx-int8"
tuning = false
[[variants]]
kind = "onnx-fp32"
id = "onnx-searched"
steps = [{search}]
[[variants]]
kind = "onnx-int8-static"
id = "onnx-searched-int8"
tuning = false
steps = [{search}]
""")
    print(f"nas: resnet-style, search under {BUDGET_RATIO:g}x fp32 p50 ({SEARCH_SECONDS}s, "
          f"{MAX_CANDIDATES} candidates), against uniform int8...", flush=True)
    started = time.monotonic()
    conversion = run_conversion(
        directory / "model.pt", list(model.input_specs), directory / "eval.npz", directory / "nas-release",
        calib_data=directory / "calib.npz", train_data=directory / "train.npz", recipe=recipe,
        model_name="resnet-style", version="nas-bench", signing_key=key, force=True,
        progress=Progress(),
    )
    r = {v.id: v for v in conversion.results}
    fp32, int8, searched, both = r["onnx-fp32"], r["onnx-int8"], r["onnx-searched"], r["onnx-searched-int8"]
    log = searched.steps[0] if searched.steps else {}
    candidates = log.get("candidates", [])
    chosen = next((c for c in candidates if c["chosen"]), {})
    p50 = {v.id: (v.metrics.get("latency_ms") or {}).get("p50") for v in r.values()}
    acc = {v.id: v.metrics.get("accuracy") for v in r.values()}
    ratio = _div(p50["onnx-searched"], p50["onnx-fp32"])
    drop = _minus(acc["onnx-fp32"], acc["onnx-searched"])
    seconds = round(time.monotonic() - started)
    return [
        row("nas", "searched p50 on the eval set (×fp32 p50; budget 0.5)", ratio, f"<= {BUDGET_RATIO}",
             ratio is not None and ratio <= BUDGET_RATIO,
             f"{p50['onnx-searched']} vs {p50['onnx-fp32']} ms; chosen {log.get('chosen')}, "
             f"MACs ×{log.get('macs_ratio')}, params {chosen.get('params', 0):,} vs "
             f"{log.get('params_before', 0):,}"),
        row("nas", "searched accuracy drop vs fp32 (pts)", pts(drop), "<= 2.00",
             drop is not None and drop <= 0.02,
             f"fp32 {acc['onnx-fp32']}, searched {acc['onnx-searched']} (status {searched.status})"),
        row("nas", "searched p50 (×uniform int8 p50)", _div(p50["onnx-searched"], p50["onnx-int8"]),
             "info", None, f"{p50['onnx-searched']} vs {p50['onnx-int8']} ms (int8 status {int8.status})"),
        row("nas", "searched size (×uniform int8 size)", _size(searched, int8), "info", None,
             f"{_kb(searched)} vs {_kb(int8)} KB (fp32 {_kb(fp32)} KB)"),
        row("nas", "searched minus uniform int8 accuracy (pts)",
             pts(_minus(acc["onnx-searched"], acc["onnx-int8"])), "info", None,
             f"searched {acc['onnx-searched']}, int8 {acc['onnx-int8']}"),
        row("nas", "searched + int8: p50 (×uniform int8), size (×), accuracy (pts vs int8)",
             _div(p50["onnx-searched-int8"], p50["onnx-int8"]), "info", None,
             f"size ×{_size(both, int8)}, accuracy {acc['onnx-searched-int8']} "
             f"({pts(_minus(acc['onnx-searched-int8'], acc['onnx-int8']))} pts), status {both.status}"),
        row("nas", "search: candidates measured / on the Pareto front", len(candidates), "info", None,
             f"{sum(c['on_front'] for c in candidates)} on the front, "
             f"{sum(c['quality'] is not None for c in candidates)} fine-tuned, stopped: "
             f"{log.get('stopped')} after {log.get('elapsed_seconds')}s of {SEARCH_SECONDS}s; "
             f"whole run {seconds}s"),
    ]


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def pts(value: float | None) -> float | None:
    return None if value is None else round(value * 100, 2)


def _size(a: Any, b: Any) -> float | None:
    return round(a.size_bytes / b.size_bytes, 3) if a.size_bytes and b.size_bytes else None


def _kb(v: Any) -> str:
    return f"{v.size_bytes / 1024:.0f}" if v.size_bytes else "–"
