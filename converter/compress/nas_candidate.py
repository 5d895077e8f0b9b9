"""Turn a point of the search space into a model, and measure its latency on onnxruntime.

The candidate is built from the source model (never from another candidate): the dropped
blocks become ``nn.Identity``, then each torch-pruning channel group rooted in a stage keeps
``round(channels * width)`` channels, the ones with the largest group L1 norm. Its latency is
measured the way the converter validates a variant: the converter's ONNX export, then
``edgeship.runtimes.measure`` in a clean process, p50 over one sample at a time.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from converter.compress.nas_space import Architecture, SearchSpace
from converter.data import SampleSet
from converter.errors import CompressionError
from converter.specs import TensorSpec
from edgeship.contract.errors import first_line

if TYPE_CHECKING:
    import torch

#: onnxruntime threads and warm-up runs, as the converter validates variants (recipe defaults).
MEASURE_THREADS = 1
MEASURE_WARMUP = 3


def build_candidate(
    source: torch.nn.Module, space: SearchSpace, arch: Architecture, example: tuple[torch.Tensor, ...]
) -> torch.nn.Module:
    """A copy of ``source`` with ``arch``'s blocks dropped and stages narrowed (eval mode).

    Raises:
        CompressionError: torch-pruning could not narrow the model.
    """
    import torch
    import torch_pruning as tp
    from torch import nn

    model = copy.deepcopy(source).eval()
    for stage, depth in zip(space.stages, arch.depths, strict=True):
        for name in stage.blocks[depth:]:
            model.set_submodule(name, nn.Identity())
    widths = {layer: w for stage, w in zip(space.stages, arch.widths, strict=True)
              for layer in stage.members if w < 1.0}
    if not widths:
        return model
    names = {id(m): n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    importance = tp.importance.MagnitudeImportance(p=1)
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        ignored = [modules[n] for n in space.ignored if n in modules]
        for group in graph.get_all_groups(ignored_layers=ignored,
                                          root_module_types=(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            root = group[0].dep.target.module
            width = widths.get(names.get(id(root), ""))
            if width is None:
                continue
            channels = int(graph.get_pruner_of_module(root).get_out_channels(root))
            remove = channels - max(1, round(channels * width))
            if remove <= 0:
                continue
            order = torch.argsort(importance(group))
            graph.get_pruning_group(root, group[0].dep.handler, order[:remove].tolist()).prune()
    except Exception as err:  # a group the dependency graph cannot handle
        raise CompressionError(f"search: torch-pruning failed on {arch.label()}: "
                               f"{first_line(err)}") from err
    return model.eval()


@dataclass(frozen=True)
class LatencyProbe:
    """Where and how candidates are timed: the samples, their file, the output specs."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    samples: SampleSet
    inputs_file: Path


@dataclass(frozen=True)
class Timing:
    """A candidate's ONNX file size and p50 latency on onnxruntime (one sample at a time)."""

    size_bytes: int
    latency_ms: float
    runtime: str


def measure_latency(model: torch.nn.Module, probe: LatencyProbe) -> Timing:
    """Export ``model`` to ONNX as the converter does and time it on onnxruntime.

    Raises:
        CompressionError: the export or the runtime failed, or onnxruntime is unavailable.
    """
    from converter.export.base import BuiltVariant, ExportContext
    from converter.export.onnx import export_base
    from converter.progress import Progress
    from converter.validate import measure_on_runtime
    from edgeship.contract.fidelity import percentile_ms

    with tempfile.TemporaryDirectory(prefix="edgeship-nas-") as tmp:
        ctx = ExportContext(
            model=model, inputs=probe.inputs, outputs=probe.outputs, example=probe.samples.sample(0),
            calibration=lambda: iter(()), calibration_count=0, work_dir=Path(tmp),
            progress=Progress(quiet=True),
        )
        try:
            path = export_base(ctx)
            measurement = measure_on_runtime(
                BuiltVariant(path=path, precision="fp32"), "onnx", probe.samples, probe.inputs_file,
                MEASURE_THREADS, MEASURE_WARMUP, [s.name for s in probe.outputs])
        except Exception as err:
            raise CompressionError(f"search: measuring a candidate on onnxruntime failed: "
                                   f"{first_line(err)}") from err
        if not measurement.available:
            raise CompressionError(f"search: onnxruntime unavailable: {measurement.unavailable_reason}")
        return Timing(path.stat().st_size, float(percentile_ms(measurement.latencies_ms, 50)),
                      f"{measurement.runtime} {measurement.version}")
