"""The gated pipeline's verdicts and the report additions (Pareto front), pure; and the target
search end to end on the digits CNN with the real toolchain."""

from __future__ import annotations

import json

import pytest

from converter.recipe import Gates, Targets
from converter.report_plots import front_2d, pareto_front
from converter.report_sections import compression_sections, search_sections, tuning_sections
from converter.results import VariantResult
from converter.search import target_gates


def test_pareto_front_keeps_only_non_dominated_candidates():
    points = [(100, 1.0, 0.99), (50, 2.0, 0.98), (60, 2.5, 0.97), (200, 0.5, 0.99), (100, 1.0, 0.95)]
    assert pareto_front(points) == {0, 1, 3}
    assert front_2d([(3, 0.9), (1, 0.5), (2, 0.8), (4, 0.85)]) == [(1, 0.5), (2, 0.8), (3, 0.9)]


def test_target_gates_split_accuracy_from_size_and_latency():
    accuracy, performance = target_gates(Gates(min_agreement=0.98),
                                         Targets(max_size_mb=0.5, max_latency_ms=2.0, max_accuracy_drop=0.01))
    assert (accuracy.max_accuracy_drop, accuracy.min_agreement) == (0.01, 0.98)
    assert accuracy.max_size_bytes is None and accuracy.max_latency_p95_ms is None
    assert (performance.max_size_bytes, performance.max_latency_p95_ms) == (500_000, 2.0)
    assert performance.max_accuracy_drop is None and performance.min_agreement is None
    keep, _ = target_gates(Gates(), Targets(max_size_mb=1.0))
    assert keep.max_accuracy_drop == Gates().max_accuracy_drop


def test_report_sections_show_steps_tuning_and_search():
    pruned = VariantResult("onnx-pruned", "onnx-fp32", "onnx", "fp32", steps=[{
        "step": "prune:channel:l1:0.3", "seconds": 0.4, "macs_before": 100, "macs_after": 49,
        "macs_ratio": 0.49, "params_before": 10, "params_after": 5, "params_ratio": 0.5,
        "kept_layers": ["fc"], "channels": {"conv": [16, 11], "fc": [10, 10]},
        "fine_tune": [{"epoch": 1, "loss": 0.5, "eval_accuracy": 0.97}]}])
    tuned = VariantResult("onnx-int8-static", "onnx-int8-static", "onnx", "int8", tuning={
        "outcome": "passed", "seconds": 3.0, "kept": {"float_layers": ["node_Conv_2"]},
        "attempts": [{"attempt": 0, "change": "as requested", "settings": "minmax, per-channel",
                      "status": "failed", "kept": False, "rejected": "accuracy drop 9 pts > 0.5 pts",
                      "shortfall": 17.0, "metrics": {"accuracy": 0.9, "accuracy_drop": 0.09}},
                     {"attempt": 1, "change": "+ float node_Conv_2", "settings": "minmax, per-channel, "
                      "1 float layer", "status": "passed", "kept": True, "rejected": None,
                      "shortfall": 0.0, "metrics": {"accuracy": 0.99, "accuracy_drop": 0.0}}],
        "sensitivity": [{"layer": "node_Conv_2", "op": "Conv", "module": "features.3", "score": 0.3,
                         "agreement": 0.7}]})
    text = "\n".join(compression_sections([pruned]) + tuning_sections([pruned, tuned]))
    assert "MACs 100 → 49 (×0.490)" in text and "| conv | 16 | 11 |" in text
    assert "| fine-tune epoch | loss | eval accuracy |" in text
    assert "| 0 | as requested | minmax, per-channel | failed |" in text
    assert "| 1 | node_Conv_2 | Conv | features.3 | 0.3 | 0.700 | yes |" in text
    search = [{"variant": "onnx-target", "format": "onnx", "outcome": "met with prune:channel:l1:0.35",
               "targets": {"max_size_mb": 0.03, "max_latency_ms": None, "max_accuracy_drop": 0.01,
                           "max_prune": 0.7},
               "steps": [{"loop": "prune", "rate": 0.35, "settings": "prune:channel:l1:0.35",
                          "metrics": {"accuracy": 0.99, "accuracy_drop": 0.002, "size_bytes": 20480},
                          "accuracy_met": True, "performance_met": True, "verdict": ""}]}]
    search_text = "\n".join(search_sections(search))
    assert "### onnx-target: met with prune:channel:l1:0.35" in search_text
    assert "Targets: max size mb 0.03, max accuracy drop 0.01." in search_text
    assert "| 0 | prune | 0.3500 |" in search_text and "| yes | yes |" in search_text


