"""Distillation from several teachers: parsing, the per-sample weights, training a real student,
and a teacher that predicts something else refused as bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest

from converter.compress.steps import DistillStep, parse_step
from converter.errors import RecipeError

torch = pytest.importorskip("torch")

from converter.compress.chain import ModelChain  # noqa: E402
from converter.compress.env import StepEnv  # noqa: E402
from converter.compress.teachers import mixed_targets, teacher_weights  # noqa: E402
from converter.compress.training import TrainingSet  # noqa: E402
from converter.data import SampleSet  # noqa: E402
from converter.progress import Progress  # noqa: E402
from converter.specs import parse_input_spec  # noqa: E402
from examples.digits import DigitsCNN, load_split  # noqa: E402

DIGITS = [parse_input_spec("image:1x1x8x8:float32")]
WIDE = "examples.digits_teachers:wide"
UNTRAINED = "tests.converter.test_multi_teacher:untrained_teacher"
EPOCHS = 3


def untrained_teacher() -> torch.nn.Module:
    """A teacher that knows nothing: near-uniform, unsure predictions."""
    torch.manual_seed(5)
    return DigitsCNN().eval()


def five_classes() -> torch.nn.Module:
    """A teacher for another task: 5 outputs where the model has 10."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)).eval()


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("entry, label", [
    ({"step": "distill:T4->1:alpha0.5:teachers2:confidence", "teachers": [WIDE]},
     "distill:T4->1:alpha0.5:teachers2:confidence"),
    ({"step": "distill:T2:alpha0.3", "teachers": [WIDE], "weighting": "true-label"},
     "distill:T2:alpha0.3:teachers2:true-label"),
    ({"step": "distill", "teachers": [WIDE, UNTRAINED], "teacher_weights": [2, 1, 1]},
     "distill:T4->1:alpha0.5:teachers3:fixed2,1,1"),
    ("distill:T4->1:alpha0.5", "distill:T4->1:alpha0.5"),  # one teacher: the label is unchanged
])
def test_teacher_labels_extend_the_distill_label_and_parse_back(entry, label):
    step = parse_step(entry, "recipe", "examples.digits:student")
    assert step.label() == label
    again = {**entry, "step": label} if isinstance(entry, dict) else label
    assert parse_step(again, "recipe", "examples.digits:student") == step


@pytest.mark.parametrize("entry, fragment", [
    ({"step": "distill:teachers3", "teachers": [WIDE]}, "teachers3 needs 2 teacher factories"),
    ({"step": "distill", "teachers": ["wide"]}, "'package.module:factory'"),
    ({"step": "distill", "teachers": [WIDE], "weighting": "votes"}, "weighting must be one of"),
    ({"step": "distill", "teachers": [WIDE], "teacher_weights": [1]}, "needs 2 weights"),
    ({"step": "distill", "teachers": [WIDE], "teacher_weights": [1, 1], "weighting": "confidence"},
     "are for weighting 'fixed'"),
    ({"step": "distill", "teachers": [WIDE], "teacher_weights": [0, 0]}, "positive sum"),
])
def test_bad_teacher_settings_are_refused_naming_the_problem(entry, fragment):
    with pytest.raises(RecipeError, match=fragment):
        parse_step(entry, "recipe", "examples.digits:student")


# --------------------------------------------------------------------------- weights


