"""Benchmarks of multi-teacher distillation and ternary weights (``compress_bench --only
multiteacher,ternary``), each against the uniform int8 variant of the same model in one run.

* **multiteacher**: ``examples.digits:student`` distilled from the digits CNN alone and from it
  plus ``examples.digits_teachers:wide`` (confidence weighting), same epochs and seeds; then
  both students exported to ONNX in one conversion next to the CNN's uniform static int8.
* **ternary**: the digits CNN ternarised (TWN 0.7, per-channel scale, fine-tuned) and shipped
  as ``onnx-ternary-packed`` (validated on onnxruntime after unpacking) and
  ``coreml-palettized-2bit`` (spec-checked off macOS), against ``onnx-int8-static`` and
  ``coreml-int8-weights`` of the same CNN: size on the wire, bytes the runtime keeps, accuracy,
  p50 latency.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

SEEDS = (0, 1, 2)
DISTILL_EPOCHS = 40
TERNARY_FINE_TUNE_EPOCHS = 5
WIDE = "examples.digits_teachers:wide"


def _digits(out: Path) -> tuple[Any, Path]:
    """The benchmark's digits CNN (cached by convert_bench) and its directory; the wide teacher
    caches its weights next to it."""
    from benchmarks.convert_bench import bench_models
    from examples.digits import load_split

    model = bench_models()["digits-cnn"]
    directory = model.prepare(out)
    if not (directory / "train.npz").exists():
        x_tr, y_tr, _, _ = load_split()
        np.savez(directory / "train.npz", image=x_tr, labels=y_tr)
    os.environ["EDGESHIP_DIGITS_DIR"] = str(out / "digits-weights")
    return model, directory


def bench_multi_teacher(out: Path, key: Path) -> list[dict[str, Any]]:
    """Single- vs two-teacher students: mean accuracy over seeds, then size/latency vs int8."""
    import torch

    from benchmarks.compress_rows import p50_ratio, pts, row
    from converter import run_conversion
    from converter.compress.chain import ModelChain
    from converter.compress.env import StepEnv
    from converter.compress.steps import DistillStep, Training
    from converter.compress.training import TrainingSet, accuracy_on
    from converter.data import SampleSet
    from converter.progress import Progress
    from converter.specs import parse_input_spec
    from examples.digits import load_split

    model, directory = _digits(out)
    teacher = torch.load(directory / "model.pt", weights_only=False).eval()
    specs = [parse_input_spec(model.input_specs[0])]
    x_tr, y_tr, x_te, y_te = load_split()
    train, test = SampleSet(specs, {"image": x_tr}, y_tr), SampleSet(specs, {"image": x_te}, y_te)
    single = DistillStep("examples.digits:student", (4.0, 1.0), alpha=0.0, epochs=DISTILL_EPOCHS)
    double = DistillStep("examples.digits:student", (4.0, 1.0), alpha=0.0, epochs=DISTILL_EPOCHS,
                         teachers=(WIDE,), weighting="confidence")
    accuracy: dict[str, list[float]] = {"single": [], "double": []}
    weights: list[float] = []
    for seed in SEEDS:
        print(f"multiteacher: seed {seed}: {DISTILL_EPOCHS} epochs from one teacher, then two...", flush=True)
        env = StepEnv(specs, test.sample(0), TrainingSet.from_samples(train), None,
                      Training(seed=seed), Progress(quiet=True))
        chain = ModelChain(teacher, env)
        for name, step in (("single", single), ("double", double)):
            student = chain.apply((step,))
            accuracy[name].append(accuracy_on(student.module, test))
            if name == "double":
                weights.append(student.records[0].details["mean_teacher_weights"][1])
    one, two = float(np.mean(accuracy["single"])), float(np.mean(accuracy["double"]))
    recipe = directory / "multiteacher-recipe.toml"
    recipe.write_text(f"""
