"""The search space of the ``search`` step, derived from the user's model by tracing it.

A *stage* is the Conv/Linear layers whose outputs have the same resolution (a conv's
``H x W``, a Linear's leading shape): changing resolution is where a network changes stage, and
the layers of one stage are coupled anyway (residual adds join them). Each stage gets one width
multiplier, applied to every torch-pruning group rooted in it. A *droppable block* is a module
whose output has its input's shape and whose forward adds its input to something (found with
``torch.fx``): replacing it with ``nn.Identity`` keeps the network valid. Depth per stage is
how many of its droppable blocks are kept (the first ones; the later ones go).
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from converter.compress.env import weight_layers
from converter.errors import CompressionError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Stage:
    """Layers sharing an output resolution, and the residual blocks among them.

    Attributes:
        name: ``conv 8x8``, ``linear``: the layer kind and output resolution.
        layers: Conv/Linear modules that root a prunable channel group, in run order.
        channels: output channels of those groups, in the same order.
        blocks: droppable residual blocks, in run order.
        members: every Conv/Linear at this resolution (the head and ``keep`` aside): a group
            rooted at any of them takes the stage's width, however the graph roots it.
    """

    name: str
    layers: tuple[str, ...]
    channels: tuple[int, ...]
    blocks: tuple[str, ...]
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class Architecture:
    """One point of the space: a width multiplier and a block count per stage."""

    widths: tuple[float, ...]
    depths: tuple[int, ...]

    def label(self) -> str:
        return ("w " + "/".join(f"{w:g}" for w in self.widths)
                + " d " + "/".join(str(d) for d in self.depths))


@dataclass(frozen=True)
class SearchSpace:
    """The stages of one model and the width multipliers each may take."""

    stages: tuple[Stage, ...]
    widths: tuple[float, ...]
    ignored: tuple[str, ...]

    def source(self) -> Architecture:
        """The unchanged model: full width, every block."""
        return Architecture(tuple(1.0 for _ in self.stages), tuple(len(s.blocks) for s in self.stages))

    def width_choices(self, index: int) -> tuple[float, ...]:
        """Multipliers stage ``index`` may take (only 1.0 when it has no prunable layer)."""
        return tuple(sorted(set(self.widths) | {1.0}, reverse=True)) if self.stages[index].layers else (1.0,)

    def size(self) -> int:
        """How many architectures the space holds."""
        total = 1
        for i, stage in enumerate(self.stages):
            total *= len(self.width_choices(i)) * (len(stage.blocks) + 1)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [{"name": s.name, "layers": list(s.layers), "channels": list(s.channels),
                            "blocks": list(s.blocks)} for s in self.stages],
                "widths": list(self.widths), "ignored": list(self.ignored), "size": self.size()}


def derive_space(
    model: torch.nn.Module, example: tuple[torch.Tensor, ...], widths: tuple[float, ...],
    keep: tuple[str, ...] = (), depth: bool = True,
) -> SearchSpace:
    """Group ``model``'s prunable layers into stages by output resolution; find its blocks.

    Args:
        widths: the multipliers each stage may take (1.0 is always added).
        keep: module names never narrowed, on top of the classifier head.
        depth: look for droppable residual blocks.

    Raises:
        CompressionError: ``keep`` names an unknown module, or no stage can be narrowed or
            shortened (nothing to search).
    """
    from converter.compress.env import output_layers

    modules = dict(model.named_modules())
    unknown = [name for name in keep if name not in modules]
    if unknown:
        raise CompressionError(f"search: keep names unknown modules {unknown}")
    ignored = tuple(sorted(set(output_layers(model, example)) | set(keep)))
    shapes, order = _trace_shapes(model, example)
    groups = _group_roots(model, example, ignored)
    blocks = residual_blocks(model, shapes) if depth else []
    weights = {name for name, _ in weight_layers(model)} - set(ignored)
    keys: dict[str, tuple[list[str], list[int], list[str], list[str]]] = {}
    for name in order:
        if name not in weights and name not in blocks:
            continue
        layers, channels, found, members = keys.setdefault(
            _stage_key(modules[name], shapes[name]), ([], [], [], []))
        if name in groups:
            layers.append(name)
            channels.append(groups[name])
        if name in weights:
            members.append(name)
        else:
            found.append(name)
    stages = tuple(Stage(key, tuple(layers), tuple(channels), tuple(found), tuple(members))
                   for key, (layers, channels, found, members) in keys.items() if layers or found)
    if not stages:
        raise CompressionError(
            "search: the model has no prunable stage: no Conv/Linear layer besides the classifier "
            f"head{' and keep' if keep else ''} ({', '.join(ignored) or 'none'}) owns output "
            "channels torch-pruning can remove, and no residual block can be dropped")
    return SearchSpace(stages, tuple(sorted(set(widths), reverse=True)), ignored)


def _trace_shapes(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[
        dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]], list[str]]:
    """Each module's (output shape, single-input shape or None) on its first call, and the
    call order."""
    import torch

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]] = {}
    order: list[str] = []

    def hook(name: str):
        def record(_module: Any, args: tuple, output: Any) -> None:
            if name in shapes or not isinstance(output, torch.Tensor):
                return
            single = args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None
            shapes[name] = (tuple(output.shape), None if single is None else tuple(single.shape))
            order.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.inference_mode():
            model(*example)
    finally:
        for handle in handles:
            handle.remove()
    return shapes, order


def _group_roots(model: torch.nn.Module, example: tuple[torch.Tensor, ...],
                 ignored: tuple[str, ...]) -> dict[str, int]:
    """Conv/Linear layers that root a torch-pruning channel group, with their channels."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(copy.deepcopy(model).eval(), example_inputs=example)
    copied = {id(m): n for n, m in graph.model.named_modules()}
    roots: dict[str, int] = {}
    skip = [dict(graph.model.named_modules())[n] for n in ignored]
    for group in graph.get_all_groups(ignored_layers=skip, root_module_types=_weight_types()):
        root = group[0].dep.target.module
        roots[copied[id(root)]] = int(graph.get_pruner_of_module(root).get_out_channels(root))
    return roots


