"""Recipe syntax of compression steps, tuning and targets (pure Python, no torch)."""

from __future__ import annotations

import pytest

from converter.compress.steps import (
    ChannelPruneStep,
    DistillStep,
    FuseStep,
    UnstructuredPruneStep,
    chain_label,
    needs_training_data,
    parse_step,
    parse_steps,
)
from converter.errors import RecipeError
from converter.recipe import parse_recipe


def test_string_steps_parse_and_label_back_to_the_manifest_strings():
    texts = ["prune:l1-unstructured:global:0.5", "prune:l1-unstructured:layer:0.25",
             "prune:channel:bn-scale:0.3", "prune:channel:l1:0.3", "distill:T4->1:alpha0.5",
             "distill:T2:alpha0.1", "fuse"]
    steps = parse_steps(texts, "test", default_student="examples.digits:student")
    assert chain_label(steps) == texts
    assert isinstance(steps[-1], FuseStep)
    assert steps[0] == UnstructuredPruneStep(0.5, "global")
    assert steps[2] == ChannelPruneStep(0.3, "bn-scale")
    assert steps[4] == DistillStep("examples.digits:student", (4.0, 1.0), 0.5)
    assert steps[5].temperature == (2.0, 2.0)
    assert needs_training_data(steps) and not needs_training_data(steps[:4])


def test_table_steps_override_keys_and_stay_hashable():
    step = parse_step({"step": "distill:T4->1:alpha0.1", "student": "pkg.mod:small", "epochs": 7,
                       "features": {"features.3": "features.7"}, "temperature": "6->2"}, "test")
    assert step == DistillStep("pkg.mod:small", (6.0, 2.0), 0.1, 7, (("features.3", "features.7"),))
    assert step.label() == "distill:T6->2:alpha0.1"
    prune = parse_step({"step": "prune:channel:l1:0.4", "keep": ["head.1"], "fine_tune_epochs": 2}, "t")
    assert prune == ChannelPruneStep(0.4, "l1", 2, ("head.1",))
    assert len({prune, ChannelPruneStep(0.4, "l1", 2, ("head.1",))}) == 1  # usable as a cache key


@pytest.mark.parametrize(
    "entry, fragment",
    [("prune:l1-unstructured:global:1.5", "amount must be in"),
     ("prune:l1-unstructured:everywhere:0.5", "scope must be"),
     ("prune:channel:taylor:0.3", "importance must be"),
     ("prune:channel:0.3", "expected prune:channel"),
     ("distill:T4->1", "needs a student factory"),
     ("distill:hot", "neither T"),
     ("quantize", "unknown step"),
     ({"step": "fuse", "amount": 1}, "unknown key"),
     ({"step": "distill:alpha2", "student": "a.b:c"}, "alpha must be"),
     (3, "a string or a table")],
)
def test_bad_steps_are_refused_naming_the_problem(entry, fragment):
    with pytest.raises(RecipeError, match=fragment):
        parse_step(entry, "test")


def test_bn_scale_pruning_after_fuse_is_refused():
    with pytest.raises(RecipeError, match="put 'fuse' last"):
        parse_steps(["fuse", "prune:channel:bn-scale:0.3"], "test")
    assert len(parse_steps(["fuse", "prune:channel:l1:0.3"], "test")) == 2
    # a distilled student has BatchNorms again
    student = {"step": "distill", "student": "a.b:c"}
    assert len(parse_steps(["fuse", student, "prune:channel:bn-scale:0.3"], "test")) == 3


def test_recipe_default_steps_variant_steps_training_tuning_and_targets():
    recipe = parse_recipe({
        "compression": {"steps": ["fuse"], "student": "examples.digits:student", "epochs": 12,
                        "fine_tune_epochs": 2, "threads": 2},
        "tuning": {"max_trials": 5, "max_seconds": 60},
        "targets": {"max_size_mb": 0.5, "max_latency_ms": 2, "formats": ["onnx", "tflite"]},
        "variants": [
            {"kind": "onnx-fp32"},
            {"kind": "onnx-int8-static", "id": "q", "steps": ["distill:T4->1:alpha0.5", "fuse"],
             "tuning": False},
            {"kind": "tflite-fp32", "steps": []},
        ],
    })
    default, student, bare = recipe.variants
    assert default.steps == (FuseStep(),)
    assert student.steps[0].student == "examples.digits:student"
    assert bare.steps == ()
    assert recipe.compression.training.epochs == 12 and recipe.compression.training.threads == 2
    assert default.tuning.max_trials == 5 and not student.tuning.enabled
    assert recipe.targets.formats == ("onnx", "tflite") and recipe.targets.max_latency_ms == 2


def test_targets_alone_build_only_the_searched_variants():
    recipe = parse_recipe({"targets": {"max_accuracy_drop": 0.01}})
    assert recipe.variants == [] and recipe.targets.formats == ("onnx",)


@pytest.mark.parametrize(
    "data, fragment",
    [({"compression": {"steps": "fuse"}}, "steps must be a list"),
     ({"compression": {"epochs": -1}}, "non-negative"),
     ({"compression": {"student": "nofactory"}}, "package.module:factory"),
     ({"compression": {"warmup": 1}}, "unknown key"),
     ({"tuning": {"max_trials": "many"}}, "non-negative number"),
     ({"targets": {}}, "at least one"),
     ({"targets": {"max_size_mb": 1, "formats": ["coreml"]}}, "formats must be"),
     ({"variants": [{"kind": "onnx-fp32", "steps": ["prune:channel:l1:2"]}]}, "amount")],
)
def test_bad_compression_sections_are_refused(data, fragment):
    with pytest.raises(RecipeError, match=fragment):
        parse_recipe(data)
