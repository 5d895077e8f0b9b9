"""``onnx-ternary-packed``: the ONNX export with its ternary weights shipped 2 bits each.

Run after a ``ternary`` step: every float initializer whose slices along the output-channel
axis (axis 0 for Conv and Gemm weights, the last axis for MatMul weights) each hold at most
one magnitude besides zero is a ternary tensor; it is packed (:mod:`edgeship.runtimes.packed`)
and the graph refers to it as external data that the runner unpacks at load. Everything else
(biases, BatchNorm, layers the step kept in float) stays float32 in the graph. No runtime has
2-bit kernels here, so the saving is on the wire and on disk only; the details say both sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
from converter.export.onnx_common import read_exporter, short, toolchain_step
from edgeship.runtimes.packed import (
    EXTERNAL_LOCATION,
    PACKED_SUFFIX,
    SCHEME,
    PackedTensor,
    pack_codes,
    write_packed,
)

#: tensors smaller than this stay float (biases, tiny kernels: packing saves nothing there).
DEFAULT_MIN_ELEMENTS = 64
#: a slice is ternary when its non-zero magnitudes agree to this relative tolerance.
RELATIVE_TOLERANCE = 1e-5


def build_ternary_packed(
    request: VariantRequest, base: Path, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """Pack the base export's ternary initializers; check the result runs on onnxruntime.

    Raises:
        NotApplicable: no initializer is ternary (the variant has no ``ternary`` step).
        VariantBuildError: onnx failed, or onnxruntime cannot run the unpacked model.
    """
    import onnx

    min_elements = int(request.options.get("min_elements", DEFAULT_MIN_ELEMENTS))
    model = onnx.load(str(base))
    with toolchain_step(request, "packing"):
        tensors = pack_ternary_initializers(model, min_elements)
    if not tensors:
        raise NotApplicable("no ternary weights to pack: put a 'ternary' step in this variant's steps")
    path = out.with_name(f"{request.id}{PACKED_SUFFIX}")
    with toolchain_step(request, "writing the packed model"):
        write_packed(path, model.SerializeToString(), tensors)
    memory = _check_runs(request, path, ctx)
    float_left = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                     if t.data_type == onnx.TensorProto.FLOAT
                     and t.data_location != onnx.TensorProto.EXTERNAL)
    packed_weights = sum(t.count for t in tensors)
    size, base_size = path.stat().st_size, base.stat().st_size
    details: dict[str, Any] = {
        "packing": {"scheme": SCHEME, "bits_per_weight": 2, "scale": "float32 per output channel",
                    "unpacked_at_load": True},
        "packed_tensors": len(tensors), "packed_weights": packed_weights,
        "float_weights_left": float_left,
        "size_bytes": size, "size_ratio": round(size / base_size, 4),
        "wire_bytes": size, "unpacked_bytes": memory, "runtime_weight_bytes": memory + 4 * float_left,
        "fp32_file_bytes": base_size, "exporter": read_exporter(base),
    }
    return BuiltVariant(path=path, precision=request.kind.precision,
                        compression=["pack:ternary:2bit:per-channel"], details=details)


def pack_ternary_initializers(model: Any, min_elements: int) -> list[PackedTensor]:
    """Replace every ternary float initializer by an external reference; return the packed tensors."""
    from onnx import TensorProto, numpy_helper

    packed = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT or len(init.dims) < 2 or \
                int(np.prod(init.dims)) < min_elements:
            continue
        weight = numpy_helper.to_array(init)
        found = ternary_along(weight)
        if found is None:
            continue
        axis, codes, scales = found
        packed.append(PackedTensor(init.name, tuple(weight.shape), axis, pack_codes(codes), scales))
        _make_external(init, weight.nbytes)
    return packed


def ternary_along(weight: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
    """``(axis, codes, scales)`` when every slice along axis 0 (else the last) is
    ``scale * {-1, 0, +1}``; ``None`` when neither axis is."""
    for axis in (0, weight.ndim - 1):
        moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
        magnitude = np.abs(moved)
        scales = magnitude.max(axis=1)
        nonzero = magnitude > 0
        smallest = np.where(nonzero, magnitude, np.inf).min(axis=1)
        same = np.all((scales - np.where(np.isinf(smallest), scales, smallest))
                      <= RELATIVE_TOLERANCE * scales)
        if same and nonzero.any():
            codes = np.sign(weight).astype(np.int8)
            return axis, codes, scales.astype(np.float32)
    return None


def _make_external(init: Any, length: int) -> None:
    """Drop ``init``'s data; the graph names it external data the runner supplies at load."""
    from onnx import TensorProto

    for data_field in ("raw_data", "float_data"):
        init.ClearField(data_field)
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    for key, value in (("location", EXTERNAL_LOCATION), ("offset", "0"), ("length", str(length))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value


def _check_runs(request: VariantRequest, path: Path, ctx: ExportContext) -> int:
    """Load through the packed runner (what devices do) and run the example; the float32
    bytes the runtime holds for the unpacked tensors."""
    from edgeship.runtimes.packed import PackedOnnxRunner

    try:
        runner = PackedOnnxRunner(path, [s.name for s in ctx.inputs], threads=1)
        runner.run(ctx.example)
    except Exception as err:
        raise VariantBuildError(f"{request.id}: onnxruntime cannot run the unpacked model: "
                                f"{short(err)}") from err
    return runner.unpacked_bytes