def _weight_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _stage_key(module: torch.nn.Module, shape: tuple[tuple[int, ...], Any]) -> str:
    from torch import nn

    out = shape[0]
    if isinstance(module, nn.Linear):
        lead = out[1:-1]
        return "linear" + (f" {'x'.join(map(str, lead))}" if lead else "")
    spatial = out[2:]
    return f"conv {'x'.join(map(str, spatial))}" if spatial else "conv"


def residual_blocks(model: torch.nn.Module, shapes: dict[str, Any]) -> list[str]:
    """Modules (outermost first, none inside another) whose output has their input's shape and
    whose forward adds the input to something: ``x + f(x)``, possibly through ``nn.Identity``."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or name not in shapes or any(name.startswith(f"{b}.") for b in found):
            continue
        out_shape, in_shape = shapes[name]
        if in_shape != out_shape or not list(module.children()):
            continue
        if _adds_its_input(module):
            found.append(name)
    return found


def _adds_its_input(module: torch.nn.Module) -> bool:
    import torch
    from torch import fx, nn

    class ChildrenAsLeaves(fx.Tracer):  # the module's own forward, not its children's adds
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return True

    try:
        graph = ChildrenAsLeaves().trace(module)
    except Exception:  # untraceable forward (data-dependent control flow): not droppable
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False

    def is_input(node: Any) -> bool:
        if node is inputs[0]:
            return True
        if getattr(node, "op", None) == "call_module":
            target = module.get_submodule(node.target)
            return isinstance(target, nn.Identity) and node.args and node.args[0] is inputs[0]
        return False

    adds = {operator.add, operator.iadd, torch.add}
    for node in graph.nodes:
        is_add = ((node.op == "call_function" and node.target in adds)
                  or (node.op == "call_method" and node.target in ("add", "add_")))
        if is_add and any(is_input(arg) for arg in node.args[:2]):
            return True
    return False
