"""Per-layer weight granularity of the static int8 kinds, chosen by measured sensitivity.

Per-channel int8 weights keep accuracy where a layer's channels span different ranges, and
cost bytes: a float scale per channel for the weight and another for its int32 bias (TFLite
adds an int64 zero point to each). On a MobileNetV2-style CNN that is 0.03-0.05x of the fp32
file. Each layer's weights are rounded per tensor alone in one switchable onnxruntime session
(:func:`~converter.tuning.onnx_dynamic_layers.granularity_switch`; activations stay float, the
only difference between the two is the weight rounding) and scored against the float model;
then, cheapest first (error added per channel saved), the longest run of layers goes per
tensor whose output error stays within ``1 + tolerance`` of the all-per-channel model's, or
below :data:`NOISE_FLOOR` (what 8-bit activations add anyway), whichever is larger. Both static
builders take the result (ONNX weight names; TFLite measures its 8-bit weights on the ONNX
export and maps them by PyTorch module, :mod:`converter.export.tflite_granularity`, for
``tflite-int8`` and ``tflite-int8-dynamic`` alike).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.tuning.scoring import output_error

if TYPE_CHECKING:
    from converter.export.base import ExportContext

#: the output error per-tensor layers may add, as a share of the all-per-channel model's.
DEFAULT_TOLERANCE = 0.25
#: output error (relative squared, against float) that is never "measurable": below the noise
#: 8-bit activations add on their own (1.4e-4 to 2e-4 on the MobileNetV2-style CNN, measured).
NOISE_FLOOR = 2e-4
#: samples the choice is measured on (calibration samples; no labels needed).
SAMPLES = 16


@dataclass
class GranularityChoice:
    """Which layers' weights are stored per tensor, and the measurements behind it.

    Attributes:
        per_tensor: weight initializer names (of the pre-processed ONNX graph) per tensor.
        modules: the PyTorch modules of those weights (``None`` where unknown).
        rows: per layer: ``layer`` (node), ``op``, ``module``, ``weight``, ``channels``,
            ``score`` (output error with this layer alone per tensor), ``per_tensor``.
        score_per_channel, score_chosen, score_per_tensor: output error against float of
            all layers per channel, of the choice, and of all per tensor.
        tolerance: the tolerance the choice was made with.
        samples: how many samples were run.
    """

    per_tensor: list[str] = field(default_factory=list)
    modules: list[str | None] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    score_per_channel: float = 0.0
    score_chosen: float = 0.0
    score_per_tensor: float = 0.0
    tolerance: float = DEFAULT_TOLERANCE
    samples: int = 0

    def summary(self) -> dict[str, Any]:
        """What a variant's report records (``details["weight_granularity"]``)."""
        return {
            "per_tensor_layers": len(self.per_tensor), "layers": len(self.rows),
            "per_tensor": [r["module"] or r["weight"] for r in self.rows if r["per_tensor"]],
            "per_channel": [r["module"] or r["weight"] for r in self.rows if not r["per_tensor"]],
            "score_per_channel": self.score_per_channel, "score_chosen": self.score_chosen,
            "score_per_tensor": self.score_per_tensor, "tolerance": self.tolerance,
            "samples": self.samples,
        }


