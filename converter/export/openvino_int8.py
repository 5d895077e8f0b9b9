"""``openvino-int8``: NNCF post-training quantization of the OpenVINO base model.

``nncf.quantize`` inserts FakeQuantize ops (int8 weights per channel, int8 activations with
ranges from the calibration samples); the CPU plugin runs them as int8 kernels. Options:
``calibration`` (activation range estimator: ``default`` is NNCF's, ``minmax``,
``mean-quantile``), ``per_channel``, ``preset`` (``performance``: symmetric activations,
``mixed``: asymmetric), ``float_layers`` (op names NNCF leaves in float, its ignored scope).

With ``accuracy_control`` the build is ``nncf.quantize_with_accuracy_control``: NNCF quantizes,
ranks the quantized ops by how much they cost the validation metric and reverts the worst to
float until the drop is at most ``max_drop``. The metric is the converter's fidelity gate
measured per validation sample against the float32 model: top-1 agreement (``control_metric
= "top1"``) or output cosine (``"cosine"``). The tuner sets these options and puts its
validation samples in ``ctx.cache[VALIDATION_KEY]`` (:mod:`converter.tuning.openvino_accuracy`);
without them the calibration samples validate.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, Sample, VariantRequest
from converter.export.openvino import OpenVINOBase, input_feeds, save_variant
from edgeship.contract.errors import first_line

#: activation range estimators, by option value (``default``: NNCF's own choice).
CALIBRATIONS = ("default", "minmax", "mean-quantile")
CONTROL_METRICS = ("top1", "cosine")
PRESETS = ("performance", "mixed")
#: where the tuner leaves the validation samples for accuracy control, in ``ctx.cache``.
VALIDATION_KEY = ("openvino", "accuracy-control-samples")


def build_int8(request: VariantRequest, base: OpenVINOBase, ctx: ExportContext, out: Path) -> BuiltVariant:
    """Quantize ``base`` with NNCF (accuracy-controlled when the options say so) and save it."""
    import nncf

    options = request.options
    calibration = str(options.get("calibration", "default"))
    if calibration not in CALIBRATIONS:
        raise VariantBuildError(f"{request.id}: calibration {calibration!r} is not one of "
                                f"{', '.join(CALIBRATIONS)}")
    preset = str(options.get("preset", "performance"))
    if preset not in PRESETS:
        raise VariantBuildError(f"{request.id}: preset {preset!r} is not one of {', '.join(PRESETS)}")
    per_channel = bool(options.get("per_channel", True))
    float_layers = [str(n) for n in options.get("float_layers") or ()]
    model = base.model
    calib = [input_feeds(model, s) for s in ctx.calibration()]
    kwargs: dict[str, Any] = {
        "subset_size": max(1, len(calib)),
        "preset": nncf.QuantizationPreset(preset),
        "advanced_parameters": _advanced(calibration, per_channel),
    }
    if float_layers:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=float_layers, validate=False)
    controlled = bool(options.get("accuracy_control", False))
    ctx.progress.say(f"{request.id}: quantizing with NNCF ({calibration}"
                     f"{', accuracy control' if controlled else ''})")
    try:
        with _quiet_nncf():
            if controlled:
                quantized, control = _quantize_with_control(model, calib, ctx, options, kwargs)
            else:
                quantized, control = nncf.quantize(model, nncf.Dataset(calib), **kwargs), None
    except Exception as err:
        raise VariantBuildError(f"{request.id}: NNCF: {first_line(err, 200, innermost=True)}") from err
    save_variant(quantized, out, compress_to_fp16=False)
    granularity = "per-channel" if per_channel else "per-tensor"
    steps = [f"quant:nncf:{calibration}:{granularity}"]
    if float_layers:
        steps.append(f"keep-float:{len(float_layers)}-layers")
    details: dict[str, Any] = {
        "frontend": base.frontend, "calibration_samples": len(calib),
        "fake_quantize_ops": _count_ops(quantized, "FakeQuantize"),
        "preset": kwargs["preset"].value,
    }
    if control is not None:
        steps.append("nncf:accuracy-control")
        details["accuracy_control"] = control
    return BuiltVariant(path=out, precision=request.kind.precision, compression=steps, details=details)


def _advanced(calibration: str, per_channel: bool) -> Any:
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    params: dict[str, Any] = {}
    if calibration == "minmax":
        params["activations_range_estimator_params"] = RangeEstimatorParametersSet.MINMAX
    elif calibration == "mean-quantile":
        params["activations_range_estimator_params"] = RangeEstimatorParametersSet.MEAN_QUANTILE
    if not per_channel:
        params["weights_quantization_params"] = QuantizationParameters(per_channel=False)
    return AdvancedQuantizationParameters(**params)


# --------------------------------------------------------------------------- accuracy control


def _quantize_with_control(model: Any, calib: list[list[np.ndarray]], ctx: ExportContext,
                           options: dict[str, Any], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``nncf.quantize_with_accuracy_control`` with the converter's fidelity metric."""
    import nncf
    import openvino as ov

    metric = str(options.get("control_metric", "top1"))
    if metric not in CONTROL_METRICS:
        raise VariantBuildError(f"control_metric {metric!r} is not one of {', '.join(CONTROL_METRICS)}")
    samples: list[Sample] = list(ctx.cache.get(VALIDATION_KEY) or ctx.calibration())
    feeds = [input_feeds(model, s) for s in samples]
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    items = [(f, _outputs(compiled, f)) for f in feeds]  # reference: the float32 model itself
    max_drop = float(options.get("max_drop", 0.01))

    def validate(compiled_model: Any, data: Iterable[tuple[list[np.ndarray], list[np.ndarray]]]
                 ) -> tuple[float, list[float]]:
        values = [item_fidelity(_outputs(compiled_model, f), ref, metric) for f, ref in data]
        return float(np.mean(values)) if values else 0.0, values

    settings = {**kwargs, "advanced_quantization_parameters": kwargs["advanced_parameters"]}
    del settings["advanced_parameters"]  # the same settings under this function's name
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(calib), nncf.Dataset(items), validate, max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE, **settings,
    )
    record = {"metric": metric, "max_drop": max_drop, "validation_samples": len(items),
              "drop": round(1.0 - validate(ov.Core().compile_model(
                  quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), items)[0], 6)}
    return quantized, record


def item_fidelity(outputs: list[np.ndarray], reference: list[np.ndarray], metric: str) -> float:
    """One validation sample's fidelity to the float32 model (1.0 = identical).

    ``top1``: share of rows whose arg-max of the first output agrees; ``cosine``: mean over rows
    of the cosine between all outputs flattened, the reference's and the quantized model's.
    """
    if metric == "top1":
        got, want = outputs[0].reshape(len(outputs[0]), -1), reference[0].reshape(len(reference[0]), -1)
        return float(np.mean(got.argmax(axis=1) == want.argmax(axis=1)))
    rows = len(reference[0])
    got = np.concatenate([o.reshape(rows, -1) for o in outputs], axis=1).astype(np.float64)
    want = np.concatenate([r.reshape(rows, -1) for r in reference], axis=1).astype(np.float64)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    cosine = np.where(norms > 0, (got * want).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    return float(np.mean(cosine))


def _outputs(compiled: Any, feeds: list[np.ndarray]) -> list[np.ndarray]:
    result = compiled(feeds)
    return [np.asarray(result[port], dtype=np.float32) for port in compiled.outputs]


def _count_ops(model: Any, op_type: str) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() == op_type)


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF's progress bars and info logging stay off the console."""
    logger = logging.getLogger("nncf")
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
