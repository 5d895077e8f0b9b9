"""Per-layer sensitivity of ``tflite-int8-dynamic``: quantize one weighted op at a time.

ai-edge-quantizer's dynamic recipe takes a regex over op output names, so one op can be
quantized alone and, in the variant, kept in float (``float_layers``). Each op with weights
(fully connected, convolution, embedding lookup, batch matmul) is quantized alone, run on the
LiteRT interpreter in-process on a few eval samples and scored against the float model; then
the whole model is scored with the ``k`` most sensitive ops in float, for the tuner's first
guess at how many to keep. :mod:`converter.tuning.dynamic` passes a ranking measured on the
ONNX export instead when there is one (one quantizer pass per op is slow on large models).
"""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from converter.export.base import ExportContext
from converter.export.tflite_ops import WEIGHTED_OPS, computing_ops, module_of_scope, resolve_module
from converter.tuning.scoring import Accept, output_error
from converter.tuning.tflite_layers import run_tflite


def tflite_dynamic_sensitivity(
    base: Path, ctx: ExportContext, samples: list[dict[str, np.ndarray]], deadline: float,
    accept: Accept | None = None, max_float: int = 0,
    ranking: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Sensitivity of every weighted op, most sensitive first, and the fewest most sensitive
    ops in float (up to ``max_float``) whose outputs ``accept`` takes, as
    :func:`converter.tuning.onnx_dynamic_layers.dynamic_sensitivity`.

    With ``ranking`` (PyTorch module → its row measured on another runtime) ops take its
    ``score`` and ``agreement`` instead of one quantizer pass each; ops of modules it does not
    name are left out.
    """
    from converter.export.tflite_common import keep_float, write_quantized
    from converter.export.tflite_quant import dynamic_quantizer
    from converter.quiet import hidden_progress_bars

    names, output_names = [s.name for s in ctx.inputs], [s.name for s in ctx.outputs]
    float_outputs = run_tflite(base, samples, names, output_names)
    ops = [(scope, op, resolve_module(ctx.model, module_of_scope(scope)))
           for scope, op in computing_ops(base) if op in WEIGHTED_OPS]
    if not ranking:
        ctx.progress.say(f"sensitivity: quantizing {len(ops)} TFLite ops one at a time (dynamic "
                         f"int8) on {len(samples)} samples")
    rows: list[dict[str, Any]] = []
    predicted = None
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:

        def score(quantizer: Any, label: str) -> tuple[list[np.ndarray], dict[str, float]] | None:
            out = Path(tmp) / f"{label}.tflite"
            try:
                with warnings.catch_warnings(), hidden_progress_bars():
                    warnings.simplefilter("ignore")
                    write_quantized(quantizer, out)
                outputs = run_tflite(out, samples, names, output_names)
            except Exception:  # an op the quantizer cannot take alone: no measurement
                return None
            return outputs, output_error(outputs, float_outputs)

        for i, (scope, op_name, module) in enumerate(ops):
            if ranking:
                if module in ranking:
                    rows.append({"layer": scope, "op": op_name, "module": module,
                                 "score": ranking[module]["score"],
                                 "agreement": ranking[module].get("agreement")})
                continue
            if time.monotonic() > deadline:
                ctx.progress.say(f"sensitivity: time budget reached after {i}/{len(ops)} ops")
                break
            measured = score(dynamic_quantizer(base, f"(?:^|;){re.escape(scope)};"), f"op-{i}")
            if measured is not None:
                rows.append({"layer": scope, "op": op_name, "module": module, **measured[1]})
        rows.sort(key=lambda r: -r["score"])
        ranked = [r["layer"] for r in rows]
        for k in range(1, min(max_float, len(ranked)) + 1) if accept else ():
            if time.monotonic() > deadline:
                break
            quantizer = dynamic_quantizer(base)
            keep_float(quantizer, ranked[:k])
            measured = score(quantizer, f"top-{k}")
            if measured is not None and accept(measured[0]):
                predicted = k
                break
    return rows, predicted
