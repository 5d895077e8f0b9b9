"""Compression steps through the CLI and the API on the real toolchain: pruned and distilled
digits models exported and validated as ONNX, TFLite and Core ML (spec-checked off macOS)."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from tests.converter.test_convert_e2e import edgeship, verify_release

pytestmark = pytest.mark.slow

CHANNELS = '"prune:channel:bn-scale:0.3", "fuse"'
DISTILL = '"distill:T4->1:alpha0.5"'
FINE_TUNE_EPOCHS = 4
#: Gate of the pruned variants. Fine-tuning lands the 30%-pruned digits CNN a few eval samples
#: from the reference, how many depends on the CPU's float kernels (0.67 points with 2 epochs on
#: one AMD EPYC, within 0.5 on others): the default 0.5-point gate was a coin toss on some CPUs.
#: 3 points still catch a pruning or fine-tuning that breaks the model; the test checks that the
#: gate is applied and reports the drop it measured (onnx-pruned-strict), not where training lands.
PRUNED_GATE = 0.03


def test_channel_pruned_and_distilled_models_ship_in_every_format(digits_dir, signing_key, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"""
[compression]
student = "examples.digits:student"
epochs = 15
fine_tune_epochs = {FINE_TUNE_EPOCHS}

[[variants]]
kind = "onnx-fp32"
id = "onnx-pruned"
steps = [{CHANNELS}]
gates = {{ max_accuracy_drop = {PRUNED_GATE} }}

[[variants]]
kind = "onnx-fp32"
id = "onnx-pruned-strict"
steps = [{CHANNELS}]
gates = {{ max_accuracy_drop = -1.0 }}

[[variants]]
kind = "tflite-int8"
id = "tflite-int8-pruned"
steps = [{CHANNELS}]
gates = {{ max_accuracy_drop = {PRUNED_GATE} }}

[[variants]]
kind = "coreml-int8-weights"
id = "coreml-pruned"
steps = [{CHANNELS}]

[[variants]]
kind = "onnx-int8-static"
id = "onnx-int8-student"
steps = [{DISTILL}]
gates = {{ max_accuracy_drop = 0.04 }}

[[variants]]
kind = "tflite-fp32"
id = "tflite-student"
steps = [{DISTILL}]
gates = {{ max_accuracy_drop = 0.04 }}

[[variants]]
kind = "coreml-fp16"
id = "coreml-student"
steps = [{DISTILL}]
""")
    out = tmp_path / "release"
    proc = edgeship("convert", "--model", digits_dir / "digits_cnn.pt", "--input", "image:1x1x8x8:float32",
                    "--calib", digits_dir / "calib.npz", "--eval", digits_dir / "eval.npz",
                    "--train", digits_dir / "train.npz", "--recipe", recipe,
                    "--signing-key", signing_key, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = verify_release(out, signing_key.with_suffix(".pub"))
    shipped = {v["id"]: v for v in data["variants"]}
    status = {k: v["validation"] for k, v in shipped.items()}
    assert status == {"onnx-pruned": "passed", "tflite-int8-pruned": "passed",
                      "coreml-pruned": "not_validated", "onnx-int8-student": "passed",
                      "tflite-student": "passed", "coreml-student": "not_validated"}, proc.stdout
    # the manifest records the model steps first, then the export's
    assert shipped["onnx-pruned"]["compression"] == ["prune:channel:bn-scale:0.3", "fuse"]
    assert shipped["tflite-int8-pruned"]["compression"][:2] == ["prune:channel:bn-scale:0.3", "fuse"]
    assert shipped["tflite-int8-pruned"]["compression"][2] in (  # per tensor where harmless
        "quant:static:int8:per-channel", "quant:static:int8:per-layer")
    assert shipped["coreml-student"]["compression"][0] == "distill:T4->1:alpha0.5"
    # the fp32 export reproduces the compressed model; accuracy is measured against the source
    export = shipped["onnx-pruned"]["metrics"]["export"]
    assert export["max_abs_err"] <= 1e-4 and export["agreement"] == 1.0
    report = {v["id"]: v for v in json.loads((out / "report.json").read_text())["variants"]}
    # the gates see the drop measured against the source model, and are applied to it
    gates = {"onnx-pruned": PRUNED_GATE, "tflite-int8-pruned": PRUNED_GATE, "onnx-int8-student": 0.04,
             "tflite-student": 0.04, "onnx-pruned-strict": -1.0}
    for variant_id, gate in gates.items():
        metrics = report[variant_id]["metrics"]
        assert metrics["accuracy_drop"] == pytest.approx(data["reference"]["accuracy"] - metrics["accuracy"],
                                                          abs=3e-6), variant_id
        assert (report[variant_id]["status"] == "passed") == (metrics["accuracy_drop"] <= gate), variant_id
    strict = report["onnx-pruned-strict"]  # a gate no model meets: left out, naming the drop measured
    assert strict["status"] == "failed" and "onnx-pruned-strict" not in shipped
    measured = re.fullmatch(r"accuracy drop (-?\d+\.\d\d) pts > -100\.00 pts", strict["reason"])
    assert measured, strict["reason"]
    assert float(measured[1]) == pytest.approx(strict["metrics"]["accuracy_drop"] * 100, abs=0.006)
    prune = report["onnx-pruned"]["steps"][0]
    assert prune["macs_ratio"] <= 0.55 and prune["kept_layers"] == ["head.3"]
    assert len(prune["fine_tune"]) == FINE_TUNE_EPOCHS
    assert report["onnx-pruned"]["model"]["macs"] < data["reference"]["macs"] * 0.55
    distill = report["tflite-student"]["steps"][0]
    assert distill["student_params"] * 4 <= distill["teacher_params"]
    assert len(distill["history"]) == 15
    # one line per epoch with loss and eval accuracy, trained once for the three variants
    epoch_lines = [ln for ln in proc.stderr.splitlines() if "distill examples.digits:student: epoch" in ln]
    assert len(epoch_lines) == 15 and "eval_accuracy" in epoch_lines[-1]
    md = (out / "report.md").read_text()
    assert "prune:channel:bn-scale:0.3" in md and "distill:T4->1:alpha0.5" in md


def test_unstructured_pruning_reports_sparsity_and_gzip_size_in_every_format(digits_dir, signing_key,
                                                                            tmp_path):
    from converter import run_conversion
    from converter.progress import Progress

    recipe = tmp_path / "recipe.toml"
    # Half the weights zeroed, no fine-tuning: 2 of 450 eval samples change on this machine's
    # digits CNN, which the default gates (0.5 points, 99% agreement) allow by 1 and 2 samples;
    # a CPU that trains the CNN a little differently can land past them. Wide gates: this test is
    # about sparsity and sizes, and still fails on a pruning that breaks the model.
    recipe.write_text("""
