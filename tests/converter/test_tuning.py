"""The tuner's plan and scoring (pure): order of attempts, ranking, layer names."""

from __future__ import annotations

import numpy as np
import pytest

from converter.gates import gate_shortfall
from converter.recipe import Gates
from converter.tuning.plan import Candidate, calibration_candidates, float_layer_candidates, requested
from converter.tuning.scoring import output_error


def test_calibration_candidates_try_other_methods_then_switch_per_channel():
    first = requested("onnx-int8-static", {"calibration": "minmax", "per_channel": True})
    order = [(c.calibration, c.per_channel) for c in calibration_candidates("onnx-int8-static", first)]
    assert order == [("entropy", True), ("percentile", True),
                     ("minmax", False), ("entropy", False), ("percentile", False)]
    tflite = calibration_candidates("tflite-int8", requested("tflite-int8", {}))
    assert [(c.calibration, c.per_channel) for c in tflite] == [
        ("moving-average", True), ("minmax", False), ("moving-average", False)]


def test_float_layer_candidates_add_the_most_sensitive_layers_one_by_one():
    best = Candidate("entropy", True, ("pinned",))
    steps = float_layer_candidates(best, ["a", "pinned", "b", "c"], limit=2)
    assert [c.float_layers for c in steps] == [("pinned", "a"), ("pinned", "a", "b")]
    assert steps[-1].options() == {"calibration": "entropy", "per_channel": True,
                                   "float_layers": ["pinned", "a", "b"]}
    assert steps[0].describe() == "entropy, per-channel, 2 float layers"


def test_gate_shortfall_is_zero_when_passing_and_ranks_near_misses_first():
    gates = Gates()
    passing = {"accuracy_drop": 0.002, "agreement": 0.995}
    near = {"accuracy_drop": 0.0067, "agreement": 0.99}
    far = {"accuracy_drop": 0.89, "agreement": 0.1}
    assert gate_shortfall(passing, gates, "int8") == 0.0
    assert 0 < gate_shortfall(near, gates, "int8") < gate_shortfall(far, gates, "int8")
    assert gate_shortfall({}, gates, "int8") == 1e9
    # compressed variants: fidelity from the export block, agreement with the source optional
    compressed = {"accuracy_drop": 0.0, "agreement": 0.9, "export": {"agreement": 1.0}}
    assert gate_shortfall(compressed, gates, "int8", compressed=True) == 0.0
    strict = Gates(min_source_agreement=0.95)
    assert gate_shortfall(compressed, strict, "int8", compressed=True) == pytest.approx(1.0)


def test_output_error_scores_relative_squared_error_and_agreement():
    ref = [np.array([[1.0, 0.0], [0.0, 2.0]])]
    assert output_error([ref[0].copy()], ref) == {"score": 0.0, "agreement": 1.0}
    swapped = [np.array([[0.0, 1.0], [0.0, 2.0]])]
    result = output_error(swapped, ref)
    assert result["agreement"] == 0.5 and result["score"] == pytest.approx(2 / 5)
    assert output_error([np.full((2, 2), np.inf)], ref)["score"] == 1e9


def test_tflite_scopes_map_back_to_pytorch_module_paths():
    from converter.tuning.tflite_layers import module_of_scope

    prefix = "examples.digits.DigitsCNN/torch.nn.modules.container.Sequential_features/torch.nn.modules"
    fused = f"{prefix}.activation.ReLU_9;;{prefix}.batchnorm.BatchNorm2d_8;;{prefix}.conv.Conv2d_7;1"
    assert module_of_scope(fused) == "features.7"
    assert module_of_scope(f"{prefix}.pooling.MaxPool2d_6;") == "features.6"
    assert module_of_scope("serving_default_args_0:0") is None
