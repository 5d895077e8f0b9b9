"""The compression steps on real PyTorch models: fusion, pruning, distillation, the chain cache."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from torch import nn  # noqa: E402

from converter.compress.chain import ModelChain  # noqa: E402
from converter.compress.env import StepEnv  # noqa: E402
from converter.compress.steps import (  # noqa: E402
    ChannelPruneStep,
    DistillStep,
    FuseStep,
    Training,
    UnstructuredPruneStep,
)
from converter.compress.training import TrainingSet, accuracy_on  # noqa: E402
from converter.data import SampleSet  # noqa: E402
from converter.errors import CompressionError  # noqa: E402
from converter.progress import Progress  # noqa: E402
from converter.specs import parse_input_spec  # noqa: E402
from examples.digits import DigitsCNN, load_split  # noqa: E402
from examples.vision import ResNetStyle  # noqa: E402

DIGITS = [parse_input_spec("image:1x1x8x8:float32")]


def randomized_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding has work to do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def digits_data():
    x_tr, y_tr, x_te, y_te = load_split()
    return (SampleSet(DIGITS, {"image": x_tr}, y_tr), SampleSet(DIGITS, {"image": x_te}, y_te))


@pytest.fixture(scope="module")
def trained_digits(digits_dir):
    model = DigitsCNN()
    model.load_state_dict(torch.load(digits_dir / "weights.pt", weights_only=True))
    return model.eval()


def env_for(train=None, eval_set=None, **training) -> tuple[StepEnv, io.StringIO]:
    stream = io.StringIO()
    example = {"image": np.zeros((1, 1, 8, 8), np.float32)}
    data = TrainingSet.from_samples(train) if train is not None else None
    env = StepEnv(DIGITS, example, data, eval_set, Training(**training), Progress(stream))
    return env, stream


@pytest.mark.parametrize("factory, shape", [(DigitsCNN, (4, 1, 8, 8)), (ResNetStyle, (2, 1, 32, 32))])
def test_fuse_folds_every_conv_bn_pair_and_keeps_outputs_within_1e_5(factory, shape):
    torch.manual_seed(0)
    model = randomized_bn(factory())
    env, _ = env_for()
    env.example = {"image": np.zeros((1, *shape[1:]), np.float32)}
    fused = ModelChain(model, env).apply((FuseStep(),))
    x = torch.randn(*shape)
    with torch.no_grad():
        diff = (fused.module(x) - model(x)).abs().max().item()
    assert diff <= 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.module.modules())
    pairs = fused.records[0].details["pairs"]
    convs_with_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(pairs) == convs_with_bn and pairs[0]["activation"] is not None
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the source is untouched


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_pruning_reaches_the_sparsity_and_makes_masks_permanent(scope, trained_digits):
    env, _ = env_for()
    pruned = ModelChain(trained_digits, env).apply((UnstructuredPruneStep(0.5, scope),))
    details = pruned.records[0].details
    assert details["sparsity"] == pytest.approx(0.5, abs=0.01)
    layers = details["layers"]
    for name, module in pruned.module.named_modules():
        if name in layers:
            assert not hasattr(module, "weight_mask")  # prune.remove ran
            real = float((module.weight == 0).float().mean())
            assert real == pytest.approx(layers[name]["sparsity"], abs=1e-3)
    spread = [v["sparsity"] for v in layers.values()]
    if scope == "layer":
        assert all(abs(s - 0.5) < 0.01 for s in spread)
    else:  # one global threshold: the small first conv keeps more of its weights
        assert max(spread) - min(spread) > 0.1


def test_channel_pruning_shrinks_macs_keeps_the_head_and_fine_tunes(trained_digits, digits_data):
    train, eval_set = digits_data
    env, stream = env_for(train, eval_set, fine_tune_epochs=2)
    pruned = ModelChain(trained_digits, env).apply((ChannelPruneStep(0.3, "bn-scale"),))
    details = pruned.records[0].details
    assert details["macs_ratio"] <= 0.55 and details["params_after"] < details["params_before"]
    assert details["kept_layers"] == ["head.3"] and details["channels"]["head.3"] == [10, 10]
    assert details["channels"]["features.0"] == [16, 11]
    assert len(details["fine_tune"]) == 2 and "fine-tune: epoch 2/2" in stream.getvalue()
    assert accuracy_on(pruned.module, eval_set) >= accuracy_on(trained_digits, eval_set) - 0.02


def test_bn_scale_pruning_of_a_model_without_batchnorm_fails_that_chain_only():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10)).eval()
    chain = ModelChain(model, env_for()[0])
    with pytest.raises(CompressionError, match="no BatchNorm"):
        chain.apply((ChannelPruneStep(0.3, "bn-scale"),))
    l1 = chain.apply((ChannelPruneStep(0.5, "l1"),))
    assert l1.module[0].out_channels == 4


def test_distillation_trains_the_student_with_progress_per_epoch(trained_digits, digits_data):
    train, eval_set = digits_data
    env, stream = env_for(train, eval_set, epochs=4)
    chain = ModelChain(trained_digits, env)
    step = DistillStep("examples.digits:student", (4.0, 1.0), 0.5,
                       features=(("features.5", "features.8"),))
    student = chain.apply((step,))
    details = student.records[0].details
    assert details["student_params"] * 4 <= details["teacher_params"]
    history = details["history"]
    assert [h["T"] for h in history] == [4.0, 3.0, 2.0, 1.0]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["eval_accuracy"] > 0.8
    lines = [ln for ln in stream.getvalue().splitlines() if "distill examples.digits:student: epoch" in ln]
    assert len(lines) == 4 and "eval_accuracy" in lines[-1] and "loss" in lines[-1]
    # the chain caches prefixes: fusing the student reuses it instead of training again
    fused = chain.apply((step, FuseStep()))
    assert fused.records[0] is student.records[0]
    assert stream.getvalue().count("epoch 1/4") == 1


def test_distillation_refuses_a_student_with_other_outputs(trained_digits, digits_data):
    train, _ = digits_data
    env, _ = env_for(train)
    with pytest.raises(CompressionError, match=r"student tests\.fixtures\.op_models:lgamma does not run"):
        ModelChain(trained_digits, env).apply((DistillStep("tests.fixtures.op_models:lgamma"),))
