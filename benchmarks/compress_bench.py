"""Compression benchmark: channel pruning, distillation and accuracy-aware int8 tuning, one run.

    python -m benchmarks.compress_bench [--out build/bench]
        [--only pruning,distill,tuning,nas,multiteacher,ternary,openvino,runtimes,precision]

* **pruning**: 30% structured channel pruning (BN-scale importance, torch-pruning) of the
  ResNet-style network trained on digits at 32x32, fine-tuned on the training split, exported to
  ONNX and validated on onnxruntime next to the unpruned fp32 export. Targets: MACs <= 0.55x,
  accuracy drop <= 1 point.
* **distill**: the digits CNN (teacher) distilled into ``examples.digits:student`` (under a
  tenth of its parameters; target <= 1/4) with the converter's ``distill`` step, against the
  same student trained on the labels alone with the same epochs, mean over five seeds.
  Targets: student within 2 points of the teacher, and ahead of the label-only student.
* **tuning**: the digits CNN with two 1000x activation-outlier channels
  (``examples.outlier``), static int8 in ONNX and TFLite, plain and with accuracy-aware tuning.
  Target: tuning brings the accuracy drop under the 0.5-point gate where plain static int8
  does not.
* **nas** (:mod:`benchmarks.compress_nas`): the ResNet-style network searched (stage widths,
  residual depth) under half its fp32 p50 on onnxruntime, against its uniform int8 variant.
* **multiteacher**, **ternary** (:mod:`benchmarks.compress_ternary`): a student distilled from
  one teacher vs two; the digits CNN ternarised and shipped packed (ONNX) and as 2-bit Core ML
  palettes; both against the uniform int8 variant of the same model.
* **openvino** (:mod:`benchmarks.compress_openvino`): openvino-fp16 / openvino-int8 (NNCF) size,
  accuracy and p50 against onnx-int8-static of the same model; NNCF accuracy control on the
  outlier-channel digits CNN.
* **runtimes** (:mod:`benchmarks.compress_runtimes`): the ResNet-style network's ``mnn-int8``
  and ``executorch-xnnpack-int8`` against its uniform int8 variant, each on its own runtime.
* **precision** (:mod:`benchmarks.compress_precision`): the MiniLM-L6-style encoder's
  ``*-int4-weights`` and ``*-mixed`` (size budget 0.4x) against its uniform int8 variant, ONNX
  and TFLite, in one conversion.

Trained models are cached under ``--out`` (shared with ``benchmarks.convert_bench``). Prints a
table with PASS/MISS per target and writes ``benchmarks/results/compress.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compress_rows import p50_ratio, pts, row, size_ratio

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "compress.json"
SEEDS = (0, 1, 2, 3, 4)
DISTILL_EPOCHS = 60
PRUNE_FINE_TUNE_EPOCHS = 3


def bench_pruning(out: Path, key: Path) -> list[dict[str, Any]]:
    """ResNet-style, 30% channel pruning + fine-tune, through the converter (ONNX)."""
    from benchmarks.convert_bench import bench_models
    from converter import run_conversion
    from converter.progress import Progress
    from examples.vision import digits32

    model = bench_models()["resnet-style"]
    directory = model.prepare(out)
    x_tr, y_tr, _, _ = digits32()
    np.savez(directory / "train.npz", image=x_tr, labels=y_tr)
    recipe = directory / "compress-recipe.toml"
    recipe.write_text(f"""
