"""OpenVINO backend: convert once with ``openvino.convert_model``; ``openvino-fp16`` is built here.

The base model is converted from the PyTorch module itself (OpenVINO's PyTorch frontend, fed
the example sample); when that frontend refuses the model, the converter's own ONNX export is
converted instead (why this order: docs/formats-openvino.md). Inputs and outputs get the
spec names and static shapes, as the other formats' exports do. The base stays in memory as
an ``ov.Model`` in float32; builders save it:

* ``openvino-fp16``: weights stored as float16 (``save_model(compress_to_fp16=True)``); the
  CPU plugin decompresses them at load and computes in float32.
* ``openvino-int8``: NNCF post-training quantization, :mod:`converter.export.openvino_int8`.

An IR is an ``.xml`` and a ``.bin``; the shipped file is one zip of both
(:func:`edgeship.runtimes.openvino.write_ir_zip`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import UnsupportedModelError
from converter.export.base import BuiltVariant, ExportContext, VariantRequest
from edgeship.contract.errors import first_line
from edgeship.runtimes.openvino import write_ir_zip

FORMAT = "openvino"


@dataclass
class OpenVINOBase:
    """The float32 ``ov.Model`` every openvino variant starts from, and which frontend made it."""

    model: Any
    frontend: str


def export_base(ctx: ExportContext) -> OpenVINOBase:
    """Convert ``ctx.model`` to an in-memory float32 ``ov.Model`` (the format's preflight).

    Raises:
        UnsupportedModelError: neither the PyTorch frontend nor the ONNX route could take the
            model, or the converted model does not run on OpenVINO's CPU plugin.
    """
    import openvino  # noqa: F401 - a missing toolchain refuses the format before any work

    ctx.progress.say("openvino: converting with openvino.convert_model (PyTorch frontend)")
    try:
        model, frontend = _from_torch(ctx), "pytorch"
    except Exception as torch_err:
        reason = first_line(torch_err, 200, innermost=True)
        ctx.progress.say(f"openvino: PyTorch frontend failed ({reason}); converting the ONNX export")
        try:
            model, frontend = _from_onnx(ctx), "onnx"
        except Exception as onnx_err:
            detail = f"PyTorch frontend: {reason}; ONNX route: {first_line(onnx_err, 200, innermost=True)}"
            raise UnsupportedModelError(FORMAT, detail) from onnx_err
    _name_and_fix_shapes(model, ctx)
    _check_runs(model, ctx)
    return OpenVINOBase(model, frontend)


def build_fp16(request: VariantRequest, base: OpenVINOBase, ctx: ExportContext, out: Path) -> BuiltVariant:
    """``openvino-fp16``: the base IR with its weights stored as float16."""
    save_variant(base.model, out, compress_to_fp16=True)
    return BuiltVariant(
        path=out, precision=request.kind.precision, compression=["quant:fp16-weights"],
        details={"frontend": base.frontend, "weights": "float16", "compute": "float32"},
    )


def save_variant(model: Any, out: Path, compress_to_fp16: bool) -> Path:
    """Save ``model`` as an IR and zip it to ``out`` (the one file a variant ships)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="edgeship-openvino-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
        return write_ir_zip(xml, out)


def input_feeds(model: Any, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A sample as the positional list an ``ov.Model`` / ``CompiledModel`` takes."""
    return [np.ascontiguousarray(sample[port.get_any_name()]) for port in model.inputs]


# --------------------------------------------------------------------------- conversion


def _from_torch(ctx: ExportContext) -> Any:
    import openvino as ov
    import torch

    from converter.export.flat_outputs import FlatOutputs

    ctx.model.eval()
    with _quiet(), torch.no_grad():
        return ov.convert_model(FlatOutputs(ctx.model), example_input=ctx.example_tensors())


def _from_onnx(ctx: ExportContext) -> Any:
    """Convert the converter's ONNX base export (written under this format's own directory)."""
    import openvino as ov

    from converter.export import onnx as onnx_backend

    work = ctx.work_dir / "_openvino_onnx"
    path = onnx_backend.export_base(dataclasses.replace(ctx, work_dir=work))
    with _quiet():
        return ov.convert_model(str(path))


def _name_and_fix_shapes(model: Any, ctx: ExportContext) -> None:
    """Spec names on inputs and outputs, static input shapes (as the other formats export)."""
    if len(model.inputs) != len(ctx.inputs) or len(model.outputs) != len(ctx.outputs):
        raise UnsupportedModelError(
            FORMAT, f"converted model has {len(model.inputs)} inputs / {len(model.outputs)} outputs, "
                    f"the model {len(ctx.inputs)} / {len(ctx.outputs)}")
    model.reshape({port: list(spec.shape) for port, spec in zip(model.inputs, ctx.inputs, strict=True)})
    for port, spec in zip(model.inputs, ctx.inputs, strict=True):
        port.get_tensor().set_names({spec.name})
    for port, spec in zip(model.outputs, ctx.outputs, strict=True):
        port.get_tensor().set_names({spec.name})


def _check_runs(model: Any, ctx: ExportContext) -> None:
    """Preflight: the CPU plugin compiles the model and runs the example sample."""
    import openvino as ov

    try:
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        compiled(input_feeds(model, ctx.example))
    except Exception as err:
        raise UnsupportedModelError(
            FORMAT, f"OpenVINO CPU cannot run the converted model: {first_line(err, 200, innermost=True)}"
        ) from err


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the frontends' warnings and prints off the console."""
    logger = logging.getLogger("torch")
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