[gates]
max_accuracy_drop = 0.03
min_agreement = 0.97
[compression]
steps = ["prune:l1-unstructured:global:0.5"]
[[variants]]
kind = "onnx-fp32"
[[variants]]
kind = "onnx-fp32"
id = "onnx-dense"
steps = []
[[variants]]
kind = "tflite-fp32"
[[variants]]
kind = "coreml-fp16"
""")
    conversion = run_conversion(
        digits_dir / "digits_cnn.pt", ["image:1x1x8x8:float32"], digits_dir / "eval.npz",
        tmp_path / "release", calib_data=digits_dir / "calib.npz", train_data=digits_dir / "train.npz",
        recipe=recipe, model_name="digits-cnn", signing_key=signing_key, progress=Progress(quiet=True),
    )
    results = {r.id: r for r in conversion.results}
    assert {r.status for r in results.values()} == {"passed", "not_validated"}
    sparse, dense = results["onnx-fp32"], results["onnx-dense"]
    sparsity = sparse.steps[0]
    assert sparsity["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert set(sparsity["layers"]) == {"features.0", "features.3", "features.7", "head.1", "head.3"}
    # same dense file size, much smaller compressed
    assert abs(sparse.size_bytes - dense.size_bytes) < 1024
    assert sparse.gzip_size_bytes < 0.75 * dense.gzip_size_bytes
    assert results["tflite-fp32"].gzip_size_bytes < 0.75 * results["tflite-fp32"].size_bytes
    assert results["coreml-fp16"].compression[0] == "prune:l1-unstructured:global:0.5"
    md = (tmp_path / "release" / "report.md").read_text()
    assert "gzip KB" in md and "| features.3 |" in md


def test_distillation_without_training_data_fails_before_any_work(digits_dir, signing_key, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[[variants]]\nkind = "onnx-fp32"\nsteps = [{ step = "distill", '
                      'student = "examples.digits:student" }]\n')
    proc = edgeship("convert", "--model", digits_dir / "digits_cnn.pt", "--input", "image:1x1x8x8:float32",
                    "--eval", digits_dir / "eval.npz", "--recipe", recipe, "--signing-key", signing_key,
                    "--out", tmp_path / "release")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edgeship convert: error: ") and "--train FILE.npz" in last
    assert not (tmp_path / "release").exists()
