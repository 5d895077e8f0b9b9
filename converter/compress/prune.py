"""``prune:l1-unstructured``: zero the smallest-magnitude weights of Conv/Linear layers.

``global`` ranks all weights of all layers together (layers end up with different sparsity);
``layer`` prunes each layer to the amount. With ``--train`` the model is fine-tuned with the
masks on (pruned weights stay zero), then the masks are made permanent
(``torch.nn.utils.prune.remove``): the exported model is plain dense tensors with zeros, so the
file is as big as before but compresses well (the report shows gzip size next to the file size).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from converter.compress.env import StepEnv, weight_layers
from converter.compress.steps import UnstructuredPruneStep
from converter.errors import CompressionError

if TYPE_CHECKING:
    import torch


def prune_unstructured(
    model: torch.nn.Module, step: UnstructuredPruneStep, env: StepEnv
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A pruned copy of ``model`` and details (per-layer sparsity, fine-tune history).

    Raises:
        CompressionError: the model has no Conv/Linear weights to prune.
    """
    from torch.nn.utils import prune

    from converter.compress.training import fine_tune_after

    teacher = model
    model = copy.deepcopy(model).eval()
    layers = [(n, m) for n, m in weight_layers(model) if n not in step.keep]
    if not layers:
        raise CompressionError(f"{step.label()}: no Conv or Linear weights to prune")
    if step.scope == "global":
        prune.global_unstructured([(m, "weight") for _, m in layers],
                                  pruning_method=prune.L1Unstructured, amount=step.amount)
    else:
        for _, module in layers:
            prune.l1_unstructured(module, "weight", amount=step.amount)
    env.progress.say(f"{step.label()}: {len(layers)} layers masked ({step.scope})")
    history = fine_tune_after(model, teacher, step, env)
    for _, module in layers:
        prune.remove(module, "weight")
    model.eval()
    return model, {**sparsity_report(model), "fine_tune": history}


def sparsity_report(model: torch.nn.Module) -> dict[str, Any]:
    """Real sparsity: zero weights per Conv/Linear layer and over all of them."""
    per_layer, zeros, total = {}, 0, 0
    for name, module in weight_layers(model):
        weight = module.weight.detach()
        layer_zeros = int((weight == 0).sum())
        per_layer[name] = {"weights": weight.numel(), "sparsity": round(layer_zeros / weight.numel(), 4)}
        zeros += layer_zeros
        total += weight.numel()
    return {"sparsity": round(zeros / total, 4) if total else 0.0, "layers": per_layer}

