"""``ternary``: every Conv/Linear weight (bar ``keep``) becomes ``scale_c * {-1, 0, +1}`` per
output channel, fine-tuned with a straight-through estimator.

Threshold-based (TWN, Li et al. 2016): in channel ``c``, weights with ``|w| > t * mean|W_c|``
keep their sign and the others become 0; ``scale_c`` is the mean ``|w|`` of the kept ones,
which minimises the channel's L2 error for that mask (or, with ``scale = "learned"``, starts
there and is trained). During fine-tuning the forward pass uses the ternary weights and the
gradient reaches the float weights as if ternarising were the identity, so weights can cross
the threshold; afterwards the ternary values are written into the weights, so the exported
model holds exactly three values per channel (what the packed and 2-bit palette storages
detect). Per-channel scales survive BatchNorm folding: it multiplies each channel by one
number.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from converter.compress.env import StepEnv, weight_layers
from converter.compress.steps import TernaryStep
from converter.errors import CompressionError


def ternarize(
    model: torch.nn.Module, step: TernaryStep, env: StepEnv
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A ternary copy of ``model`` and details (per-layer zero share and scales, fine-tune history).

    Raises:
        CompressionError: a ``keep`` name is not a Conv/Linear module, or nothing is left to
            ternarise.
    """
    from torch.nn.utils import parametrize

    from converter.compress.training import fine_tune_after

    teacher = model
    model = copy.deepcopy(model).eval()
    layers = weight_layers(model)
    unknown = sorted(set(step.keep) - {name for name, _ in layers})
    if unknown:
        raise CompressionError(f"{step.label()}: keep names no Conv/Linear module: {', '.join(unknown)}")
    chosen = [(n, m) for n, m in layers if n not in step.keep]
    if not chosen:
        raise CompressionError(f"{step.label()}: no Conv or Linear weights left to ternarise")
    for _, module in chosen:
        parametrize.register_parametrization(
            module, "weight", TernaryWeight(module.weight.detach(), step.threshold, step.scale == "learned"))
    env.progress.say(f"{step.label()}: {len(chosen)} layers ternarised, {len(step.keep)} kept in float")
    history = fine_tune_after(model, teacher, step, env)
    for _, module in chosen:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    model.eval()
    return model, {**ternary_report(model, [n for n, _ in chosen]), "kept_layers": list(step.keep),
                   "threshold": step.threshold, "scale": step.scale, "fine_tune": history}


def twn_ternary(weight: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scale)``: codes in {-1, 0, +1} shaped like ``weight``, one scale per output channel."""
    flat = weight.reshape(weight.shape[0], -1)
    delta = threshold * flat.abs().mean(dim=1, keepdim=True)
    mask = flat.abs() > delta
    kept = mask.sum(dim=1).clamp_min(1)
    scale = (flat.abs() * mask).sum(dim=1) / kept
    codes = torch.sign(flat) * mask
    return codes.reshape(weight.shape), scale


class TernaryWeight(nn.Module):
    """Parametrization: the ternary weight forward, the identity backward (to the float weight).

    Loaded only when a ``ternary`` step runs (the chain imports this module then), so torch at
    module level costs nothing elsewhere.
    """

    def __init__(self, weight: torch.Tensor, threshold: float, learned: bool) -> None:
        super().__init__()
        self.threshold = threshold
        _, scale = twn_ternary(weight, threshold)
        self.scale = nn.Parameter(scale.clone()) if learned else None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        codes, scale = twn_ternary(weight.detach(), self.threshold)
        if self.scale is not None:
            scale = self.scale
        shape = (-1,) + (1,) * (weight.dim() - 1)
        return codes * scale.reshape(shape) + (weight - weight.detach())


def ternary_report(model: torch.nn.Module, names: list[str]) -> dict[str, Any]:
    """Per ternarised layer: weights, share of zeros, scale range; and the ternary share overall.

    ``values_per_channel`` is the largest count of distinct values in one output channel: 3 at
    most when the layer really is ternary (what the exported storages rely on).
    """
    layers, ternary, total = {}, 0, 0
    for name, module in weight_layers(model):
        weight = module.weight.detach()
        total += weight.numel()
        if name not in names:
            continue
        ternary += weight.numel()
        flat = weight.reshape(weight.shape[0], -1)
        scales = flat.abs().max(dim=1).values
        layers[name] = {
            "weights": weight.numel(),
            "zeros": round(float((weight == 0).float().mean()), 4),
            "scale_min": round(float(scales.min()), 6), "scale_max": round(float(scales.max()), 6),
            "values_per_channel": max(len(row.unique()) for row in flat),
        }
    return {"ternary_share": round(ternary / total, 4) if total else 0.0, "layers": layers}
