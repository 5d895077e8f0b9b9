"""``fuse``: fold each BatchNorm that directly follows a convolution into that convolution.

``w' = w * gamma / sqrt(var + eps)`` per output channel and
``b' = (b - mean) * gamma / sqrt(var + eps) + beta``; the BatchNorm becomes ``nn.Identity`` so
module names stay the same for later steps. A ReLU after the pair stays a separate module: the
runtimes fuse Conv+ReLU themselves (onnxruntime's ``ConvActivationFusion``, TFLite's fused
activation on ``CONV_2D``, Core ML's ``conv`` + ``relu``), and the pair is recorded with its
activation. Outputs match the unfused model to float rounding (≤ 1e-5 on the examples).

Pairs are found on the ``torch.fx`` graph (a conv whose only reader is a BatchNorm); models
``torch.fx`` cannot trace fall back to adjacent children of ``nn.Sequential`` containers.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def fuse_conv_bn(model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A copy of ``model`` with every Conv→BatchNorm pair folded.

    Returns:
        The fused copy (eval mode) and details: ``pairs`` (conv, bn and the activation that
        follows, if any), ``found_by`` (``fx`` or ``sequential``).
    """
    model = copy.deepcopy(model).eval()
    try:
        pairs, found_by = _pairs_from_fx(model), "fx"
    except Exception:  # torch.fx cannot trace data-dependent control flow
        pairs, found_by = _pairs_from_sequentials(model), "sequential"
    modules = dict(model.named_modules())
    for conv_name, bn_name, _ in pairs:
        fold_into_conv(modules[conv_name], modules[bn_name])
        _replace(model, bn_name)
    return model, {
        "pairs": [{"conv": c, "bn": b, "activation": a} for c, b, a in pairs],
        "found_by": found_by,
    }


def fold_into_conv(conv: torch.nn.Module, bn: torch.nn.Module) -> None:
    """Fold ``bn`` (eval statistics) into ``conv``'s weight and bias, in place."""
    import torch

    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        scale = gamma / std
        shape = [-1] + [1] * (conv.weight.dim() - 1)
        conv.weight.mul_(scale.reshape(shape))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * scale + beta
        conv.bias = torch.nn.Parameter(new_bias.detach().clone())


def _is_conv(module: Any) -> bool:
    from torch import nn

    return isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)


def _is_bn(module: Any) -> bool:
    from torch import nn

    return isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d) and \
        module.track_running_stats and module.running_var is not None


def _activation_name(module: Any) -> str | None:
    from torch import nn

    if isinstance(module, nn.ReLU | nn.ReLU6):
        return type(module).__name__
    return None


def _pairs_from_fx(model: torch.nn.Module) -> list[tuple[str, str, str | None]]:
    import torch
    from torch import fx

    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_conv(modules.get(node.target)) or len(node.users) != 1:
            continue
        bn_node = next(iter(node.users))
        if bn_node.op != "call_module" or not _is_bn(modules.get(bn_node.target)):
            continue
        if uses[node.target] != 1 or uses[bn_node.target] != 1:
            continue  # a module called twice cannot be folded for one call site
        activation = None
        if len(bn_node.users) == 1:
            after = next(iter(bn_node.users))
            if after.op == "call_module":
                activation = _activation_name(modules.get(after.target))
            elif after.op == "call_function" and after.target in (torch.relu, torch.nn.functional.relu):
                activation = "relu"
        pairs.append((node.target, bn_node.target, activation))
    return pairs


def _pairs_from_sequentials(model: torch.nn.Module) -> list[tuple[str, str, str | None]]:
    from torch import nn

    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for i in range(len(children) - 1):
            (conv_key, conv), (bn_key, bn) = children[i], children[i + 1]
            if _is_conv(conv) and _is_bn(bn):
                after = _activation_name(children[i + 2][1]) if i + 2 < len(children) else None
                prefix = f"{name}." if name else ""
                pairs.append((prefix + conv_key, prefix + bn_key, after))
    return pairs


def _replace(model: torch.nn.Module, name: str) -> None:
    from torch import nn

    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Identity())
