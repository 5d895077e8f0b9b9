"""Accuracy-aware tuning on the real toolchain: the outlier-channel digits CNN, which plain static
int8 ruins, gets an ONNX and a TFLite int8 variant that pass; a tight budget keeps the closest
attempt, failed, with the layers that hurt most named."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_quantizer")

from converter.progress import Progress

pytestmark = pytest.mark.slow


def test_tuning_recovers_the_outlier_model_and_records_every_attempt(digits_dir, signing_key, tmp_path,
                                                                    monkeypatch):
    from converter import run_conversion

    monkeypatch.setenv("EDGESHIP_DIGITS_DIR", str(digits_dir))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("""
[validation]
max_samples = 300
calibration_samples = 64
[tuning]
sensitivity_samples = 100
[[variants]]
kind = "onnx-int8-static"
[[variants]]
kind = "onnx-int8-static"
id = "onnx-int8-budget"
tuning = { max_trials = 6, max_float_layers = 1 }
[[variants]]
kind = "tflite-int8"
""")
    conversion = run_conversion(
        "examples.outlier:trained_model", ["image:1x1x8x8:float32"], digits_dir / "eval.npz",
        tmp_path / "release", calib_data=digits_dir / "calib.npz", recipe=recipe,
        model_name="digits-outlier", signing_key=signing_key, progress=Progress(quiet=True),
    )
    results = {r.id: r for r in conversion.results}
    for variant_id in ("onnx-int8-static", "tflite-int8"):
        result = results[variant_id]
        attempts = result.tuning["attempts"]
        # plain static int8 collapses on the outlier channels...
        assert attempts[0]["status"] == "failed" and attempts[0]["metrics"]["accuracy_drop"] > 0.5
        assert "accuracy drop" in attempts[0]["rejected"]
        # ...and the tuned variant passes, keeping the layers around the outlier tensor in float
        assert result.status == "passed" and result.metrics["accuracy_drop"] <= 0.005, result.reason
        assert result.tuning["outcome"] == "passed" and attempts[-1]["kept"]
        float_layers = result.tuning["kept"]["float_layers"]
        assert float_layers and set(float_layers) <= {row["layer"] for row in result.tuning["sensitivity"]}
        assert result.built.path.name.startswith(f"{variant_id}.")  # renamed from its attempt
        assert any(step.startswith("keep-float:") for step in result.compression)
    onnx_rows = results["onnx-int8-static"].tuning["sensitivity"]
    assert {row["module"] for row in onnx_rows[:2]} == {"features.3", "features.7"}
    # a budget too small to find it: the closest attempt is kept, failed, hurting layers named
    limited = results["onnx-int8-budget"]
    assert limited.status == "failed" and len(limited.tuning["attempts"]) == 7
    assert limited.tuning["outcome"] == "closest kept (failed)"
    assert limited.tuning["kept"]["calibration"] == "entropy"
    assert "none passed" in limited.reason and "layers hurting most: node_Conv" in limited.reason
    shipped = {v.id for v in conversion.manifest.variants}
    assert shipped == {"onnx-int8-static", "tflite-int8"}
    release = tmp_path / "release"
    assert not [p.name for p in release.iterdir() if re.search(r"\.t\d+\.", p.name)]  # attempts deleted
    report = json.loads((release / "report.json").read_text())
    tuned = {v["id"]: v["tuning"] for v in report["variants"] if v["tuning"]}
    assert set(tuned) == {"onnx-int8-static", "onnx-int8-budget", "tflite-int8"}
    md = (release / "report.md").read_text()
    assert "## Accuracy-aware tuning" in md and "Per-layer sensitivity" in md
    assert "| 0 | as requested |" in md
