"""Task-aware metrics, gates and report: a classifier is judged on accuracy and top-1
agreement, an embedding on cosine and relative error, a multi-output model output by output."""

from __future__ import annotations

import numpy as np
import pytest

from converter.gates import gate_failures, gate_shortfall
from converter.recipe import Gates, parse_recipe
from converter.report import format_table, markdown
from converter.results import VariantResult
from converter.specs import TensorSpec
from converter.task import gates_for_task, infer_task_kind, recipe_for_task
from converter.task_metrics import relative_error, task_fidelity
from edgeship.contract.manifest import Manifest

RNG = np.random.default_rng(0)


def spec(name: str, *shape: int, dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, shape, dtype)


def noisy(array: np.ndarray, scale: float) -> np.ndarray:
    return array + RNG.normal(0, scale, array.shape)


@pytest.mark.parametrize("outputs, labels, kind", [
    ([spec("output", 1, 64)], None, "embedding"),
    ([spec("logits", 1, 10)], None, "classification"),
    ([spec("output", 1, 10)], np.array([1, 2, 3]), "classification"),
    ([spec("output", 1, 1)], np.array([0.5, 1.25]), "regression"),
    ([spec("boxes", 1, 8, 4), spec("scores", 1, 8)], None, "generic"),
    ([spec("output", 1, 32, 64)], None, "generic"),
    ([spec("logits", 1, 32, 64)], None, "generic"),  # a language model's next-token logits
    ([spec("output", 1, 1)], None, "generic"),
])
def test_task_kind_is_inferred_from_labels_and_outputs(outputs, labels, kind):
    assert infer_task_kind(outputs, labels)[0] == kind


def test_each_task_gets_the_gates_it_can_measure_and_keeps_explicit_ones():
    embedding = gates_for_task(Gates(), "embedding")
    assert (embedding.min_agreement, embedding.max_accuracy_drop) == (None, None)
    assert embedding.min_cosine == 0.99 and embedding.max_rel_err is None
    assert embedding.max_abs_err_fp32 == 1e-4  # fp32 stays exact whatever the task
    assert gates_for_task(Gates(min_cosine=0.95), "embedding").min_cosine == 0.95
    assert gates_for_task(Gates(), "regression").max_rel_err == 0.05
    assert gates_for_task(Gates(), "regression").min_cosine is None  # cosine of scalars is a sign
    assert gates_for_task(Gates(), "classification") == Gates()
    recipe = recipe_for_task(parse_recipe({"variants": [{"kind": "onnx-fp32"}]}), "embedding")
    assert recipe.variants[0].gates.min_agreement is None and recipe.gates.min_cosine == 0.99


def test_embedding_metrics_hold_cosine_and_error_never_agreement():
    ref = [RNG.normal(size=(20, 16))]
    metrics = task_fidelity([noisy(ref[0], 0.01)], ref, ["output"], "embedding", 0.99)
    assert set(metrics) == {"cosine", "rel_err", "max_abs_err"}
    assert 0.999 < metrics["cosine"] <= 1.0 and 0.005 < metrics["rel_err"] < 0.02
    classifier = task_fidelity([noisy(ref[0], 0.01)], ref, ["logits"], "classification", 0.99)
    assert set(classifier) == {"agreement", "cosine", "max_abs_err"}


def test_relative_error_is_the_ratio_of_norms_and_flags_non_finite_outputs():
    ref = np.ones((4, 3))
    assert relative_error([ref * 1.1], [ref]) == pytest.approx(0.1)
    assert relative_error([np.zeros_like(ref)], [np.zeros_like(ref)]) == 0.0
    assert relative_error([ref * np.nan], [ref]) == float("inf")