@pytest.mark.slow
def test_target_search_prunes_until_the_size_target_is_met(digits_dir, signing_key, tmp_path):
    pytest.importorskip("torch_pruning")
    from converter import run_conversion
    from converter.progress import Progress

    recipe = tmp_path / "recipe.toml"
    # Unpruned, static int8 of this CNN is 28 KB (per-layer weight granularity), so 24 KB needs
    # pruning. The sizes (so the bisection's rates) follow from the architecture alone; accuracy after
    # pruning and fine-tuning depends on the CPU's float kernels: with a 1-point target, 17.5%
    # met it by 1.5 eval samples here. 3 points leave the 17.5% and 35% rates a wide margin and
    # still refuse 70% (~7 points); int8's agreement with the pruned model gets a margin too. The
    # test checks the search's rules, not where training lands.
    recipe.write_text("""
[gates]
min_agreement = 0.97
[compression]
fine_tune_epochs = 2
[targets]
max_size_mb = 0.024
max_accuracy_drop = 0.03
bisect_steps = 2
[[variants]]
kind = "onnx-fp32"
""")
    conversion = run_conversion(
        digits_dir / "digits_cnn.pt", ["image:1x1x8x8:float32"], digits_dir / "eval.npz",
        tmp_path / "release", calib_data=digits_dir / "calib.npz", train_data=digits_dir / "train.npz",
        recipe=recipe, model_name="digits-cnn", signing_key=signing_key, progress=Progress(quiet=True),
    )
    result = {r.id: r for r in conversion.results}["onnx-target"]
    assert result.status == "passed", result.reason
    assert result.size_bytes <= 24_000 and result.metrics["accuracy_drop"] <= 0.03
    assert result.compression[0].startswith("prune:channel:bn-scale:")
    (log,) = conversion.search
    loops = [step["loop"] for step in log["steps"]]
    assert loops[0] == "quantize" and loops[1:] == ["prune"] * 3  # max_prune, then 2 bisections
    assert log["steps"][0]["accuracy_met"] and not log["steps"][0]["performance_met"]
    for step in log["steps"]:  # each verdict is the targets applied to what was measured
        assert step["performance_met"] == (step["metrics"]["size_bytes"] <= 24_000), step
        assert step["metrics"]["accuracy_drop"] <= 0.03 or not step["accuracy_met"], step
    rates = [step["rate"] for step in log["steps"][1:]]
    assert rates == [0.7, 0.35, 0.175]  # every rate met the size, so each bisection went lower
    assert not log["steps"][1]["accuracy_met"]  # 70% of the channels costs far more than 3 points
    met = [step["rate"] for step in log["steps"][1:] if step["accuracy_met"] and step["performance_met"]]
    chosen = float(result.compression[0].rsplit(":", 1)[1])
    assert chosen == met[-1] and log["outcome"] == f"met with prune:channel:bn-scale:{chosen:g}"
    release = tmp_path / "release"
    assert {v.id for v in conversion.manifest.variants} == {"onnx-fp32", "onnx-target"}
    assert sorted(p.name for p in release.glob("*.onnx")) == ["onnx-fp32.onnx", "onnx-target.onnx"]
    report = json.loads((release / "report.json").read_text())
    assert report["search"][0]["variant"] == "onnx-target"
    md = (release / "report.md").read_text()
    assert "## Target search" in md and "![Pareto plot](pareto.png)" in md
    assert (release / "pareto.png").read_bytes()[:4] == b"\x89PNG"
