from __future__ import annotations

import pytest

from converter.catalogue import VARIANT_KINDS
from converter.errors import RecipeError
from converter.gates import gate_failures
from converter.recipe import Gates, default_recipe, load_recipe, parse_recipe


def test_default_recipe_builds_every_kind_with_default_gates():
    recipe = default_recipe()
    assert [p.request.id for p in recipe.variants] == [k for k, v in VARIANT_KINDS.items() if not v.opt_in]
    assert {"onnx-mixed", "tflite-mixed"} <= {k for k, v in VARIANT_KINDS.items() if v.opt_in}
    assert recipe.formats[:3] == ["onnx", "tflite", "coreml"]
    # runtimes few fleets carry are built when a recipe names them, not by every default conversion
    assert {"openvino-fp16", "openvino-int8", "mnn-fp32", "mnn-int8"} <= {
        k for k, v in VARIANT_KINDS.items() if v.opt_in}
    gates = recipe.variants[0].gates
    assert (gates.max_accuracy_drop, gates.min_agreement, gates.max_abs_err_fp32) == (0.005, 0.99, 1e-4)


def test_recipe_file_sets_options_ids_and_gate_overrides(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[gates]\nmin_agreement = 0.98\n'
        '[validation]\nmax_samples = 50\n'
        '[[variants]]\nkind = "onnx-int8-static"\nid = "onnx-int8-entropy"\ncalibration = "entropy"\n'
        'gates = { max_accuracy_drop = 0.01 }\n'
        '[[variants]]\nkind = "tflite-fp32"\n'
    )
    recipe = load_recipe(path)
    first, second = recipe.variants
    assert first.request.id == "onnx-int8-entropy"
    assert first.request.options["calibration"] == "entropy"
    assert first.request.options["per_channel"] is True  # default kept
    assert first.gates.max_accuracy_drop == 0.01 and first.gates.min_agreement == 0.98
    assert second.gates.max_accuracy_drop == 0.005
    assert recipe.validation.max_samples == 50


@pytest.mark.parametrize(
    "data, fragment",
    [({"variants": [{"kind": "onnx-int3"}]}, "unknown variant kind"),
     ({"variants": [{"kind": "onnx-fp32", "bits": 3}]}, "unknown option"),
     ({"gates": {"max_drop": 1}}, "unknown gate"),
     ({"variants": [{"kind": "onnx-fp32"}, {"kind": "onnx-fp32"}]}, "unique"),
     ({"variants": [{"kind": "onnx-fp32", "id": "Bad Id"}]}, "must match"),
     ({"extra": {}}, "unknown section"),
     ({"validation": {"threads": 0}}, "positive")],
)
def test_bad_recipes_are_refused_with_reason(data, fragment):
    with pytest.raises(RecipeError, match=fragment):
        parse_recipe(data)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gates\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


def test_gates_name_each_failure():
    metrics = {"accuracy_drop": 0.012, "agreement": 0.97, "max_abs_err": 3e-4,
               "latency_ms": {"p95": 9.0}, "size_bytes": 2000}
    gates = Gates(max_latency_p95_ms=5.0, max_size_bytes=1000)
    failures = gate_failures(metrics, gates, "fp32")
    assert len(failures) == 5
    assert any("accuracy drop 1.20 pts" in f for f in failures)
    # the fp32 error gate does not apply to quantized variants
    assert not any("max abs" in f for f in gate_failures(metrics, gates, "int8"))


def test_gates_pass_good_metrics_and_skip_missing_labels():
    metrics = {"agreement": 1.0, "max_abs_err": 1e-6}
    assert gate_failures(metrics, Gates(), "fp32") == []
    assert gate_failures({"agreement": 0.999, "max_abs_err": float("inf")}, Gates(), "fp32")
