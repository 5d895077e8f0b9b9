"""What the TFLite builders share: loading a model on LiteRT, writing ai-edge-quantizer's
result, describing it, and turning quantizer failures into one-line build errors.

A leaf: the base export (:mod:`converter.export.tflite`) and the variant builders
(:mod:`~converter.export.tflite_quant`, :mod:`~converter.export.tflite_static`) import it, and
it imports none of them. ai-edge-litert and ai-edge-quantizer are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from converter.errors import VariantBuildError
from converter.export.base import NotApplicable, VariantRequest
from converter.quiet import hidden_progress_bars
from edgeship.contract.errors import first_line


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


def quantized_facts(out: Path, expect_dtype: str, what: str) -> dict[str, Any]:
    """Report facts; :class:`NotApplicable` when no tensor of ``expect_dtype`` was produced."""
    facts = model_facts(out)
    if not facts["tensor_dtypes"].get(expect_dtype):
        out.unlink(missing_ok=True)
        raise NotApplicable(f"no {what} in this model that ai-edge-quantizer can quantize")
    return facts


@contextlib.contextmanager
def quantizer_errors(request: VariantRequest) -> Iterator[None]:
    """Turn an ai-edge-quantizer exception into a one-line VariantBuildError."""
    try:
        yield
    except (NotApplicable, VariantBuildError):
        raise
    except Exception as err:  # the quantizer raises many types
        raise VariantBuildError(f"{request.id}: ai-edge-quantizer: {first_line(err)}") from err


def write_quantized(quantizer: Any, out: Path, calibration: Any = None) -> None:
    """Run the quantizer and write the model to ``out``."""
    with hidden_progress_bars():  # tensor transformations still draw a bar
        result = quantizer.quantize(
            calibration, enable_progress_bar=False, enable_progress_report=False
        )
    out.write_bytes(_signature_outputs_fixed(bytes(result.quantized_model)))


def _signature_outputs_fixed(model_bytes: bytes) -> bytes:
    """The model with each signature output pointing at the subgraph's (dequantized) output.

    ai-edge-quantizer 0.10 repoints a signature output at the DEQUANTIZE it inserts before a
    model output only when nothing else reads that DEQUANTIZE. When a float op reads it too
    (a float head on an output that is also returned, e.g. ``embedding`` and
    ``logits = head(embedding)``), the signature keeps naming the int8 tensor, which the
    XNNPACK delegate never materializes ("Tensor data is null"). Unchanged bytes when every
    signature output is already a subgraph output.
    """
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    changed = False
    for signature in model.signatureDefs or []:
        graph = model.subgraphs[signature.subgraphIndex]
        outputs = {fb.get_tensor_name(graph.tensors[t]): int(t) for t in graph.outputs}
        for item in signature.outputs or []:
            if item.tensorIndex in outputs.values():
                continue
            name = fb.get_tensor_name(graph.tensors[item.tensorIndex])
            fixed = outputs.get(f"{name}_dequant")
            if fixed is not None:
                item.tensorIndex, changed = fixed, True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else model_bytes


def keep_float(quantizer: Any, scopes: list[str]) -> None:
    """Leave the ops named by their output tensors in float (``NO_QUANTIZE``)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    if scopes:
        quantizer.update_quantization_recipe(
            regex=scope_regex(scopes),
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=AlgorithmName.NO_QUANTIZE,
        )


def scope_regex(scopes: list[str]) -> str:
    """A recipe regex matching exactly the ops named by ``scopes`` (their output tensors;
    ai-edge-quantizer names an op ``"out1;out2;"``)."""
    return "|".join(f"(?:^|;){re.escape(name)};" for name in scopes)
