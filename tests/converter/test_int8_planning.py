"""Pure parts of the time to a release: the per-variant clock, the dynamic kinds' tuning plan,
the static int8 prediction and the recipe switch for it."""

from __future__ import annotations

import io

import pytest

from converter.errors import RecipeError
from converter.progress import Progress, VariantClock
from converter.recipe import parse_recipe
from converter.tuning.feasibility import GraphProfile, static_int8_verdict
from converter.tuning.plan import (
    TUNABLE,
    Candidate,
    calibration_candidates,
    float_layer_candidates,
    requested,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_variant_clock_counts_variants_and_estimates_what_is_left() -> None:
    stream, clock = io.StringIO(), FakeClock()
    variants = VariantClock(Progress(stream), total=4, clock=clock)
    for seconds in (10.0, 30.0, 20.0):
        variants.start("v")
        clock.now += seconds
        variants.finish("passed")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("[1/4] v: started")
    assert lines[1].endswith("[1/4] v: passed in 10.0 s; about 30 s left (3 to go)")
    assert lines[3].endswith("[2/4] v: passed in 30.0 s; about 60 s left (2 to go)")
    # median of 10, 20, 30 times the one variant left
    assert lines[5].endswith("[3/4] v: passed in 20.0 s; about 20 s left (1 to go)")
    variants.start("last")
    clock.now += 5.0
    variants.finish("skipped")
    assert stream.getvalue().splitlines()[-1].endswith("[4/4] last: skipped in 5.0 s")


def test_dynamic_kinds_tune_float_layers_without_calibrations() -> None:
    assert {"onnx-int8-dynamic", "tflite-int8-dynamic"} <= set(TUNABLE)
    first = requested("onnx-int8-dynamic", {"per_channel": True, "float_layers": []})
    assert first == Candidate(None, True) and first.describe() == "per-channel"
    assert calibration_candidates("onnx-int8-dynamic", first) == []
    per_tensor = requested("onnx-int8-dynamic", {"per_channel": False})
    assert calibration_candidates("onnx-int8-dynamic", per_tensor) == [Candidate(None, True)]
    # the sensitivity run predicted 2 layers: start there, then add one at a time
    steps = float_layer_candidates(first, ["a", "b", "c", "d"], limit=3, first=2)
    assert [c.float_layers for c in steps] == [("a", "b"), ("a", "b", "c")]
    assert steps[0].options() == {"per_channel": True, "float_layers": ["a", "b"]}


def test_static_int8_is_predicted_not_worth_building_only_on_transformer_graphs() -> None:
    encoder = GraphProfile(layer_norms=13, softmaxes=6, attention_matmuls=12, weight_matmuls=36)
    reason = static_int8_verdict(encoder)
    assert reason is not None and "12 attention MatMuls" in reason and "13 LayerNorm" in reason
    assert "skip_predicted = false" in reason
    cnn = GraphProfile(convolutions=52, weight_matmuls=1)
    assert static_int8_verdict(cnn) is None
    # attention without LayerNorm (or one stray activation MatMul) is not a transformer block
    assert static_int8_verdict(GraphProfile(softmaxes=2, attention_matmuls=4)) is None
    assert static_int8_verdict(GraphProfile(layer_norms=2, softmaxes=1, attention_matmuls=1)) is None


def test_recipe_switches_the_prediction_per_variant() -> None:
    recipe = parse_recipe({"variants": [
        {"kind": "onnx-int8-static"},
        {"kind": "tflite-int8", "tuning": {"skip_predicted": False}},
    ]})
    assert [p.tuning.skip_predicted for p in recipe.variants] == [True, False]
    assert recipe.variants[0].tuning.max_seconds == 180.0
    off = parse_recipe({"tuning": {"skip_predicted": False}, "variants": ["onnx-int8-static"]})
    assert off.variants[0].tuning.skip_predicted is False
    with pytest.raises(RecipeError, match="skip_predicted must be true or false"):
        parse_recipe({"tuning": {"skip_predicted": 1}})


def test_weight_only_int8_is_not_built_only_when_dynamic_int8_passed_faster_than_fp32() -> None:
    from converter.tuning.feasibility import weight_only_verdict

    faster = {"onnx-int8-dynamic": ("onnx-int8-dynamic", 0.53)}
    reason = weight_only_verdict("onnx-int8-weights", faster)
    assert reason is not None
    assert reason.startswith("not built: onnx-int8-dynamic passed its gates at p50 0.53x")
    # dynamic int8 of a CNN (ConvInteger) is slower than fp32: weight-only is judged on its own
    assert weight_only_verdict("onnx-int8-weights", {"onnx-int8-dynamic": ("d", 8.2)}) is None
    assert weight_only_verdict("onnx-int8-weights", {"onnx-int8-dynamic": ("d", None)}) is None
    assert weight_only_verdict("onnx-int8-weights", {}) is None
    assert weight_only_verdict("onnx-int8-static", faster) is None


def test_reference_threads_are_one_of_two_and_restored() -> None:
    torch = pytest.importorskip("torch")
    import numpy as np

    from converter.specs import parse_input_spec
    from converter.torch_threads import fastest_threads

    spec = parse_input_spec("x:1x8:float32")
    samples = [{"x": np.ones((1, 8), np.float32)}] * 4
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with fastest_threads(torch.nn.Linear(8, 2).eval(), [spec], samples) as chosen:
            assert chosen in (1, 2) and torch.get_num_threads() == chosen
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_weight_only_int8_that_ships_says_it_is_the_only_faithful_one() -> None:
    from converter.tuning.feasibility import weight_only_note

    note = weight_only_note("onnx-int8-weights", {"onnx-int8-dynamic": "failed"})
    assert note == "ships as the only faithful int8 of its format: onnx-int8-dynamic failed"
    assert weight_only_note("onnx-int8-weights", {"onnx-int8-dynamic": "passed"}) is None
    assert weight_only_note("onnx-int8-weights", {}) is None
    assert weight_only_note("onnx-fp16", {"onnx-int8-dynamic": "failed"}) is None
