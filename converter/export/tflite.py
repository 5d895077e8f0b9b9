"""TFLite backend: the litert-torch export, which is also the ``tflite-fp32`` variant.

``export_base`` converts the PyTorch model once to a float32 ``.tflite`` with litert-torch (it
doubles as the preflight: an operator litert-torch cannot lower raises
:class:`~converter.errors.UnsupportedModelError` naming it). Every kind is derived from that
file by its builder (the catalogue names it, :mod:`converter.export.dispatch` calls it):

* ``tflite-fp32``: the base file itself (:func:`build_fp32`, here).
* ``tflite-fp16``: weight-only float16 (FLOAT_CASTING), float compute
  (:mod:`converter.export.tflite_quant`).
* ``tflite-int8-dynamic``: int8 weights, activations quantized at run time
  (:mod:`converter.export.tflite_quant`).
* ``tflite-int8``: int8 weights and activations from calibration; see
  :mod:`converter.export.tflite_static` for the io block of full-integer models.

What these modules share (loading on LiteRT, report facts, writing the quantizer's result) is
in :mod:`converter.export.tflite_common`.

litert-torch downcasts 64-bit inputs and outputs to 32 bits (int64 token ids become int32
tensors); runners cast feeds to the tensor's dtype.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from converter.errors import UnsupportedModelError
from converter.export.base import BuiltVariant, ExportContext, VariantRequest
from converter.export.tflite_common import load_interpreter, model_facts
from edgeship.contract.errors import first_line

FORMAT = "tflite"

_OP_PATTERNS = (
    re.compile(r"Lowering not found: ([\w.]+)"),
    re.compile(r"unresolved custom op: ([\w.]+)", re.IGNORECASE),
    re.compile(r"failed to legalize operation '([\w.]+)'"),
    re.compile(r"target=torch\.ops\.([\w.]+)"),
    re.compile(r"'([a-z_]+\.[\w.]+)' op "),
)


def op_from_error(message: str) -> str | None:
    """The operator a toolchain error names, e.g. ``aten.cumprod`` (overload dropped)."""
    for pattern in _OP_PATTERNS:
        match = pattern.search(message)
        if match:
            name = match.group(1)
            if name.startswith("aten."):
                name = ".".join(name.split(".")[:2])
            return name
    return None


def _quiet_toolchain() -> None:
    """Silence litert-torch's rich progress lines and absl/TF info logs."""
    import litert_torch

    litert_torch.config.show_progress = False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.WARNING)


def export_base(ctx: ExportContext) -> Path:
    """Convert ``ctx.model`` to a float32 ``.tflite`` with litert-torch.

    Args:
        ctx: the export context; the model is traced with ``ctx.example_tensors()``.

    Returns:
        Path of the float32 model (under ``ctx.work_dir/tflite-base``).

    Raises:
        UnsupportedModelError: litert-torch (or torch.export) cannot convert the model, or the
            converted model does not load on the LiteRT interpreter.
    """
    import litert_torch

    _quiet_toolchain()
    out_dir = Path(ctx.work_dir) / "tflite-base"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model-fp32.tflite"
    ctx.progress.say("tflite: converting with litert-torch")
    try:
        edge_model = litert_torch.convert(ctx.model.eval(), ctx.example_tensors())
        edge_model.export(str(path))
    except Exception as err:  # torch.export and MLIR lowering raise many types
        raise UnsupportedModelError(FORMAT, first_line(err), op=op_from_error(str(err))) from err
    _check_loads(path, ctx)
    return path


def _check_loads(path: Path, ctx: ExportContext) -> None:
    """Load the converted model on LiteRT and compare its input/output counts with the specs."""
    from edgeship.runtimes.litert import signature_io

    try:
        interpreter = load_interpreter(path)
    except Exception as err:
        raise UnsupportedModelError(FORMAT, first_line(err), op=op_from_error(str(err))) from err
    inputs, outputs = signature_io(interpreter)
    if len(inputs) != len(ctx.inputs) or (ctx.outputs and len(outputs) != len(ctx.outputs)):
        raise UnsupportedModelError(
            FORMAT,
            f"converted model has {len(inputs)} inputs and {len(outputs)} outputs, "
            f"expected {len(ctx.inputs)} and {len(ctx.outputs)}",
        )


def build_fp32(request: VariantRequest, base: Path, ctx: ExportContext, out: Path) -> BuiltVariant:
    """``tflite-fp32``: the base file itself, with its facts for the report."""
    shutil.copyfile(base, out)
    return BuiltVariant(out, request.kind.precision, details=model_facts(out))
