"""Converter benchmark: every variant of each model next to the two toolkits' defaults, one run.

    python -m benchmarks.convert_bench [--out build/bench] [--models minilm-l6,resnet-style]

Models: a MiniLM-L6-style sentence encoder built with Hugging Face ``transformers`` (22.7M
parameters, trained briefly; ``examples/hf_encoder.py``), the same encoder with planted outlier
channels (what pretrained BERTs have and brief training does not grow), the digits CNN and a
MobileNetV2-style and a ResNet-style CNN (``examples/vision.py``). Each is converted with the
default recipe; then onnxruntime's and ai-edge-quantizer's defaults are built from the same
fp32 files (``benchmarks/convert_toolkits.py``), and every file is measured in one loop: size
ratio to the fp32 file of its format, quality against PyTorch (cosine for the encoders,
accuracy drop for the CNNs), p50 latency ratio to fp32 (round-robin, one thread), and the
seconds spent on it. Trained weights are cached under ``--out``; the table goes to stdout and
``benchmarks/results/convert.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "convert.json"
#: file size targets for the >= 1M-parameter CNNs, as a share of the fp32 file.
SIZE_TARGETS = {"int8": 0.27, "int8-dynamic": 0.27, "int8-weights": 0.27, "fp16": 0.52}
#: default conversion time targets (seconds, 2 cores), per model.
TIME_TARGETS = {"minilm-l6": 240.0, "minilm-l6-outliers": 240.0, "mobilenetv2-style": 60.0,
                "resnet-style": 60.0}
#: samples per file in the latency loop (two rounds).
LATENCY_SAMPLES = {"encoder": 24, "cnn": 100}


@dataclass
class BenchModel:
    name: str
    kind: str  # "cnn" or "encoder"
    input_specs: tuple[str, ...]
    prepare: Callable[[Path], Path]
    large: bool


def bench_models() -> dict[str, BenchModel]:
    from examples import digits, hf_encoder, vision

    def cnn(name: str, spec: str, build: Callable, data: Callable, epochs: int, lr: float,
            large: bool) -> BenchModel:
        return BenchModel(name, "cnn", (spec,),
                          lambda out: prepare_cnn(name, build, data, epochs, lr, out), large)

    encoder_specs = hf_encoder.SIZES["minilm-l6"].input_specs
    return {
        "minilm-l6": BenchModel("minilm-l6", "encoder", encoder_specs,
                                lambda out: prepare_encoder(out, outliers=False), True),
        "minilm-l6-outliers": BenchModel("minilm-l6-outliers", "encoder", encoder_specs,
                                         lambda out: prepare_encoder(out, outliers=True), True),
        "digits-cnn": cnn("digits-cnn", digits.INPUT_SPEC, digits.DigitsCNN, digits.load_split,
                          25, 3e-3, large=False),
        "mobilenetv2-style": cnn("mobilenetv2-style", "image:1x1x32x32:float32",
                                 vision.MobileNetV2Style, vision.digits32, 12, 3e-3, large=True),
        "resnet-style": cnn("resnet-style", "image:1x1x32x32:float32", vision.ResNetStyle,
                            vision.digits32, 10, 2e-3, large=True),
    }


def outlier_digits(out: Path) -> Path:
    """The benchmark's digits CNN prepared under ``out``, its weights where ``examples.outlier``
    reads them (``$EDGESHIP_DIGITS_DIR``, set here): the outlier-channel model is built from them.
    Returns the digits CNN's directory (its eval and calibration files)."""
    import os

    import torch

    directory = bench_models()["digits-cnn"].prepare(out)
    digits_dir = out / "digits-weights"
    if not (digits_dir / "weights.pt").exists():
        digits_dir.mkdir(parents=True, exist_ok=True)
        torch.save(torch.load(directory / "model.pt", weights_only=False).state_dict(),
                   digits_dir / "weights.pt")
    os.environ["EDGESHIP_DIGITS_DIR"] = str(digits_dir)
    return directory


def prepare_cnn(name: str, build: Callable, data: Callable, epochs: int, lr: float, out: Path) -> Path:
    """Train (once; cached) and write ``model.pt``, ``calib.npz`` and ``eval.npz``."""
    import torch

    from examples.digits import evaluate, train

    directory = out / name
    if (directory / "model.pt").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = data()
    torch.manual_seed(0)
    started = time.monotonic()
    print(f"training {name} ({epochs} epochs on {len(x_tr)} digits)...", flush=True)
    net = train(build(), x_tr, y_tr, epochs=epochs, lr=lr)
    print(f"  accuracy {evaluate(net, x_te, y_te):.4f} in {time.monotonic() - started:.0f}s", flush=True)
    torch.save(net, directory / "model.pt")
    np.savez(directory / "calib.npz", image=x_tr[:200], labels=y_tr[:200])
    np.savez(directory / "eval.npz", image=x_te, labels=y_te)
    return directory