[compression]
fine_tune_epochs = {PRUNE_FINE_TUNE_EPOCHS}
threads = 2
[gates]
max_accuracy_drop = 0.01
[[variants]]
kind = "onnx-fp32"
[[variants]]
kind = "onnx-fp32"
id = "onnx-pruned-30"
steps = ["prune:channel:bn-scale:0.3"]
""")
    print("pruning: resnet-style, 30% channels, fine-tune, ONNX export and validation...", flush=True)
    started = time.monotonic()
    conversion = run_conversion(
        directory / "model.pt", [model.input_spec], directory / "eval.npz", directory / "compress-release",
        calib_data=directory / "calib.npz", train_data=directory / "train.npz", recipe=recipe,
        model_name="resnet-style", version="compress-bench", signing_key=key, force=True,
        progress=Progress(),
    )
    results = {r.id: r for r in conversion.results}
    pruned, dense = results["onnx-pruned-30"], results["onnx-fp32"]
    step = pruned.steps[0]
    drop = pruned.metrics.get("accuracy_drop")
    seconds = round(time.monotonic() - started)
    return [
        row("pruning", "resnet-style MACs after 30% channel pruning (×source)", step["macs_ratio"],
             "<= 0.55", step["macs_ratio"] <= 0.55,
             f"{step['macs_before']:,} -> {step['macs_after']:,} MACs; params ×{step['params_ratio']:.3f}"),
        row("pruning", "resnet-style accuracy drop after fine-tune (pts, onnxruntime)",
             None if drop is None else round(drop * 100, 2), "<= 1.00",
             drop is not None and drop <= 0.01,
             f"source {dense.metrics.get('accuracy')}, pruned {pruned.metrics.get('accuracy')}, "
             f"{PRUNE_FINE_TUNE_EPOCHS} fine-tune epochs, {seconds}s, variant {pruned.status}"),
        row("pruning", "resnet-style pruned ONNX p50 latency (×dense fp32)",
             p50_ratio(pruned.metrics, dense.metrics), "info", None,
             f"file {pruned.size_bytes / 1e6:.2f} MB vs {dense.size_bytes / 1e6:.2f} MB"),
    ]


def bench_distillation(out: Path, _key: Path | None = None) -> list[dict[str, Any]]:
    """Digits CNN → student, distilled vs trained on labels only, five seeds."""
    import torch
    from torch.nn import functional

    from benchmarks.convert_bench import bench_models
    from converter.compress.chain import ModelChain, torch_threads
    from converter.compress.env import StepEnv
    from converter.compress.steps import DistillStep, Training
    from converter.compress.training import TrainingSet, accuracy_on, fit, outputs_of
    from converter.data import SampleSet
    from converter.progress import Progress
    from converter.specs import parse_input_spec
    from examples.digits import DigitsStudent, load_split

    model = bench_models()["digits-cnn"]
    teacher = torch.load(model.prepare(out) / "model.pt", weights_only=False).eval()
    specs = [parse_input_spec(model.input_spec)]
    x_tr, y_tr, x_te, y_te = load_split()
    train, test = SampleSet(specs, {"image": x_tr}, y_tr), SampleSet(specs, {"image": x_te}, y_te)
    teacher_acc = accuracy_on(teacher, test)
    # soft targets only (alpha 0): on digits the hard-label term only dilutes the teacher's
    # signal (alpha 0.1 gave +0.36 pts over five seeds, alpha 0 +0.58)
    step = DistillStep("examples.digits:student", (4.0, 1.0), alpha=0.0, epochs=DISTILL_EPOCHS)
    distilled, plain, params = [], [], {}
    for seed in SEEDS:
        print(f"distill: seed {seed}: {DISTILL_EPOCHS} epochs distilled, {DISTILL_EPOCHS} on labels "
              "only...", flush=True)
        env = StepEnv(specs, test.sample(0), TrainingSet.from_samples(train), None,
                      Training(seed=seed), Progress(quiet=True))
        student = ModelChain(teacher, env).apply((step,))
        params = student.records[0].details
        distilled.append(accuracy_on(student.module, test))
        torch.manual_seed(seed)
        alone = DigitsStudent()

        def cross_entropy(inputs: list, labels: Any, _epoch: int, model: Any = alone) -> Any:
            return functional.cross_entropy(outputs_of(model, inputs)[0], labels)

        with torch_threads(1):
            fit(alone, TrainingSet.from_samples(train), cross_entropy, epochs=DISTILL_EPOCHS,
                lr=Training().lr, batch_size=64, seed=seed, progress=Progress(quiet=True),
                label="labels only")
        plain.append(accuracy_on(alone, test))
    kd, ce = float(np.mean(distilled)), float(np.mean(plain))
    ratio = params["student_params"] / params["teacher_params"]
    per_seed = ", ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(distilled, plain, strict=True))
    return [
        row("distill", "student parameters (×teacher)", round(ratio, 4), "<= 0.25", ratio <= 0.25,
             f"{params['student_params']:,} vs {params['teacher_params']:,}"),
        row("distill", "distilled student accuracy gap to teacher (pts, mean of 5 seeds)",
             round((teacher_acc - kd) * 100, 2), "<= 2.00", teacher_acc - kd <= 0.02,
             f"teacher {teacher_acc:.4f}, distilled {kd:.4f}"),
        row("distill", "distilled minus label-only student (pts, mean of 5 seeds)",
             round((kd - ce) * 100, 2), "> 0", kd > ce,
             f"label-only {ce:.4f}; per seed distilled/label-only {per_seed}"),
    ]


def bench_tuning(out: Path, key: Path) -> list[dict[str, Any]]:
    """The outlier-channel digits CNN: plain static int8 against tuned, ONNX and TFLite."""
    from benchmarks.convert_bench import outlier_digits
    from converter import run_conversion
    from converter.progress import Progress

    directory = outlier_digits(out)
    recipe = directory / "tuning-recipe.toml"
    recipe.write_text("""