def test_per_sample_weights_follow_each_teachers_confidence_where_fixed_weights_do_not():
    sure, unsure = torch.tensor([[8.0, 0.0, 0.0]]), torch.tensor([[0.4, 0.2, 0.0]])
    # sample 0: teacher 0 sure of class 0; sample 1: teacher 1 sure of class 2
    logits = [torch.cat([sure, unsure]), torch.cat([unsure, sure.flip(1)])]
    labels = torch.tensor([0, 2])

    def weights_for(**settings):
        return teacher_weights(logits, labels, DistillStep("a.b:c", teachers=("x.y:z",), **settings))

    fixed, confident, true_label = (weights_for(), weights_for(weighting="confidence"),
                                    weights_for(weighting="true-label"))
    assert torch.equal(fixed, torch.full((2, 2), 0.5))
    for weights in (confident, true_label):
        assert torch.allclose(weights.sum(dim=1), torch.ones(2))
        assert weights[0, 0] > 0.7 and weights[1, 1] > 0.7  # the sure teacher dominates its sample
    targets = mixed_targets(logits, confident, 1.0)
    assert targets[0].argmax() == 0 and targets[1].argmax() == 2
    assert not torch.allclose(targets, mixed_targets(logits, fixed, 1.0), atol=0.05)
    # fixed weights are normalised and one teacher with weight 1 is plain soft targets
    assert torch.allclose(weights_for(teacher_weights=(3, 1)), torch.tensor([[0.75, 0.25]] * 2))
    single = mixed_targets(logits[:1], teacher_weights(logits[:1], labels, DistillStep("a.b:c")), 2.0)
    assert torch.equal(single, torch.softmax(logits[0] / 2.0, dim=1))


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def digits_env(digits_dir):
    x_tr, y_tr, x_te, y_te = load_split()
    model = DigitsCNN()
    model.load_state_dict(torch.load(digits_dir / "weights.pt", weights_only=True))
    train = TrainingSet.from_samples(SampleSet(DIGITS, {"image": x_tr}, y_tr))
    env = StepEnv(DIGITS, {"image": np.zeros((1, 1, 8, 8), np.float32)}, train,
                  SampleSet(DIGITS, {"image": x_te}, y_te), progress=Progress(io.StringIO()))
    env.training = type(env.training)(epochs=EPOCHS)
    return model.eval(), env


@pytest.fixture(autouse=True)
def teachers_dir(digits_dir, monkeypatch):
    monkeypatch.setenv("EDGESHIP_DIGITS_DIR", str(digits_dir))  # the wide teacher caches its weights there


def test_two_teachers_train_a_student_and_the_report_names_both(digits_env):
    model, env = digits_env
    step = DistillStep("examples.digits:student", teachers=(WIDE,), weighting="confidence",
                       features=(("features.5", "features.8"),))
    student = ModelChain(model, env).apply((step,))
    details = student.records[0].details
    assert details["teachers"] == ["(current model)", WIDE]
    assert details["weighting"] == "confidence"
    assert sum(details["mean_teacher_weights"]) == pytest.approx(1.0, abs=1e-3)
    assert all(acc > 0.9 for acc in details["teacher_accuracy"])  # both teachers are real models
    history = details["history"]
    assert len(history) == EPOCHS and history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["eval_accuracy"] > 0.8
    assert details["student_params"] * 4 <= details["teacher_params"]


def test_confidence_and_true_label_weighting_turn_down_a_teacher_that_knows_nothing(digits_env):
    model, env = digits_env
    chain = ModelChain(model, env)
    runs = {w: chain.apply((DistillStep("examples.digits:student", teachers=(UNTRAINED,), weighting=w),))
            for w in ("fixed", "confidence", "true-label")}
    weights = {w: r.records[0].details["mean_teacher_weights"] for w, r in runs.items()}
    assert weights["fixed"] == [0.5, 0.5]
    # an untrained CNN's top probability is far below a trained one's, its true-label one lower still
    assert weights["confidence"][1] < 0.4
    assert weights["true-label"][1] < weights["confidence"][1]
    # and the students differ: the weighting reached the loss
    fixed, confident = (runs[w].module.state_dict() for w in ("fixed", "confidence"))
    assert any(not torch.equal(fixed[k], confident[k]) for k in fixed)


def test_a_teacher_with_other_outputs_stops_the_run_naming_it(digits_env):
    model, env = digits_env
    step = DistillStep("examples.digits:student", teachers=(f"{__name__}:five_classes",))
    with pytest.raises(RecipeError, match=r"teacher tests\.converter\.test_multi_teacher:five_classes "
                                          r"outputs \[\(1, 5\)\], the model being distilled \[\(1, 10\)\]"):
        ModelChain(model, env).apply((step,))