[compression]
student = "examples.digits:student"
epochs = {DISTILL_EPOCHS}
[[variants]]
kind = "onnx-int8-static"
[[variants]]
kind = "onnx-fp32"
id = "student-one-teacher"
steps = ["distill:T4->1:alpha0"]
[[variants]]
kind = "onnx-fp32"
id = "student-two-teachers"
steps = [{{ step = "distill:T4->1:alpha0:teachers2:confidence", teachers = ["{WIDE}"] }}]
""")
    print("multiteacher: both students and the CNN's int8 through the converter...", flush=True)
    conversion = run_conversion(
        directory / "model.pt", [model.input_specs[0]], directory / "eval.npz",
        directory / "multiteacher-release",
        calib_data=directory / "calib.npz", train_data=directory / "train.npz", recipe=recipe,
        model_name="digits-cnn", version="multiteacher-bench", signing_key=key, force=True,
        progress=Progress(quiet=True),
    )
    r = {v.id: v for v in conversion.results}
    int8, s1, s2 = r["onnx-int8-static"], r["student-one-teacher"], r["student-two-teachers"]
    pairs = zip(accuracy["double"], accuracy["single"], strict=True)
    per_seed = ", ".join(f"{a:.4f}/{b:.4f}" for a, b in pairs)
    int8_drop = pts(int8.metrics.get("accuracy_drop"))
    return [
        row("multiteacher",
             f"two-teacher minus one-teacher student accuracy (pts, mean of {len(SEEDS)} seeds)",
             round((two - one) * 100, 2), "info", None,
             f"two {two:.4f}, one {one:.4f}; per seed two/one {per_seed}; wide teacher's mean "
             f"confidence weight {np.mean(weights):.3f}"),
        *[row("multiteacher", f"{v.id} on onnxruntime vs the CNN's int8: size ×, p50 ×, drop pts",
               f"{v.size_bytes / int8.size_bytes:.2f} / {p50_ratio(v.metrics, int8.metrics)} / "
               f"{pts(v.metrics.get('accuracy_drop'))}", "info", None,
               f"{v.size_bytes:,} B vs {int8.size_bytes:,} B; int8 drop {int8_drop} pts; "
               f"status {v.status}") for v in (s1, s2)],
    ]


def bench_ternary(out: Path, key: Path) -> list[dict[str, Any]]:
    """Ternary digits CNN: packed ONNX and 2-bit Core ML against uniform int8, one conversion."""
    from benchmarks.compress_rows import p50_ratio, pts, row
    from converter import run_conversion
    from converter.progress import Progress

    model, directory = _digits(out)
    recipe = directory / "ternary-recipe.toml"
    recipe.write_text(f"""
[compression]
fine_tune_epochs = {TERNARY_FINE_TUNE_EPOCHS}
[gates]
max_accuracy_drop = 0.02
[[variants]]
kind = "onnx-fp32"
[[variants]]
kind = "onnx-int8-static"
[[variants]]
kind = "onnx-ternary-packed"
steps = ["ternary:per-channel:0.7"]
[[variants]]
kind = "coreml-int8-weights"
[[variants]]
kind = "coreml-palettized-2bit"
steps = ["ternary:per-channel:0.7"]
""")
    print("ternary: digits CNN ternarised, packed ONNX and 2-bit Core ML vs int8...", flush=True)
    conversion = run_conversion(
        directory / "model.pt", [model.input_specs[0]], directory / "eval.npz", directory / "ternary-release",
        calib_data=directory / "calib.npz", train_data=directory / "train.npz", recipe=recipe,
        model_name="digits-cnn", version="ternary-bench", signing_key=key, force=True,
        progress=Progress(quiet=True),
    )
    r = {v.id: v for v in conversion.results}
    fp32, int8, packed = r["onnx-fp32"], r["onnx-int8-static"], r["onnx-ternary-packed"]
    cm8, cm2 = r["coreml-int8-weights"], r["coreml-palettized-2bit"]
    d = packed.built.details if packed.built else {}
    rss = (packed.metrics.get("peak_rss_bytes"), int8.metrics.get("peak_rss_bytes"))
    return [
        row("ternary", "packed ternary ONNX size on the wire (×uniform int8)",
             round(packed.size_bytes / int8.size_bytes, 3), "< 1", packed.size_bytes < int8.size_bytes,
             f"{packed.size_bytes:,} B vs int8 {int8.size_bytes:,} B vs fp32 {fp32.size_bytes:,} B"),
        row("ternary", "packed ternary weights kept by onnxruntime (×int8 file)",
             round(d.get("runtime_weight_bytes", 0) / int8.size_bytes, 3), "info", None,
             f"{d.get('runtime_weight_bytes', 0):,} B of float32 weights after unpacking; peak RSS "
             f"packed/int8 {rss[0]}/{rss[1]} B"),
        row("ternary", "packed ternary accuracy drop vs int8's (pts, onnxruntime)",
             f"{pts(packed.metrics.get('accuracy_drop'))} / {pts(int8.metrics.get('accuracy_drop'))}",
             "info", None, f"{TERNARY_FINE_TUNE_EPOCHS} fine-tune epochs; status {packed.status}"),
        row("ternary", "packed ternary p50 latency (×int8)", p50_ratio(packed.metrics, int8.metrics), "info",
             None, f"×fp32 {p50_ratio(packed.metrics, fp32.metrics)}; float32 kernels after unpacking"),
        row("ternary", "Core ML 2-bit palettes size (×Core ML int8 weights)",
             round(cm2.size_bytes / cm8.size_bytes, 3) if cm2.size_bytes and cm8.size_bytes else None,
             "< 1", bool(cm2.size_bytes and cm8.size_bytes and cm2.size_bytes < cm8.size_bytes),
             f"{cm2.size_bytes:,} B vs {cm8.size_bytes:,} B; {cm2.status} ({cm2.reason})"),
    ]