[[variants]]
kind = "onnx-int8-static"
id = "onnx-int8-plain"
tuning = false
[[variants]]
kind = "onnx-int8-static"
id = "onnx-int8-tuned"
[[variants]]
kind = "tflite-int8"
id = "tflite-int8-plain"
tuning = false
[[variants]]
kind = "tflite-int8"
id = "tflite-int8-tuned"
""")
    print("tuning: outlier-channel digits CNN, static int8 plain and tuned...", flush=True)
    conversion = run_conversion(
        "examples.outlier:trained_model", ["image:1x1x8x8:float32"], directory / "eval.npz",
        directory / "tuning-release", calib_data=directory / "calib.npz", recipe=recipe,
        model_name="digits-outlier", version="compress-bench", signing_key=key, force=True,
        progress=Progress(),
    )
    results = {r.id: r for r in conversion.results}
    rows = []
    for fmt in ("onnx", "tflite"):
        plain, tuned = results[f"{fmt}-int8-plain"], results[f"{fmt}-int8-tuned"]
        p_drop, t_drop = plain.metrics.get("accuracy_drop"), tuned.metrics.get("accuracy_drop")
        record = tuned.tuning or {}
        kept = record.get("kept", {})
        rows += [
            row("tuning", f"{fmt} plain static int8 accuracy drop (pts)", pts(p_drop), "> 0.50 (fails)",
                 p_drop is not None and p_drop > 0.005, f"status {plain.status}"),
            row("tuning", f"{fmt} tuned static int8 accuracy drop (pts)", pts(t_drop), "<= 0.50",
                 t_drop is not None and t_drop <= 0.005 and tuned.status == "passed",
                 f"{len(record.get('attempts', []))} attempts, {record.get('seconds')}s; kept "
                 f"{kept.get('calibration')}, {len(kept.get('float_layers') or [])} float layers; "
                 f"size ×{size_ratio(tuned, plain)} of plain"),
        ]
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("benchmark", "metric", "value", "target", "result")
    lines = [header] + [(r["benchmark"], r["metric"], "–" if r["value"] is None else str(r["value"]),
                         r["target"], {True: "PASS", False: "MISS", None: "info"}[r["met"]]) for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print()
    for r in rows:
        print(f"  {r['metric']}: {r['detail']}")


#: ``--only`` section → the ``module:function`` that runs it, ``(out, key) -> rows``, in table order
SECTIONS = {
    "pruning": "benchmarks.compress_bench:bench_pruning",
    "distill": "benchmarks.compress_bench:bench_distillation",
    "tuning": "benchmarks.compress_bench:bench_tuning",
    "nas": "benchmarks.compress_nas:bench_nas",
    "multiteacher": "benchmarks.compress_ternary:bench_multi_teacher",
    "ternary": "benchmarks.compress_ternary:bench_ternary",
    "openvino": "benchmarks.compress_openvino:bench_openvino",
    "runtimes": "benchmarks.compress_runtimes:bench_runtimes",
    "precision": "benchmarks.compress_precision:bench_precision",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    args = parser.parse_args()
    from converter.quiet import quiet_toolchains
    from edgeship.contract.signing import generate_keypair

    quiet_toolchains()
    key = args.out / "keys" / "publisher.key"
    if not key.exists():
        generate_keypair(key.parent)
    chosen = args.only.split(",")
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for name, target in SECTIONS.items():
        if name in chosen:
            module, _, function = target.partition(":")
            rows += getattr(importlib.import_module(module), function)(args.out, key)
    print()
    print_table(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "seconds": round(time.monotonic() - started)},
                                  indent=2) + "\n")
    print(f"\nwritten: {RESULTS}")


if __name__ == "__main__":
    main()
