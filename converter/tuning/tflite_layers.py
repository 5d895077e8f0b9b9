"""Per-layer sensitivity of ``tflite-int8``: quantize one op at a time with ai-edge-quantizer.

ai-edge-quantizer names an op by its output tensors and its recipe takes a regex over those
names, so an op can be quantized alone (a static int8 rule matching only that op) and, in the
variant, kept in float (a ``NO_QUANTIZE`` rule: the per-op float fallback ``float_layers``
uses). Activation ranges come from one calibration of the full recipe (cached in the export
context). Each op quantized alone is run on the LiteRT interpreter in-process on a few eval
samples and scored by the relative squared error of the outputs against the float model.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from converter.catalogue import VARIANT_KINDS
from converter.export.base import ExportContext, VariantRequest
from converter.export.tflite_ops import computing_ops, module_of_scope, resolve_module
from converter.tuning.scoring import output_error

__all__ = ["computing_ops", "module_of_scope", "resolve_module", "run_tflite", "tflite_sensitivity"]

def tflite_sensitivity(
    base: Path, ctx: ExportContext, options: dict[str, Any], samples: list[dict[str, np.ndarray]],
    deadline: float,
) -> list[dict[str, Any]]:
    """Sensitivity of every computing op of the float ``.tflite``, most sensitive first.

    Returns:
        One row per op: ``layer`` (its output tensor name, what ``float_layers`` takes),
        ``op``, ``module`` (the PyTorch module path litert-torch encodes in the name, when it
        can be read), ``score``, ``agreement``.
    """
    from ai_edge_quantizer import qtyping, quantizer

    from converter.export.tflite_common import write_quantized
    from converter.export.tflite_static import (
        calibration_stats,
        static_quantizer,
        weight_granularity,
    )
    from converter.quiet import hidden_progress_bars

    kind = VARIANT_KINDS["tflite-int8"]
    request = VariantRequest("sensitivity", kind, {**kind.options, **options, "float_layers": ()})
    full, settings = static_quantizer(request, base)
    stats, _ = calibration_stats(full, base, ctx, "sensitivity", settings["calibration"],
                                 settings["calibration_key"])
    names = [s.name for s in ctx.inputs]
    float_outputs = run_tflite(base, samples, names, [s.name for s in ctx.outputs])
    ops = [op for op in computing_ops(base) if op[0] not in settings["float_output_tensors"]]
    ctx.progress.say(f"sensitivity: quantizing {len(ops)} TFLite ops one at a time on "
                     f"{len(samples)} samples")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        for i, (scope, op_name) in enumerate(ops):
            if time.monotonic() > deadline:
                ctx.progress.say(f"sensitivity: time budget reached after {i}/{len(ops)} ops")
                break
            single = quantizer.Quantizer(str(base))
            single.add_static_config(
                regex=f"(?:^|;){_escape(scope)};",
                operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                activation_num_bits=8, weight_num_bits=8,
                weight_granularity=weight_granularity(settings["per_channel"]),
            )
            out = Path(tmp) / f"op-{i}.tflite"
            try:
                with warnings.catch_warnings(), hidden_progress_bars():
                    warnings.simplefilter("ignore")
                    write_quantized(single, out, stats)
                outputs = run_tflite(out, samples, names, [s.name for s in ctx.outputs])
            except Exception:  # an op the quantizer cannot take alone: no measurement
                continue
            rows.append({"layer": scope, "op": op_name,
                         "module": resolve_module(ctx.model, module_of_scope(scope)),
                         **output_error(outputs, float_outputs)})
    rows.sort(key=lambda r: -r["score"])
    return rows


def run_tflite(path: Path, samples: list[dict[str, np.ndarray]], names: list[str],
               output_names: list[str]) -> list[np.ndarray]:
    """Run ``path`` with the agent's LiteRT runner (one thread) over the samples."""
    from edgeship.runtimes.litert import LiteRTRunner

    runner = LiteRTRunner(path, names, threads=1, output_names=output_names)
    collected = [runner.run(sample) for sample in samples]
    return [np.concatenate([c[k] for c in collected]) for k in range(len(collected[0]))]


def _escape(name: str) -> str:
    import re

    return re.escape(name)
