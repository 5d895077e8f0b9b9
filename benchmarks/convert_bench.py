"""Converter benchmark: every variant of three models, measured side by side in one run.

    python -m benchmarks.convert_bench [--out build/bench] [--models digits-cnn,resnet-style]

Models: the digits CNN, and a MobileNetV2-style and a ResNet-style network (over 1M parameters
each, ``examples/vision.py``) trained on digits upsampled to 32x32. Trained weights are cached
under ``--out``. Prints, per variant: size ratio to the fp32 file of its format, accuracy drop,
agreement, fp32 max abs error and p50 latency ratio to fp32 on the same runtime, then the
targets with PASS/MISS. Writes the table to ``benchmarks/results/convert.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "convert.json"
#: file size targets for the >= 1M-parameter models, as a share of the fp32 file.
SIZE_TARGETS = {"int8": 0.27, "int8-dynamic": 0.27, "int8-weights": 0.27, "fp16": 0.52}


@dataclass
class BenchModel:
    name: str
    input_spec: str
    build: Callable[[], object]
    data: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    epochs: int
    lr: float
    large: bool


def bench_models() -> dict[str, BenchModel]:
    from examples import digits, vision

    return {
        "digits-cnn": BenchModel("digits-cnn", digits.INPUT_SPEC, digits.DigitsCNN, digits.load_split,
                                 25, 3e-3, large=False),
        "mobilenetv2-style": BenchModel("mobilenetv2-style", "image:1x1x32x32:float32",
                                        vision.MobileNetV2Style, vision.digits32, 12, 3e-3, large=True),
        "resnet-style": BenchModel("resnet-style", "image:1x1x32x32:float32", vision.ResNetStyle,
                                   vision.digits32, 10, 2e-3, large=True),
    }


def prepare(model: BenchModel, out: Path) -> Path:
    """Train (once; cached) and write ``model.pt``, ``calib.npz`` and ``eval.npz``."""
    import torch

    from examples.digits import evaluate, train

    directory = out / model.name
    if (directory / "model.pt").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = model.data()
    torch.manual_seed(0)
    started = time.monotonic()
    print(f"training {model.name} ({model.epochs} epochs on {len(x_tr)} digits)...", flush=True)
    net = train(model.build(), x_tr, y_tr, epochs=model.epochs, lr=model.lr)
    print(f"  accuracy {evaluate(net, x_te, y_te):.4f} in {time.monotonic() - started:.0f}s", flush=True)
    torch.save(net, directory / "model.pt")
    np.savez(directory / "calib.npz", image=x_tr[:200], labels=y_tr[:200])
    np.savez(directory / "eval.npz", image=x_te, labels=y_te)
    return directory


def convert_model(model: BenchModel, directory: Path, key: Path) -> dict:
    from converter import run_conversion
    from converter.progress import Progress

    conversion = run_conversion(
        directory / "model.pt", [model.input_spec], directory / "eval.npz", directory / "release",
        calib_data=directory / "calib.npz", model_name=model.name, version="bench",
        signing_key=key, force=True, progress=Progress(),
    )
    return {"reference": conversion.manifest.reference, "results": conversion.results}


def rows_for(name: str, results: list) -> list[dict]:
    by_format_fp32 = {r.format: r for r in results if r.precision == "fp32" and r.size_bytes}
    onnx_fp32 = by_format_fp32.get("onnx")
    rows = []
    for r in results:
        base = by_format_fp32.get(r.format) or onnx_fp32
        m = r.metrics
        p50 = (m.get("latency_ms") or {}).get("p50")
        base_p50 = (base.metrics.get("latency_ms") or {}).get("p50") if base else None
        rows.append({
            "model": name, "variant": r.id, "precision": r.precision, "status": r.status,
            "size_bytes": r.size_bytes,
            "size_ratio": round(r.size_bytes / base.size_bytes, 4) if r.size_bytes and base else None,
            "accuracy": m.get("accuracy"), "accuracy_drop": m.get("accuracy_drop"),
            "agreement": m.get("agreement"), "max_abs_err": m.get("max_abs_err"),
            "latency_p50_ms": p50,
            "latency_ratio": round(p50 / base_p50, 3) if p50 and base_p50 else None,
            "reason": r.reason,
        })
    return rows


def check_targets(rows: list[dict], models: dict[str, BenchModel]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets, each with PASS / MISS / n/a (None) and the figure."""
    checks: list[tuple[str, bool | None, str]] = []
    for row in rows:
        large = models[row["model"]].large
        ratio, label = row["size_ratio"], f"{row['model']} {row['variant']}"
        limit = SIZE_TARGETS.get(row["precision"])
        if large and ratio is not None and limit is not None:
            checks.append((f"{label} size <= {limit}x fp32", ratio <= limit, f"{ratio:.3f}"))
        if row["precision"] == "fp32" and row["max_abs_err"] is not None:
            checks.append((f"{row['model']} {row['variant']} max abs err <= 1e-4",
                           row["max_abs_err"] <= 1e-4, f"{row['max_abs_err']:.2e}"))
        if row["model"] == "digits-cnn" and row["precision"] == "int8" and row["accuracy_drop"] is not None:
            checks.append((f"digits-cnn {row['variant']} accuracy drop <= 0.5 pts",
                           row["accuracy_drop"] <= 0.005, f"{row['accuracy_drop'] * 100:+.2f} pts"))
        if row["model"] == "resnet-style" and row["variant"] == "onnx-int8-static" and row["latency_ratio"]:
            checks.append(("resnet-style onnx-int8-static faster than onnx-fp32 (p50 ratio)",
                           row["latency_ratio"] < 1.0, f"{row['latency_ratio']:.3f}x"))
    return checks


def print_table(rows: list[dict]) -> None:
    header = ("model", "variant", "status", "size ×fp32", "acc drop pts", "agree", "max abs err",
              "p50 ms", "p50 ×fp32")
    lines = [header]
    for r in rows:
        lines.append((
            r["model"], r["variant"], r["status"], _fmt(r["size_ratio"], "{:.3f}"),
            _fmt(r["accuracy_drop"] * 100 if r["accuracy_drop"] is not None else None, "{:+.2f}"),
            _fmt(r["agreement"], "{:.4f}"), _fmt(r["max_abs_err"], "{:.1e}"),
            _fmt(r["latency_p50_ms"], "{:.3f}"), _fmt(r["latency_ratio"], "{:.2f}"),
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
    parser.add_argument("--models", default="digits-cnn,mobilenetv2-style,resnet-style")
    args = parser.parse_args()
    from converter.quiet import quiet_toolchains
    from edgeship.contract.signing import generate_keypair

    quiet_toolchains()
    models = bench_models()
    key = args.out / "keys" / "publisher.key"
    if not key.exists():
        generate_keypair(key.parent)
    rows: list[dict] = []
    references = {}
    for name in args.models.split(","):
        model = models[name]
        directory = prepare(model, args.out)
        print(f"converting {name}...", flush=True)
        result = convert_model(model, directory, key)
        references[name] = result["reference"]
        rows += rows_for(name, result["results"])
    print()
    print_table(rows)
    checks = check_targets(rows, models)
    print("\ntargets:")
    for label, ok, figure in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {label}: {figure}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "references": references, "variants": rows,
        "targets": [{"target": t, "met": ok, "value": v} for t, ok, v in checks],
    }, indent=2) + "\n")
    print(f"\nwritten: {RESULTS}")


if __name__ == "__main__":
    main()