def prepare_encoder(out: Path, outliers: bool) -> Path:
    """The MiniLM-L6-style encoder trained once (cached); ``outliers`` plants them in a copy."""
    import torch

    from examples.hf_encoder import build_example, plant_outliers

    plain = out / "minilm-l6"
    if not (plain / "model.pt").exists():
        print("training minilm-l6 (transformers BertModel, 22.7M parameters)...", flush=True)
        stats = build_example(plain, "minilm-l6", head="embedding")
        (plain / "encoder.pt").rename(plain / "model.pt")
        print(f"  classifier accuracy {stats['accuracy']:.4f} in {stats['train_seconds']:.0f}s", flush=True)
    if not outliers:
        return plain
    directory = out / "minilm-l6-outliers"
    if not (directory / "model.pt").exists():
        directory.mkdir(parents=True, exist_ok=True)
        model = torch.load(plain / "model.pt", weights_only=False)
        torch.save(plant_outliers(model), directory / "model.pt")
        for name in ("calib.npz", "eval.npz"):
            shutil.copyfile(plain / name, directory / name)
    return directory


def convert_model(model: BenchModel, directory: Path, key: Path) -> tuple[object, float]:
    from converter import run_conversion
    from converter.progress import Progress

    started = time.monotonic()
    conversion = run_conversion(
        directory / "model.pt", list(model.input_specs), directory / "eval.npz", directory / "release",
        calib_data=directory / "calib.npz", model_name=model.name, version="bench",
        signing_key=key, force=True, progress=Progress(),
    )
    return conversion, time.monotonic() - started


def measure_model(model: BenchModel, directory: Path, conversion: object, seconds: float) -> list[dict]:
    """Rows for the converter's variants and the toolkit defaults, measured in one loop."""
    import torch

    from benchmarks.convert_measure import interleaved_p50_ms, outputs_on, quality, runner_for
    from benchmarks.convert_toolkits import build_baselines
    from converter.data import load_samples
    from converter.progress import Progress
    from converter.reference import compute_reference, fit_check
    from converter.specs import parse_input_spec

    release = directory / "release"
    specs = [parse_input_spec(s) for s in model.input_specs]
    eval_set = load_samples(directory / "eval.npz", specs, "evaluation")
    samples = list(eval_set)
    module = torch.load(directory / "model.pt", weights_only=False).eval()
    output_specs = fit_check(module, specs, samples[0])
    reference = compute_reference(module, specs, output_specs, eval_set, Progress(quiet=True))
    labels = eval_set.labels if model.kind == "cnn" else None
    names, output_names = [s.name for s in specs], [s.name for s in output_specs]
    files: dict[str, tuple[str, Path]] = {}
    rows: dict[str, dict] = {}
    for r in conversion.results:
        row = {"model": model.name, "source": "edgeship", "variant": r.id, "format": r.format,
               "precision": r.precision, "status": r.status, "size_bytes": r.size_bytes,
               "seconds": r.seconds, "reason": r.reason}
        rows[r.id] = row
        if r.shipped and r.format in ("onnx", "tflite") and r.status == "passed":
            files[r.id] = (r.format, release / r.built.path.name)
    fp32 = {fmt: path for name, (fmt, path) in files.items() if name == f"{fmt}-fp32"}
    calib = list(load_samples(directory / "calib.npz", specs, "calibration").head(64))
    for b in build_baselines(fp32, calib, directory / "toolkits", lambda m: print(m, flush=True)):
        rows[b["name"]] = {"model": model.name, "source": "toolkit default", "variant": b["name"],
                           "format": b["format"], "precision": "int8",
                           "status": "built" if b["path"] else "failed",
                           "size_bytes": b["path"].stat().st_size if b["path"] else None,
                           "seconds": b["seconds"], "reason": b["error"]}
        if b["path"]:
            files[b["name"]] = (b["format"], b["path"])
    runners = {}
    for name, (fmt, path) in files.items():
        try:
            runners[name] = runner_for(fmt, path, names, output_names)
            rows[name].update(quality(outputs_on(runners[name], samples), reference.outputs, labels))
        except Exception as err:  # a toolkit file the runtime refuses is a result
            runners.pop(name, None)
            rows[name].update(status="failed", reason=f"runtime: {str(err).splitlines()[0][:160]}")
    latency = interleaved_p50_ms(runners, samples[: LATENCY_SAMPLES[model.kind]])
    for name, row in rows.items():
        base = rows.get(f"{row['format']}-fp32") or rows.get("onnx-fp32")
        row["size_ratio"] = (round(row["size_bytes"] / base["size_bytes"], 4)
                             if row["size_bytes"] and base and base["size_bytes"] else None)
        row["latency_p50_ms"] = latency.get(name)
        fp32_ms = latency.get(f"{row['format']}-fp32")
        row["latency_ratio"] = round(latency[name] / fp32_ms, 3) if name in latency and fp32_ms else None
    total = {"model": model.name, "source": "edgeship", "variant": "(whole conversion)",
             "format": "", "precision": "", "status": "", "seconds": round(seconds, 1)}
    return [*rows.values(), total]


