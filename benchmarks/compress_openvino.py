"""OpenVINO section of :mod:`benchmarks.compress_bench`: ``openvino-fp16`` and ``openvino-int8``
against ``onnx-int8-static`` (the uniform int8 variant) of the same model, in one run.

For the digits CNN and the ResNet-style CNN (trained once, cached under ``--out`` like
``benchmarks.convert_bench``), one conversion builds ``onnx-fp32``, ``onnx-int8-static`` and
both OpenVINO kinds; rows give each OpenVINO kind's size, accuracy drop and p50 latency next
to ``onnx-int8-static``'s (p50 from one round-robin loop over the shipped files, one thread).
Then the outlier-channel digits CNN: plain NNCF int8 against the tuned variant, where NNCF's
accuracy control does the recovering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.compress_rows import pts, row

MODELS = ("digits-cnn", "resnet-style")
KINDS = ("onnx-fp32", "onnx-int8-static", "openvino-fp16", "openvino-int8")
LATENCY_SAMPLES = 100
#: the default accuracy gate (ratio).
GATE = 0.005


def bench_openvino(out: Path, key: Path) -> list[dict[str, Any]]:
    """Rows for both models and the outlier model (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    for name in MODELS:
        rows += _bench_model(name, out, key)
    return rows + _bench_outlier(out, key)


def _bench_model(name: str, out: Path, key: Path) -> list[dict[str, Any]]:
    from benchmarks.convert_bench import bench_models
    from converter import run_conversion
    from converter.progress import Progress

    model = bench_models()[name]
    directory = model.prepare(out)
    recipe = directory / "openvino-recipe.toml"
    recipe.write_text("".join(f'[[variants]]\nkind = "{kind}"\n' for kind in KINDS))
    print(f"openvino: {name}: {', '.join(KINDS)}...", flush=True)
    conversion = run_conversion(
        directory / "model.pt", list(model.input_specs), directory / "eval.npz",
        directory / "openvino-release", calib_data=directory / "calib.npz", recipe=recipe,
        model_name=name, version="openvino-bench", signing_key=key, force=True, progress=Progress(),
    )
    results = {r.id: r for r in conversion.results}
    p50 = _interleaved_p50(conversion, directory, [s.split(":")[0] for s in model.input_specs])
    base = results["onnx-int8-static"]
    rows = []
    for kind in ("openvino-fp16", "openvino-int8"):
        r = results[kind]
        drop, base_drop = r.metrics.get("accuracy_drop"), base.metrics.get("accuracy_drop")
        size = r.size_bytes / base.size_bytes if r.size_bytes and base.size_bytes else None
        speed = p50[kind] / p50["onnx-int8-static"] if kind in p50 and "onnx-int8-static" in p50 else None
        detail = (f"{r.status}; {r.size_bytes} B vs {base.size_bytes} B; p50 {p50.get(kind, 0):.3f} ms vs "
                  f"{p50.get('onnx-int8-static', 0):.3f} ms (onnx-fp32 {p50.get('onnx-fp32', 0):.3f} ms); "
                  f"accuracy drop {pts(drop)} pts vs {pts(base_drop)} pts")
        rows += [
            row("openvino", f"{name} {kind} accuracy drop (pts)", pts(drop), "<= 0.50",
                 drop is not None and drop <= GATE, detail),
            row("openvino", f"{name} {kind} size ×onnx-int8-static", _round(size), "info", None,
                 f"{r.size_bytes} B"),
            row("openvino", f"{name} {kind} p50 ×onnx-int8-static", _round(speed), "info", None,
                 f"{p50.get(kind, 0):.3f} ms"),
        ]
    return rows


def _round(ratio: float | None) -> float | None:
    return None if ratio is None else round(ratio, 2)


def _interleaved_p50(conversion: Any, directory: Path, input_names: list[str]) -> dict[str, float]:
    """p50 per shipped variant of ``KINDS``, the runners taking turns per sample."""
    from benchmarks.convert_measure import interleaved_p50_ms
    from edgeship.runtimes import open_runner

    runners = {v.id: open_runner(conversion.out / v.file, v.format, input_names, threads=1)
               for v in conversion.manifest.variants if v.id in KINDS}
    return interleaved_p50_ms(runners, _samples(directory, input_names)) if runners else {}


def _samples(directory: Path, input_names: list[str]) -> list[dict]:
    import numpy as np

    with np.load(directory / "eval.npz") as npz:
        arrays = {n: npz[n] for n in input_names}
    return [{n: arrays[n][i : i + 1] for n in input_names}
            for i in range(min(LATENCY_SAMPLES, len(arrays[input_names[0]])))]


def _bench_outlier(out: Path, key: Path) -> list[dict[str, Any]]:
    """The outlier-channel digits CNN: plain NNCF int8 against NNCF accuracy control (tuning)."""
    from benchmarks.convert_bench import outlier_digits
    from converter import run_conversion
    from converter.progress import Progress

    directory = outlier_digits(out)
    recipe = directory / "openvino-tuning-recipe.toml"
    recipe.write_text('[[variants]]\nkind = "openvino-int8"\nid = "openvino-int8-plain"\ntuning = false\n'
                      '[[variants]]\nkind = "openvino-int8"\nid = "openvino-int8-tuned"\n'
                      '[[variants]]\nkind = "onnx-int8-static"\n')
    print("openvino: outlier-channel digits CNN, NNCF int8 plain and with accuracy control...", flush=True)
    conversion = run_conversion(
        "examples.outlier:trained_model", ["image:1x1x8x8:float32"], directory / "eval.npz",
        directory / "openvino-tuning-release", calib_data=directory / "calib.npz", recipe=recipe,
        model_name="digits-outlier", version="openvino-bench", signing_key=key, force=True,
        progress=Progress(),
    )
    results = {r.id: r for r in conversion.results}
    plain, tuned = results["openvino-int8-plain"], results["openvino-int8-tuned"]
    onnx = results["onnx-int8-static"]
    p_drop, t_drop = plain.metrics.get("accuracy_drop"), tuned.metrics.get("accuracy_drop")
    record = tuned.tuning or {}
    control = (tuned.built.details.get("accuracy_control") if tuned.built else None) or {}
    onnx_note = (f"onnx-int8-static (tuned) {onnx.status}, drop {pts(onnx.metrics.get('accuracy_drop'))} "
                 f"pts, {onnx.size_bytes} B")
    return [
        row("openvino", "outlier openvino-int8 plain accuracy drop (pts)", pts(p_drop), "> 0.50 (fails)",
             p_drop is not None and p_drop > GATE, f"status {plain.status}, {plain.size_bytes} B"),
        row("openvino", "outlier openvino-int8 accuracy control drop (pts)", pts(t_drop), "<= 0.50",
             t_drop is not None and t_drop <= GATE and tuned.status == "passed",
             f"{len(record.get('attempts', []))} attempts, {record.get('seconds')}s; NNCF drop "
             f"{control.get('drop')} on {control.get('validation_samples')} samples; {tuned.size_bytes} B; "
             + onnx_note),
    ]