def choose_granularity(
    source: Path, input_names: list[str], samples: list[dict[str, np.ndarray]],
    reduce_range: bool, tolerance: float = DEFAULT_TOLERANCE, modules: dict[str, str] | None = None,
    deadline: float | None = None,
) -> GranularityChoice:
    """Measure every constant-weight layer of ``source`` per tensor and choose (module docstring).

    Args:
        source: the pre-processed float ONNX graph the static quantizer reads.
        input_names: its inputs in order.
        samples: samples to run (calibration samples).
        reduce_range: 7-bit weights (onnxruntime's default here) or 8-bit (TFLite).
        tolerance: output error the per-tensor layers may add, relative to all per channel.
        modules: weight name → PyTorch module, to name the rows.
        deadline: ``time.monotonic()`` after which no more layers go per tensor.
    """
    from converter.tuning.onnx_dynamic_layers import SwitchableModel, granularity_switch
    from edgeship.runtimes.onnx import OnnxRunner

    runner = OnnxRunner(source, input_names, threads=1)
    collected = [runner.run(sample) for sample in samples]
    floats = [np.concatenate([c[k] for c in collected]) for k in range(len(collected[0]))]
    model = SwitchableModel(source, input_names, modules=modules,
                            switch=granularity_switch(reduce_range))
    everything = [name for name, _, _ in model.layers]

    def score(per_tensor: list[str]) -> float:
        return output_error(model.run(samples, per_tensor), floats)["score"]

    channels = _channels(source, model.weights)
    base = score([])
    rows = []
    for name, op, module in model.layers:
        rows.append({"layer": name, "op": op, "module": module, "weight": model.weights[name],
                     "channels": channels[name], "score": score([name]), "per_tensor": False})
    # cheapest first: the error a layer adds per channel whose scales it saves; then the
    # longest prefix of that order within the budget (binary search: ~log2(layers) runs)
    order = sorted(rows, key=lambda r: (r["score"] - base) / max(r["channels"], 1))
    budget = max(base * (1.0 + tolerance), NOISE_FLOOR)
    low, high, current = 0, len(order), base
    while low < high and (deadline is None or time.monotonic() < deadline):
        middle = (low + high + 1) // 2
        trial = score([r["layer"] for r in order[:middle]])
        if trial <= budget:
            low, current = middle, trial
        else:
            high = middle - 1
    chosen = [r["layer"] for r in order[:low]]
    for row in order[:low]:
        row["per_tensor"] = True
    picked = set(chosen)
    return GranularityChoice(
        per_tensor=[model.weights[n] for n in everything if n in picked],
        modules=[m for n, _, m in model.layers if n in picked],
        rows=rows, score_per_channel=base, score_chosen=current,
        score_per_tensor=score(everything), tolerance=tolerance, samples=len(samples),
    )


def _channels(source: Path, weights: dict[str, str]) -> dict[str, int]:
    """Output channels of each switchable layer's weight (what per-channel scales it stores)."""
    import onnx

    from converter.tuning.onnx_dynamic_layers import channel_axis

    graph = onnx.load(str(source)).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    found = {}
    for name, weight in weights.items():
        axis = channel_axis(nodes[name], dims[weight])
        found[name] = int(dims[weight][axis]) if axis is not None else 1
    return found


def granularity_for(source: Path, ctx: ExportContext, reduce_range: bool,
                    tolerance: float = DEFAULT_TOLERANCE) -> GranularityChoice | None:
    """:func:`choose_granularity` on ``ctx``'s first calibration samples, once per source and
    settings (kept in ``ctx.cache``); ``None`` when it cannot run (the caller keeps every
    weight per channel)."""
    from edgeship.contract.errors import first_line

    key = ("weight-granularity", str(source), reduce_range, tolerance)
    if key not in ctx.cache:
        samples = [sample for _, sample in zip(range(SAMPLES), ctx.calibration(), strict=False)]
        ctx.progress.say(f"int8: measuring per-tensor weights layer by layer on {len(samples)} "
                         "samples (one onnxruntime session)")
        try:
            ctx.cache[key] = choose_granularity(source, [s.name for s in ctx.inputs], samples,
                                                reduce_range, tolerance)
        except Exception as err:  # a guide: without it every weight stays per channel
            ctx.progress.say(f"int8: per-layer granularity not measured: {first_line(err)}")
            ctx.cache[key] = None
    return ctx.cache[key]


def granularity_options(options: dict[str, Any], variant_id: str) -> tuple[str | list[str], float]:
    """``(per_tensor_layers, granularity_tolerance)`` of a static int8 variant's options:
    ``"auto"`` or a list of names, and a tolerance >= 0.

    Raises:
        VariantBuildError: another value.
    """
    from converter.errors import VariantBuildError

    chosen = options.get("per_tensor_layers", "auto")
    if chosen != "auto" and not (isinstance(chosen, list | tuple)
                                 and all(isinstance(n, str) for n in chosen)):
        raise VariantBuildError(f"{variant_id}: per_tensor_layers must be \"auto\" or a list of "
                                f"layer names, got {chosen!r}")
    tolerance = options.get("granularity_tolerance", DEFAULT_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance < 0:
        raise VariantBuildError(f"{variant_id}: granularity_tolerance must be a number >= 0, "
                                f"got {tolerance!r}")
    return (chosen if chosen == "auto" else list(chosen)), float(tolerance)
