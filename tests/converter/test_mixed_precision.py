"""Per-layer mixed precision: the choice logic on its own (pure), then ``onnx-mixed`` and
``tflite-mixed`` on the tiny BERT example with the real toolchains and runtimes: the shipped
file holds the per-layer precisions its report claims, meets its budget, and is the most
faithful measured assignment that does; in a conversion the report shows the layers, the
front and its plot."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from converter.errors import VariantBuildError
from converter.tuning.mixed_precision import (
    Budget,
    Layer,
    Point,
    budget_edge,
    choose,
    pareto_front,
    parse_budget,
    precision_path,
    spread,
)

# --------------------------------------------------------------------------- the choice (pure)


def _layers() -> list[Layer]:
    return [
        Layer("a", "MatMul", None, 1000, 10, {"fp16": 1e-9, "int8": 1e-6}),
        Layer("b", "MatMul", None, 1000, 10, {"fp16": 1e-9, "int8": 1e-3}),  # sensitive in int8
        Layer("c", "MatMul", None, 4000, 10, {"fp16": 1e-9, "int8": 2e-6}),
    ]


def test_the_path_lowers_one_layer_a_step_cheapest_error_per_byte_first():
    path = precision_path(_layers())
    assert path[0] == {"a": "fp32", "b": "fp32", "c": "fp32"}
    assert path[-1] == {"a": "int8", "b": "int8", "c": "int8"}
    assert len(path) == 1 + 2 * 3
    for before, after in itertools.pairwise(path):
        changed = [k for k in before if before[k] != after[k]]
        assert len(changed) == 1
    # the sensitive layer goes to int8 last; the big, robust one goes to fp16 first
    assert path[1] == {"a": "fp32", "b": "fp32", "c": "fp16"}
    assert path[-2]["b"] == "fp16" and all(v == "int8" for k, v in path[-2].items() if k != "b")


def test_spread_keeps_both_ends():
    path = precision_path(_layers())
    picked = spread(path, 3)
    assert picked[0] == path[0] and picked[-1] == path[-1] and len(picked) == 3
    assert spread(path, 50) == path
    assert spread(path, 3, edge=2) == [path[i] for i in (0, 2, 3, 6)]


def test_the_budget_edge_is_the_first_assignment_predicted_to_fit():
    layers = _layers()  # 6000 weights: 24,000 bytes in fp32
    path = precision_path(layers)
    edge = budget_edge(path, layers, Budget("size_ratio", 0.7), base_size=24_000)
    assert edge is not None
    predicted = [24_000 - sum(layer.bytes("fp32") - layer.bytes(a[layer.name]) for layer in layers)
                 for a in path]
    assert predicted[edge] <= 0.7 * 24_000 < predicted[edge - 1]
    assert budget_edge(path, layers, Budget("p50_ratio", 0.7), 24_000) is None
    assert budget_edge(path, layers, Budget("size_ratio", 0.01), 24_000) is None


def _point(size: float, error: float, p50: float | None = 1.0) -> Point:
    return Point({"a": "fp32"}, int(size * 1000), error, None, size, p50)


def test_front_and_choice_within_budget():
    points = [_point(1.0, 0.0), _point(0.6, 1e-6), _point(0.7, 1e-5), _point(0.3, 1e-3)]
    front = pareto_front(points, "size_ratio")
    assert [p.size_ratio for p in front] == [0.3, 0.6, 1.0]  # 0.7 is beaten by 0.6
    best = choose(points, Budget("size_ratio", 0.65), "v")
    assert best is points[1] and best.chosen and sum(p.chosen for p in points) == 1
    with pytest.raises(VariantBuildError, match=r"budget size_ratio <= 0.2; the cheapest measured is 0.3"):
        choose(points, Budget("size_ratio", 0.2), "v")


@pytest.mark.parametrize("value", [None, {}, {"size": 0.5}, {"size_ratio": 0}, {"size_ratio": 3},
                                   {"size_ratio": 0.5, "p50_ratio": 0.9}, {"p50_ratio": True}])
def test_bad_budgets_are_named(value):
    with pytest.raises(VariantBuildError, match="budget"):
        parse_budget(value, "v")


def test_budget_parses():
    assert parse_budget({"p50_ratio": 0.8}, "v") == Budget("p50_ratio", 0.8)


# --------------------------------------------------------------------------- on the runtimes


def _request(kind: str, **options):
    from converter.catalogue import VARIANT_KINDS
    from converter.export.base import VariantRequest

    k = VARIANT_KINDS[kind]
    return VariantRequest(kind, k, {**k.options, **options})


def _chosen(details: dict) -> dict:
    (chosen,) = [c for c in details["mixed"]["candidates"] if c["chosen"]]
    return chosen


def _check_choice(details: dict, size_bytes: int, base_size: int, budget: float) -> dict:
    """The chosen assignment meets the budget with its real file, is on the front, and no
    other measured assignment within the budget is more faithful."""
    chosen = _chosen(details)
    assert chosen["front"] and chosen["size_bytes"] == size_bytes
    assert size_bytes / base_size <= budget
    within = [c for c in details["mixed"]["candidates"] if c["size_ratio"] <= budget]
    assert chosen["error"] == min(c["error"] for c in within)
    shares = {p: sum(1 for row in details["mixed"]["layers"] if row["precision"] == p)
              for p in ("fp32", "fp16", "int8")}
    assert shares == chosen["layers"]
    assert len(details["mixed"]["candidates"]) >= 2
    return shares


@pytest.mark.slow
def test_onnx_mixed_ships_the_precisions_it_reports(bert, bert_onnx):
    import onnx

    from converter.export.dispatch import build_variant
    from converter.tuning.scoring import output_error
    from edgeship.runtimes.onnx import OnnxRunner

    built = build_variant(_request("onnx-mixed", budget={"size_ratio": 0.6}), bert_onnx, bert)
    shares = _check_choice(built.details, built.path.stat().st_size, bert_onnx.stat().st_size, 0.6)
    model = onnx.load(str(built.path))
    ops = [n.op_type for n in model.graph.node]
    rows = built.details["mixed"]["layers"]
    assert ops.count("MatMulInteger") == sum(r["precision"] == "int8" and r["op"] == "MatMul" for r in rows)
    assert any(r["op"] == "Gather" for r in rows)  # the token table is a layer too
    half = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(half) == shares["fp16"]
    assert built.compression == [f"quant:mixed:fp32x{shares['fp32']}:fp16x{shares['fp16']}"
                                 f":int8x{shares['int8']}"]
    # the error the choice was made on is the shipped file's
    names = [s.name for s in bert.inputs]
    samples = list(bert.calibration())
    run = [OnnxRunner(p, names, threads=1) for p in (built.path, bert_onnx)]
    outs = [[np.concatenate(o) for o in zip(*(r.run(s) for s in samples), strict=True)] for r in run]
    assert output_error(outs[0], outs[1])["score"] == pytest.approx(_chosen(built.details)["error"],
                                                                    rel=0.05, abs=1e-9)


@pytest.mark.slow
def test_onnx_mixed_refuses_a_budget_no_assignment_meets(bert, bert_onnx):
    from converter.export.dispatch import build_variant

    with pytest.raises(VariantBuildError,
                       match=r"no per-layer assignment meets the budget size_ratio <= 0.05"):
        build_variant(_request("onnx-mixed", budget={"size_ratio": 0.05}), bert_onnx, bert)


@pytest.mark.slow
def test_tflite_mixed_ships_the_precisions_it_reports(bert, bert_tflite):
    from converter.export.dispatch import build_variant

    built = build_variant(_request("tflite-mixed", budget={"size_ratio": 0.6}), bert_tflite, bert)
    shares = _check_choice(built.details, built.path.stat().st_size, bert_tflite.stat().st_size, 0.6)
    assert shares["int8"] + shares["fp16"] > 0
    dtypes = built.details["tensor_dtypes"]
    assert dtypes.get("float16", 0) == shares["fp16"]  # one float16 weight per fp16 op
    assert (dtypes.get("int8", 0) > 0) == (shares["int8"] > 0)


@pytest.mark.slow
def test_mixed_variants_in_a_conversion_report_layers_and_front(bert_dir, signing_key, tmp_path):
    import json

    from converter import run_conversion
    from converter.gates import gate_failures
    from converter.progress import Progress
    from converter.recipe import parse_recipe
    from examples.tiny_bert import INPUT_SPECS

    recipe = parse_recipe({"validation": {"max_samples": 128}, "variants": [
        "onnx-fp32", {"kind": "onnx-mixed", "budget": {"size_ratio": 0.6}},
        {"kind": "tflite-mixed", "id": "tflite-mixed-p50", "budget": {"p50_ratio": 1.5}}]})
    conversion = run_conversion(
        bert_dir / "tiny_bert.pt", list(INPUT_SPECS), bert_dir / "eval.npz", tmp_path / "rel",
        calib_data=bert_dir / "calib.npz", recipe=recipe, model_name="tiny-bert",
        signing_key=signing_key, progress=Progress(quiet=True))
    results = {r.id: r for r in conversion.results}
    plans = {p.request.id: p for p in recipe.variants}
    md = (tmp_path / "rel" / "report.md").read_text()
    figures = {f["file"] for f in json.loads((tmp_path / "rel" / "manifest.json").read_text())["figures"]}
    assert "## Mixed precision per layer" in md
    for variant_id in ("onnx-mixed", "tflite-mixed-p50"):
        result = results[variant_id]
        assert result.precision == "mixed" and result.metrics, (variant_id, result.reason)
        failures = gate_failures(result.metrics, plans[variant_id].gates, result.precision)
        assert result.status == ("failed" if failures else "passed"), (variant_id, result.reason)
        assert f"### {variant_id}: budget" in md
        plot = f"mixed-{variant_id}.png"
        assert plot in figures and (tmp_path / "rel" / plot).read_bytes()[:4] == b"\x89PNG"
        assert f"]({plot})" in md
    assert "p50_ratio <= 1.5" in md