def test_a_multi_output_model_is_gated_output_by_output():
    boxes, scores = RNG.normal(size=(30, 8, 4)), RNG.normal(size=(30, 8))
    good = [noisy(boxes, 1e-3), noisy(scores, 1e-3)]
    bad_boxes = [noisy(boxes, 0.5), noisy(scores, 1e-3)]
    gates = gates_for_task(Gates(), "generic")
    names = ["boxes", "scores"]
    metrics = task_fidelity(good, [boxes, scores], names, "generic", 0.99)
    assert set(metrics["outputs"]) == {"boxes", "scores"}
    assert gate_failures(metrics, gates, "int8") == []
    failing = task_fidelity(bad_boxes, [boxes, scores], names, "generic", 0.99)
    failures = gate_failures(failing, gates, "int8")
    assert failures and all("output 'boxes'" in f for f in failures)
    assert gate_shortfall(failing, gates, "int8") > gate_shortfall(metrics, gates, "int8") == 0.0


def test_a_score_output_has_no_cosine_but_its_error_is_gated():
    scores = RNG.normal(size=(30, 1)) + 3.0
    metrics = task_fidelity([scores * 1.2, scores], [scores, scores], ["score", "copy"], "generic", 0.99)
    assert "cosine" not in metrics["outputs"]["score"]
    assert any("relative error of output 'score'" in f
               for f in gate_failures(metrics, gates_for_task(Gates(), "generic"), "int8"))


def test_outputs_recorded_as_not_finite_fail_the_gates():
    assert "outputs hold NaN or Inf" in gate_failures({"max_abs_err": None, "cosine": None},
                                                      gates_for_task(Gates(), "embedding"), "int8")


def variant(variant_id: str, metrics: dict, status: str = "passed") -> VariantResult:
    latency = {"latency_ms": {"p50": 1.0, "p95": 1.2}}
    return VariantResult(variant_id, variant_id, variant_id.split("-")[0], "fp32" if "fp32" in variant_id
                         else "int8", status=status, size_bytes=1000, metrics={**metrics, **latency})


def manifest(kind: str, outputs: list[str]) -> Manifest:
    return Manifest(model="m", version="1", task={"kind": kind, "inputs": [],
                                                 "outputs": [{"name": n} for n in outputs]},
                    reference={"params": 10, "macs": 20}, golden={}, variants=[])


def test_an_embedding_report_speaks_of_cosine_and_error_never_agreement():
    results = [variant("onnx-fp32", {"cosine": 1.0, "rel_err": 1e-7, "max_abs_err": 1e-6}),
               variant("onnx-int8-dynamic", {"cosine": 0.87, "rel_err": 0.5, "max_abs_err": 0.3},
                       status="failed")]
    text = format_table(results)
    header = text.splitlines()[0]
    assert "cosine" in header and "rel err" in header
    assert "agree" not in header and "accuracy" not in header
    page = markdown(manifest("embedding", ["output"]), results, plotted=False)
    assert "agree" not in page and "0.00%" not in page
    assert "cosine similarity and relative error" in page


def test_a_classifier_report_still_shows_accuracy_and_agreement():
    results = [variant("onnx-fp32", {"accuracy": 0.9, "accuracy_drop": 0.0, "agreement": 1.0,
                                     "cosine": 1.0, "max_abs_err": 1e-6})]
    header = format_table(results).splitlines()[0]
    assert "accuracy" in header and "agree" in header and "rel err" not in header


def test_the_report_lists_each_output_of_a_multi_output_model():
    outputs = {"boxes": {"cosine": 0.95, "rel_err": 0.3, "max_abs_err": 0.4},
               "scores": {"cosine": 0.9999, "rel_err": 0.01, "max_abs_err": 0.01}}
    results = [variant("onnx-int8", {"cosine": 0.97, "rel_err": 0.2, "max_abs_err": 0.4,
                                     "outputs": outputs}, status="failed")]
    page = markdown(manifest("generic", ["boxes", "scores"]), results, plotted=False)
    assert "## Per-output error" in page
    assert "| onnx-int8 | boxes | 0.950000 | 3.00e-01 | 4.00e-01 |" in page
