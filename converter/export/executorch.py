"""ExecuTorch backend: ``.pte`` programs lowered to the XNNPACK delegate (CPU, phones, MCUs).

The base is the ``torch.export`` program of the model on the example input (the preflight: a
model ``torch.export`` cannot capture is refused here). ``executorch-xnnpack-fp32`` lowers it with
``to_edge_transform_and_lower`` and the ``XnnpackPartitioner``; ``executorch-xnnpack-int8``
first quantizes the exported graph with the ``XNNPACKQuantizer`` (PT2E: ``prepare_pt2e``,
calibration on the converter's samples, ``convert_pt2e``; int8 weights per channel and int8
activations), then exports and lowers the same way. Ops XNNPACK does not take stay on
ExecuTorch's portable kernels; the report counts both.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import UnsupportedModelError, VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, VariantRequest
from edgeship.contract.errors import first_line

_DELEGATE_CALL = "executorch_call_delegate"


@dataclass(frozen=True)
class ExecuTorchBase:
    """What the ExecuTorch builders start from: the exported program and its example inputs."""

    program: Any  # torch.export.ExportedProgram
    example: tuple[Any, ...]


def export_base(ctx: ExportContext) -> ExecuTorchBase:
    """``torch.export`` the model on the example input.

    Raises:
        ImportError: the ``executorch`` package is not installed.
        UnsupportedModelError: ``torch.export`` cannot capture the model.
    """
    if importlib.util.find_spec("executorch") is None:
        raise ImportError("executorch is not installed (pip install executorch)")
    import torch

    example = ctx.example_tensors()
    ctx.progress.say("executorch: exporting with torch.export")
    try:
        program = torch.export.export(ctx.model.eval(), example)
    except Exception as err:
        raise UnsupportedModelError("executorch", f"torch.export: {first_line(err, 200)}") from err
    return ExecuTorchBase(program=program, example=example)


def build_fp32(request: VariantRequest, base: ExecuTorchBase, ctx: ExportContext, out: Path) -> BuiltVariant:
    """``executorch-xnnpack-fp32``: the exported program lowered to XNNPACK, float32."""
    details = _lower(request.id, base.program, out)
    return BuiltVariant(path=out, precision=request.kind.precision, details=details)


def build_int8(request: VariantRequest, base: ExecuTorchBase, ctx: ExportContext, out: Path) -> BuiltVariant:
    """``executorch-xnnpack-int8``: XNNPACKQuantizer PT2E int8 (weights per channel unless
    ``per_channel`` is false, activations calibrated on ``ctx.calibration()``), then lowered."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    per_channel = bool(request.options.get("per_channel", True))
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    try:
        prepared = prepare_pt2e(base.program.module(), quantizer)
        samples = ctx.progress.iterate(ctx.calibration(), f"{request.id}: calibration",
                                       total=ctx.calibration_count)
        with torch.no_grad():
            for sample in samples:
                prepared(*(torch.from_numpy(sample[s.name]) for s in ctx.inputs))
        quantized = convert_pt2e(prepared)
        program = torch.export.export(quantized, base.example)
    except Exception as err:
        raise VariantBuildError(f"{request.id}: PT2E quantization: {first_line(err, 200)}") from err
    details = _lower(request.id, program, out)
    granularity = "per-channel" if per_channel else "per-tensor"
    return BuiltVariant(
        path=out, precision=request.kind.precision,
        compression=[f"quant:pt2e:xnnpack:{granularity}"],
        details={**details, "weight_granularity": granularity, "activation_type": "int8",
                 "calibration_samples": ctx.calibration_count},
    )


def _lower(variant_id: str, program: Any, out: Path) -> dict[str, Any]:
    """Lower ``program`` to XNNPACK, write the ``.pte`` and count delegated and portable ops."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        graph = edge.exported_program().graph_module.graph
        executable = edge.to_executorch()
    except Exception as err:
        raise VariantBuildError(f"{variant_id}: ExecuTorch lowering: {first_line(err, 200)}") from err
    out.write_bytes(executable.buffer)
    calls = [n for n in graph.nodes if n.op == "call_function"]
    delegated = sum(1 for n in calls if _DELEGATE_CALL in str(n.target))
    portable = sorted({str(n.target) for n in calls
                       if _DELEGATE_CALL not in str(n.target) and "getitem" not in str(n.target)})
    return {"backend": "xnnpack", "delegate_calls": delegated, "portable_ops": portable}