def check_targets(rows: list[dict], models: dict[str, BenchModel]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets, each with PASS / MISS and the figure."""
    checks: list[tuple[str, bool | None, str]] = []
    for row in rows:
        model = models[row["model"]]
        label = f"{row['model']} {row['variant']}"
        if row["variant"] == "(whole conversion)" and row["model"] in TIME_TARGETS:
            limit = TIME_TARGETS[row["model"]]
            checks.append((f"{row['model']} default conversion <= {limit:.0f} s",
                           row["seconds"] <= limit, f"{row['seconds']:.0f} s"))
        if row["source"] != "edgeship" or row["variant"] == "(whole conversion)":
            continue
        ratio, limit = row.get("size_ratio"), SIZE_TARGETS.get(row["precision"])
        if model.kind == "cnn" and model.large and ratio is not None and limit is not None:
            checks.append((f"{label} size <= {limit}x fp32", ratio <= limit, f"{ratio:.3f}"))
        if model.kind == "encoder" and row["precision"] == "int8-dynamic":
            cosine, speed = row.get("cosine"), row.get("latency_ratio")
            checks.append((f"{label} ships with cosine >= 0.99",
                           row["status"] == "passed" and cosine is not None and cosine >= 0.99,
                           f"{row['status']}, cosine {cosine:.4f}" if cosine else row["status"]))
            checks.append((f"{label} faster than fp32 (p50 ratio)", speed is not None and speed < 1.0,
                           f"{speed:.2f}x" if speed else "–"))
        drop = row.get("accuracy_drop")
        if row["model"] == "digits-cnn" and row["precision"] == "int8" and drop is not None:
            checks.append((f"{label} accuracy drop <= 0.5 pts", drop <= 0.005, f"{drop * 100:+.2f} pts"))
        if row["model"] == "resnet-style" and row["variant"] == "onnx-int8-static" and row["latency_ratio"]:
            checks.append(("resnet-style onnx-int8-static faster than onnx-fp32 (p50 ratio)",
                           row["latency_ratio"] < 1.0, f"{row['latency_ratio']:.3f}x"))
    return checks


def print_table(rows: list[dict]) -> None:
    header = ("model", "source", "variant", "status", "size ×fp32", "cosine", "acc drop pts",
              "p50 ms", "p50 ×fp32", "seconds")
    lines = [header]
    for r in rows:
        drop = r.get("accuracy_drop")
        lines.append((
            r["model"], r["source"], r["variant"], r["status"], _fmt(r.get("size_ratio"), "{:.3f}"),
            _fmt(r.get("cosine"), "{:.4f}"), _fmt(drop * 100 if drop is not None else None, "{:+.2f}"),
            _fmt(r.get("latency_p50_ms"), "{:.3f}"), _fmt(r.get("latency_ratio"), "{:.2f}"),
            _fmt(r.get("seconds"), "{:.1f}"),
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def _fmt(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--models", default="minilm-l6,minilm-l6-outliers,digits-cnn,"
                                            "mobilenetv2-style,resnet-style")
    args = parser.parse_args()
    from converter.quiet import quiet_toolchains
    from edgeship.contract.signing import generate_keypair

    quiet_toolchains()
    models = bench_models()
    key = args.out / "keys" / "publisher.key"
    if not key.exists():
        generate_keypair(key.parent)
    rows: list[dict] = []
    for name in args.models.split(","):
        model = models[name]
        directory = model.prepare(args.out)
        print(f"converting {name}...", flush=True)
        conversion, seconds = convert_model(model, directory, key)
        print(f"measuring {name} and the toolkit defaults...", flush=True)
        rows += measure_model(model, directory, conversion, seconds)
    print()
    print_table(rows)
    checks = check_targets(rows, models)
    print("\ntargets:")
    for label, ok, figure in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {label}: {figure}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "variants": rows, "targets": [{"target": t, "met": ok, "value": v} for t, ok, v in checks],
    }, indent=2, default=str) + "\n")
    print(f"\nwritten: {RESULTS}")


if __name__ == "__main__":
    main()
