"""CoreML backend: convert with coremltools and build the ``coreml-*`` variants.

The model is captured once (below) and converted once to an ML Program at
float16 compute precision (minimum deployment target iOS15 / macOS12). That conversion is the
format's preflight and is the ``coreml-fp16`` variant; the compressed kinds run a
``coremltools.optimize.coreml`` pass over it. One builder per kind (the catalogue names it,
:mod:`converter.export.dispatch` calls it), all with the common
:class:`~converter.export.base.Builder` signature:

* ``coreml-fp16``: float16 ``const`` weights; iOS15.
* ``coreml-int8-weights``: int8 ``constexpr_affine_dequantize`` (linear symmetric); iOS16.
  ``granularity="per_block"`` uses ``constexpr_blockwise_shift_scale`` and needs iOS18.
* ``coreml-palettized-4bit``: ``constexpr_lut_to_dense`` with a ``2**nbits``-entry LUT; iOS16.
  ``nbits=3`` needs iOS18.

The compression passes move the program to the iOS16 opset themselves; the options that need
iOS18 ops reconvert the traced module at iOS18.

Inputs and outputs keep the names of the input/output specs and their static shapes. CoreML
feature types are float16/float32/int32 multi-arrays, so every integer tensor (int64 token
ids, int8, uint8, bool) is declared int32 and float tensors stay float32 (float16 when the spec
says so); the runner casts feeds to the declared type.

A ``.mlpackage`` is a directory, so it ships as one deterministic zip
(``<variant id>.mlpackage.zip``, see :mod:`converter.export.coreml_package`); off macOS the
variants are checked statically by :mod:`converter.export.coreml_inspect`.

Capture: ``torch.jit.trace`` (with the op converters of
:mod:`converter.export.coreml_torch_ops` registered), checked against the model on other
calibration samples; else ``torch.export`` decomposed to core ATen. Dict and ``ModelOutput``
returns are flattened in the reference's order. Why: docs/decisions/2026-12-07-coreml-transformers.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import UnsupportedModelError, VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
from converter.export.coreml_inspect import (  # noqa: F401 - inspect_artifact is part of the backend
    LUT_OP,
    QUANT_OPS,
    WEIGHT_THRESHOLD,
    inspect_artifact,
    target_name,
    weight_census,
)
from converter.export.coreml_package import write_package_zip
from converter.specs import TensorSpec
from edgeship.contract.errors import first_line

FORMAT = "coreml"
#: deployment target of the base (float16) conversion.
BASE_TARGET = "iOS15"

_TARGET_ORDER = ("iOS15", "iOS16", "iOS17", "iOS18")
_OP_IN_MESSAGE = re.compile(r"\bop '([^']+)'")
_GRANULARITIES = ("per_tensor", "per_channel", "per_block")
_PALETTE_MODES = ("kmeans", "uniform")
_IOS16_NBITS = (1, 2, 4, 6, 8)
_IOS18_NBITS = (3,)


# --------------------------------------------------------------------------------------------
# Base export


@dataclass
class CoreMLBase:
    """What :func:`export_base` hands to :func:`build_variant`.

    Attributes:
        traced: the captured module, a TorchScript trace or an ExportedProgram (reconverted for
            iOS18-only options).
        model: the float16 ML Program (``coremltools.models.MLModel``) at :data:`BASE_TARGET`.
        target: deployment target of ``model``.
    """

    traced: Any
    model: Any
    target: str
    _by_target: dict[str, Any] = field(default_factory=dict)

    def model_at_least(self, target: str, ctx: ExportContext) -> Any:
        """The float16 program converted for ``target`` or newer (converting once if needed)."""
        if _target_rank(self.target) >= _target_rank(target):
            return self.model
        if target not in self._by_target:
            ctx.progress.say(f"coreml: converting again for minimum target {target}")
            self._by_target[target] = _convert(self.traced, ctx, target)
        return self._by_target[target]


def export_base(ctx: ExportContext) -> CoreMLBase:
    """Capture the model and convert it to a float16 ML Program; the variants start from it.

    Args:
        ctx: the export context (model, input/output specs, example, work dir).

    Returns:
        The captured module and the converted float16 model.

    Raises:
        UnsupportedModelError: neither ``torch.jit.trace`` nor ``torch.export`` gave a program
            coremltools converts; ``op`` names the PyTorch operator it refused when found.
    """
    target = _base_target(ctx)
    try:
        source = _capture(ctx, "trace")
        _check_capture(source, ctx)
        return CoreMLBase(traced=source, model=_convert(source, ctx, target), target=target)
    except Exception as trace_error:
        ctx.progress.say(f"coreml: TorchScript path failed ({first_line(trace_error, 120)}); "
                         "trying torch.export")
        try:
            source = _capture(ctx, "export")
            return CoreMLBase(traced=source, model=_convert(source, ctx, target), target=target)
        except Exception as export_error:
            detail = (f"torch.jit.trace: {first_line(trace_error, 200)}; "
                      f"torch.export: {first_line(export_error, 200)}")
            raise UnsupportedModelError(
                FORMAT, detail, op=failing_op(trace_error) or failing_op(export_error)
            ) from trace_error


def _capture(ctx: ExportContext, how: str) -> Any:
    """``torch.jit.trace`` (``how="trace"``) or ``torch.export`` decomposed to core ATen."""
    import torch

    from converter.export.flat_outputs import FlatOutputs

    ctx.progress.say(f"coreml: capturing with torch.{'jit.trace' if how == 'trace' else 'export'}")
    module = FlatOutputs(ctx.model).eval()
    with torch.no_grad():
        if how == "trace":
            return torch.jit.trace(module, ctx.example_tensors())
        # The core ATen table turns ops coremltools 9.0 has no converter for (``new_ones``,
        # ``__and__`` on masks) into ones it has (``full``, ``bitwise_and``).
        return torch.export.export(module, ctx.example_tensors()).run_decompositions()


def _check_capture(traced: Any, ctx: ExportContext, samples: int = 2) -> None:
    """The trace reproduces the model on calibration samples other than the one traced.

    Off macOS nothing runs the converted program, so this is the check that tracing did not
    freeze data-dependent control flow (a Python ``if`` on a tensor) to the example's branch.

    Raises:
        ValueError: the trace's outputs differ from the model's on some sample.
    """
    import torch

    from converter.reference import run_model

    checked = 0
    for sample in ctx.calibration():
        if checked == samples:
            break
        if all(np.array_equal(sample[s.name], ctx.example[s.name]) for s in ctx.inputs):
            continue
        args = tuple(torch.from_numpy(np.ascontiguousarray(sample[s.name])) for s in ctx.inputs)
        with torch.no_grad():
            got = [t.float().numpy() for t in traced(*args)]
        _, want = run_model(ctx.model, ctx.inputs, sample)
        for index, (g, w) in enumerate(zip(got, want, strict=True)):
            w = w.float().numpy()
            scale = max(1.0, float(np.abs(w).max(initial=0.0)))
            if g.shape != w.shape or not np.allclose(g, w, rtol=1e-3, atol=1e-4 * scale):
                raise ValueError(f"the trace differs from the model on output {index} of another "
                                 "sample (control flow frozen to the example)")
        checked += 1


def _base_target(ctx: ExportContext) -> str:
    """iOS15, or iOS16 when a tensor is float16 (float16 features need iOS16)."""
    float16 = any(s.dtype == "float16" for s in [*ctx.inputs, *ctx.outputs])
    return "iOS16" if float16 else BASE_TARGET


def _convert(traced: Any, ctx: ExportContext, target: str) -> Any:
    """``ct.convert`` the traced module to a float16 ML Program for ``target``."""
    import coremltools as ct

    from converter.export import coreml_torch_ops

    coreml_torch_ops.register()
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name=s.name, shape=s.shape, dtype=feature_dtype(s)) for s in ctx.inputs],
        outputs=[ct.TensorType(name=s.name, dtype=feature_dtype(s)) for s in ctx.outputs],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16,
        minimum_deployment_target=getattr(ct.target, target),
        skip_model_load=True,
    )


def feature_dtype(spec: TensorSpec) -> Any:
    """The numpy dtype a tensor has as a CoreML feature: int32, float16 or float32."""
    import numpy as np

    if spec.is_integer:
        return np.int32
    return np.float16 if spec.dtype == "float16" else np.float32


def failing_op(exc: BaseException) -> str | None:
    """The PyTorch op coremltools failed on: from the message, else from the traceback.

    coremltools says ``PyTorch convert function for op 'lgamma' not implemented.`` for ops it
    has no converter for; when an op's converter itself raises, the op is read from the
    ``node`` being converted in ``convert_single_node``'s frame.
    """
    for err in _chain(exc):
        found = _OP_IN_MESSAGE.search(str(err))
        if found:
            return found.group(1)
    for err in _chain(exc):
        tb = err.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code.co_name == "convert_single_node":
                kind = getattr(frame.f_locals.get("node"), "kind", None)
                if isinstance(kind, str):
                    return kind
            tb = tb.tb_next
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _target_rank(target: str) -> int:
    return _TARGET_ORDER.index(target)


# --------------------------------------------------------------------------------------------
# Variants


@dataclass(frozen=True)
class _Plan:
    """How one variant is made: the compression steps, precision and minimum target."""

    precision: str
    compression: list[str]
    target: str
    compress: Callable[[Any], Any] | None = None


def build_fp16(request: VariantRequest, base: CoreMLBase, ctx: ExportContext, out: Path) -> BuiltVariant:
    """``coreml-fp16``: the base conversion itself (float16 ``const`` weights, iOS15)."""
    return _build(request, _Plan(request.kind.precision, ["fp16:compute"], BASE_TARGET), base, ctx, out)


def build_int8_weights(
    request: VariantRequest, base: CoreMLBase, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """``coreml-int8-weights``: linear symmetric int8 weights (option ``granularity``)."""
    return _build(request, _int8_plan(request), base, ctx, out)


def build_palettized(
    request: VariantRequest, base: CoreMLBase, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """``coreml-palettized-4bit``: ``2**nbits``-entry LUT weights (options ``nbits``, ``mode``)."""
    return _build(request, _palette_plan(request), base, ctx, out)


def _build(
    request: VariantRequest, plan: _Plan, base: CoreMLBase, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """Write ``plan``'s model as the zipped ``.mlpackage`` ``out``.

    Returns:
        The built variant; ``details`` holds the deployment target and weight op counts.

    Raises:
        VariantBuildError: coremltools failed on this variant.
        NotApplicable: a compressed kind found no weight large enough to compress.
    """
    try:
        source = base.model_at_least(plan.target, ctx)
        model = source
        if plan.compress is not None:
            ctx.progress.say(f"coreml: {request.id}: {plan.compression[-1]}")
            model = plan.compress(source)
    except Exception as exc:
        raise VariantBuildError(f"{request.id}: coremltools failed: {first_line(exc)}") from exc
    census = weight_census(model.get_spec())
    if plan.compress is not None and not (census.quantized or census.palettized):
        raise NotApplicable(f"no weight tensor has more than {WEIGHT_THRESHOLD} elements to compress")
    try:
        write_package_zip(model, out, ctx.work_dir / f"_coreml_{request.id}")
    except Exception as exc:
        raise VariantBuildError(f"{request.id}: writing the package failed: {first_line(exc)}") from exc
    details = {
        "minimum_deployment_target": target_name(model.get_spec().specificationVersion),
        "weight_ops": census.op_counts(),
    }
    return BuiltVariant(out, plan.precision, plan.compression, details=details)


def _int8_plan(request: VariantRequest) -> _Plan:
    granularity = str(request.options.get("granularity", "per_channel"))
    if granularity not in _GRANULARITIES:
        raise VariantBuildError(
            f"{request.id}: granularity {granularity!r} is not one of {', '.join(_GRANULARITIES)}"
        )

    def compress(model: Any) -> Any:
        import coremltools.optimize.coreml as cto

        op_config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype="int8",
            granularity=granularity,
            weight_threshold=WEIGHT_THRESHOLD,
        )
        return cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=op_config))

    target = "iOS18" if granularity == "per_block" else "iOS16"
    step = f"quant:weights:linear-int8:{granularity.replace('_', '-')}"
    return _Plan(request.kind.precision, ["fp16:compute", step], target, compress)


def _palette_plan(request: VariantRequest) -> _Plan:
    nbits = request.options.get("nbits", 4)
    mode = str(request.options.get("mode", "kmeans"))
    if nbits not in _IOS16_NBITS + _IOS18_NBITS:
        raise VariantBuildError(f"{request.id}: nbits {nbits!r} is not one of 1, 2, 3, 4, 6, 8")
    if mode not in _PALETTE_MODES:
        raise VariantBuildError(f"{request.id}: mode {mode!r} is not one of {', '.join(_PALETTE_MODES)}")

    # one LUT per group of output channels (group_size 1: per channel, exact for ternary weights)
    granularity = str(request.options.get("granularity", "per_tensor"))
    group_size = int(request.options.get("group_size", 0))
    if granularity not in ("per_tensor", "per_grouped_channel"):
        raise VariantBuildError(f"{request.id}: granularity {granularity!r} is not per_tensor or "
                                "per_grouped_channel")
    grouped = {"granularity": granularity, "group_size": group_size} if group_size else {}

    def compress(model: Any) -> Any:
        import coremltools.optimize.coreml as cto

        op_config = cto.OpPalettizerConfig(mode=mode, nbits=nbits, weight_threshold=WEIGHT_THRESHOLD,
                                           **grouped)
        return cto.palettize_weights(model, cto.OptimizationConfig(global_config=op_config))

    target = "iOS18" if nbits in _IOS18_NBITS or grouped else "iOS16"
    precision = f"palettized-{nbits}bit"
    step = f"palettize:{mode}:{nbits}bit" + (f":group{group_size}" if grouped else "")
    return _Plan(precision, ["fp16:compute", step], target, compress)

