"""``prune:channel``: remove whole channels so the model gets physically smaller and faster.

torch-pruning's ``DependencyGraph`` finds the layers coupled to each channel (the BatchNorm
after a conv, the next conv's input channels, both sides of a residual add, the Linear after a
flatten) and removes them together, so the pruned model is an ordinary ``nn.Module`` every
exporter takes. ``amount`` is the share of channels removed from every prunable group
(uniform, not global: no layer is emptied). The classifier head (the last Conv/Linear to run)
and the ``keep`` modules keep their output channels.

Importance: ``bn-scale`` ranks channels by |gamma| of their BatchNorm (channels without a
BatchNorm are left alone); ``l1`` by the L1 norm of the weights of the whole group.
With ``--train`` the pruned model is fine-tuned (cross-entropy on the labels, or MSE to the
unpruned model's outputs when there are none).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from converter.compress.env import StepEnv, output_layers, weight_layers
from converter.compress.steps import ChannelPruneStep
from converter.errors import CompressionError
from edgeship.contract.errors import first_line

if TYPE_CHECKING:
    import torch


def prune_channels(
    model: torch.nn.Module, step: ChannelPruneStep, env: StepEnv
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A channel-pruned copy of ``model`` and details (MACs/params before and after, channels
    per layer, fine-tune history).

    Raises:
        CompressionError: ``bn-scale`` on a model without BatchNorm, or torch-pruning failed.
    """
    import torch_pruning as tp
    from torch import nn

    from converter.compress.training import fine_tune_after

    teacher = model
    model = copy.deepcopy(model).eval()
    example = env.example_tensors()
    modules = dict(model.named_modules())
    missing = [name for name in step.keep if name not in modules]
    if missing:
        raise CompressionError(f"{step.label()}: keep names unknown modules {missing}")
    kept = sorted(set(output_layers(model, example)) | set(step.keep))
    if step.importance == "bn-scale":
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise CompressionError(f"{step.label()}: the model has no BatchNorm layers (fused or "
                                   "none); use prune:channel:l1")
        importance = tp.importance.BNScaleImportance()
    else:
        importance = tp.importance.MagnitudeImportance(p=1)
    before = {**env.size_facts(model), "channels": _channels(model)}
    try:
        pruner = tp.pruner.MetaPruner(
            model, example, importance=importance, pruning_ratio=step.amount,
            ignored_layers=[modules[name] for name in kept],
        )
        pruner.step()
    except Exception as err:  # tracing or pruning a group the graph cannot handle
        raise CompressionError(f"{step.label()}: torch-pruning failed: {first_line(err)}") from err
    model.eval()
    after = {**env.size_facts(model), "channels": _channels(model)}
    env.progress.say(
        f"{step.label()}: MACs {before['macs']:,} -> {after['macs']:,} "
        f"(x{after['macs'] / max(before['macs'], 1):.2f}), params {before['params']:,} -> "
        f"{after['params']:,}"
    )
    history = fine_tune_after(model, teacher, step, env)
    return model, {
        "macs_before": before["macs"], "macs_after": after["macs"],
        "macs_ratio": round(after["macs"] / max(before["macs"], 1), 4),
        "params_before": before["params"], "params_after": after["params"],
        "params_ratio": round(after["params"] / max(before["params"], 1), 4),
        "kept_layers": kept,
        "channels": {name: [before["channels"][name], count]
                     for name, count in after["channels"].items() if name in before["channels"]},
        "fine_tune": history,
    }


def _channels(model: torch.nn.Module) -> dict[str, int]:
    """Output channels (or features) of each Conv/Linear layer."""
    return {name: int(m.weight.shape[0]) for name, m in weight_layers(model)}
