"""TFLite backend: litert-torch export, ai-edge-quantizer variants.

``export_base`` converts the PyTorch model once to a float32 ``.tflite`` with litert-torch (it
doubles as the preflight: an operator litert-torch cannot lower raises
:class:`~converter.errors.UnsupportedModelError` naming it). ``build_variant`` derives every
kind from that file:

* ``tflite-fp32``: the base file itself.
* ``tflite-fp16``: weight-only float16 (FLOAT_CASTING), float compute.
* ``tflite-int8-dynamic``: int8 weights, activations quantized at run time.
* ``tflite-int8``: int8 weights and activations from calibration; see
  :mod:`converter.export.tflite_quant` for the io block of full-integer models.

litert-torch downcasts 64-bit inputs and outputs to 32 bits (int64 token ids become int32
tensors); runners cast feeds to the tensor's dtype.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from converter.errors import UnsupportedModelError, VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
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


def load_interpreter(path: Path) -> Any:
    """A LiteRT interpreter on ``path`` with tensors allocated, without the XNNPACK delegate
    (so the operator list is the model's own)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    return interpreter


def build_variant(request: VariantRequest, base: Path, ctx: ExportContext) -> BuiltVariant:
    """Build one TFLite variant into ``ctx.work_dir / f"{request.id}.tflite"``.

    Args:
        request: the variant's id, kind (``tflite-*``) and options.
        base: the float32 model from :func:`export_base`.
        ctx: the export context (calibration samples for ``tflite-int8``).

    Raises:
        VariantBuildError: the quantizer failed; the message is one line.
        NotApplicable: the kind quantizes nothing in this model.
    """
    from converter.export import tflite_quant

    out = Path(ctx.work_dir) / f"{request.id}.tflite"
    kind = request.kind.kind
    if kind == "tflite-fp32":
        shutil.copyfile(base, out)
        return BuiltVariant(out, request.kind.precision, details=model_facts(out))
    builders = {
        "tflite-fp16": tflite_quant.build_fp16,
        "tflite-int8-dynamic": tflite_quant.build_int8_dynamic,
        "tflite-int8": tflite_quant.build_int8_static,
    }
    if kind not in builders:
        raise VariantBuildError(f"{request.id}: kind {kind!r} is not a TFLite kind")
    try:
        return builders[kind](request, base, out, ctx)
    except (NotApplicable, VariantBuildError):
        raise
    except Exception as err:
        raise VariantBuildError(f"{request.id}: ai-edge-quantizer: {first_line(err)}") from err


def model_facts(path: Path) -> dict[str, Any]:
    """Facts for the report: file size, operator types and tensor counts by dtype."""
    interpreter = load_interpreter(path)
    ops: dict[str, int] = {}
    for op in interpreter._get_ops_details():  # no public API lists operators
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    dtypes: dict[str, int] = {}
    for tensor in interpreter.get_tensor_details():
        name = getattr(tensor["dtype"], "__name__", str(tensor["dtype"]))
        dtypes[name] = dtypes.get(name, 0) + 1
    return {"size_bytes": path.stat().st_size, "ops": dict(sorted(ops.items())),
            "tensor_dtypes": dict(sorted(dtypes.items()))}
