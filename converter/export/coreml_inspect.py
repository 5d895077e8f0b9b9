"""Static inspection of a CoreML package: what can be checked without running a prediction.

Off macOS no runtime executes CoreML, so the converter checks the spec instead: the zip
layout, weight blobs, inputs and outputs against the specs, and that the weights are stored
in the precision the variant claims. Such variants ship as ``not_validated``, never ``passed``.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.export.base import BuiltVariant, ExportContext
from converter.export.coreml_package import unzip_package
from converter.specs import TensorSpec
from edgeship.contract.errors import first_line

#: a "weight" is a float const of rank >= 2 with more elements than this; it is coremltools'
#: default ``weight_threshold`` (smaller tensors are left uncompressed).
WEIGHT_THRESHOLD = 2048
QUANT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
LUT_OP = "constexpr_lut_to_dense"
_INT8_TYPES = ("INT8", "UINT8")
_FLOAT_TYPES = ("FLOAT16", "FLOAT32", "FLOAT64")


@dataclass
class WeightCensus:
    """Weights of an ML Program by storage: plain consts and compressed (constexpr) ops.

    Attributes:
        dense: ``(name, dtype)`` of uncompressed weights (float consts of rank >= 2 with more
            than :data:`WEIGHT_THRESHOLD` elements that no constexpr op consumes).
        quantized: dtype of the quantized data of each linear-quantization op.
        palettized: LUT bit width of each ``constexpr_lut_to_dense`` op.
        ops: count of every op type in the program.
    """

    dense: list[tuple[str, str]] = field(default_factory=list)
    quantized: list[str] = field(default_factory=list)
    palettized: list[int] = field(default_factory=list)
    ops: Counter = field(default_factory=Counter)

    def op_counts(self) -> dict[str, int]:
        """Weight storage counts for the report."""
        dense = Counter(dtype for _, dtype in self.dense)
        counts = {f"const_{d.lower()}": n for d, n in sorted(dense.items())}
        counts.update({op: self.ops[op] for op in (*QUANT_OPS, LUT_OP) if self.ops[op]})
        return counts


def weight_census(spec: Any) -> WeightCensus:
    """Count how an ML Program spec stores its weights (no weights are read)."""
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"not an ML Program (spec type {spec.WhichOneof('Type')!r})")
    ops = list(_walk_ops(spec.mlProgram))
    types = {out.name: out.type for op in ops for out in op.outputs}
    fed_to_constexpr = {
        binding.name
        for op in ops
        if op.type.startswith("constexpr_")
        for arg in op.inputs.values()
        for binding in arg.arguments
        if binding.name
    }
    census = WeightCensus(ops=Counter(op.type for op in ops))
    for op in ops:
        if op.type == "const":
            _count_const(op, fed_to_constexpr, census)
        elif op.type in QUANT_OPS:
            data = _param_type(op, "quantized_data" if "quantized_data" in op.attributes else "data", types)
            census.quantized.append(_dtype_name(data))
        elif op.type == LUT_OP:
            census.palettized.append(_lut_bits(_param_type(op, "lut", types)))
    return census


def _walk_ops(program: Any) -> Iterator[Any]:
    """Every operation of every function of the program, nested blocks included."""

    def walk(block: Any) -> Iterator[Any]:
        for op in block.operations:
            yield op
            for inner in op.blocks:
                yield from walk(inner)

    for function in program.functions.values():
        yield from walk(function.block_specializations[function.opset])


def _count_const(op: Any, fed_to_constexpr: set[str], census: WeightCensus) -> None:
    out = op.outputs[0]
    tensor = out.type.tensorType if out.type.HasField("tensorType") else None
    if tensor is None or out.name in fed_to_constexpr:
        return
    dtype = _dtype_name(out.type)
    shape = _shape(out.type)
    if dtype in _FLOAT_TYPES and len(shape) >= 2 and math.prod(shape) > WEIGHT_THRESHOLD:
        census.dense.append((out.name, dtype))


def _param_type(op: Any, name: str, types: dict[str, Any]) -> Any:
    """The value type of an op parameter given as an attribute, a bound name or a value."""
    if name in op.attributes:
        return op.attributes[name].type
    arg = op.inputs.get(name)
    if arg is None or not arg.arguments:
        return None
    binding = arg.arguments[0]
    return types.get(binding.name) if binding.name else binding.value.type


def _dtype_name(value_type: Any) -> str:
    from coremltools.proto import MIL_pb2

    if value_type is None or not value_type.HasField("tensorType"):
        return "UNKNOWN"
    return MIL_pb2.DataType.Name(value_type.tensorType.dataType)


def _shape(value_type: Any) -> tuple[int, ...]:
    dims = value_type.tensorType.dimensions
    return tuple(d.constant.size if d.HasField("constant") else -1 for d in dims)


def _lut_bits(value_type: Any) -> int:
    """Bits per index of a LUT: ``[2**n]`` (iOS16) or ``[..., 2**n, vector_size]`` (iOS18)."""
    if value_type is None or not value_type.HasField("tensorType"):
        return -1
    shape = _shape(value_type)
    entries = shape[0] if len(shape) == 1 else shape[-2]
    return int(math.log2(entries)) if entries > 0 else -1


def inspect_artifact(built: BuiltVariant, ctx: ExportContext) -> list[str]:
    """Check a zipped package without running it (CoreML cannot predict off macOS).

    Checks that the zip holds a loadable ML Program package, that inputs and outputs match
    ``ctx.inputs`` / ``ctx.outputs`` by name, order, shape and feature type, that every weight
    blob the spec references lies inside the weights file, and that weights are stored as
    ``built.precision`` claims (see :func:`check_weights`). Adds ``weight_ops`` and
    ``minimum_deployment_target`` to ``built.details``.

    Returns:
        Problems found, one line each; empty when the package is as claimed.
    """
    with tempfile.TemporaryDirectory(prefix="edgeship-coreml-") as tmp:
        try:
            package = unzip_package(built.path, Path(tmp))
            spec = _load_spec(package)
        except Exception as exc:
            return [f"{built.path.name}: not a loadable CoreML package: {first_line(exc)}"]
        problems = _check_blobs(spec, package)
    if spec.WhichOneof("Type") != "mlProgram":
        return [*problems, f"spec is {spec.WhichOneof('Type')!r}, not an ML Program"]
    problems += _check_features("input", list(spec.description.input), ctx.inputs)
    problems += _check_features("output", list(spec.description.output), ctx.outputs)
    census = weight_census(spec)
    problems += check_weights(built.precision, census)
    built.details["weight_ops"] = census.op_counts()
    built.details["minimum_deployment_target"] = target_name(spec.specificationVersion)
    return problems


def _load_spec(package: Path) -> Any:
    import coremltools as ct

    return ct.utils.load_spec(str(package))


def _check_blobs(spec: Any, package: Path) -> list[str]:
    """Every ``@model_path/...`` blob reference points inside an existing weights file."""
    if spec.WhichOneof("Type") != "mlProgram":
        return []
    root = package / "Data" / "com.apple.CoreML"
    sizes: dict[str, int] = {}
    problems: list[str] = []
    for op in _walk_ops(spec.mlProgram):
        for value in op.attributes.values():
            if not value.HasField("blobFileValue"):
                continue
            blob = value.blobFileValue
            name = blob.fileName
            if name not in sizes:
                file = root / name.removeprefix("@model_path/")
                sizes[name] = file.stat().st_size if file.is_file() else -1
            if sizes[name] < 0:
                problems.append(f"weights file {name} is missing from the package")
                sizes[name] = 0
            elif blob.offset >= sizes[name]:
                problems.append(f"op {op.outputs[0].name}: blob offset {blob.offset} is past {name}")
    return problems


def _check_features(role: str, features: list[Any], specs: list[TensorSpec]) -> list[str]:
    """Names (in order), static shapes and feature types against the expected specs."""
    names = [f.name for f in features]
    expected = [s.name for s in specs]
    if names != expected:
        return [f"{role}s are {names}, expected {expected}"]
    problems = []
    for feature, spec in zip(features, specs, strict=True):
        if feature.type.WhichOneof("Type") != "multiArrayType":
            problems.append(f"{role} {spec.name!r} is a {feature.type.WhichOneof('Type')}, not a multi-array")
            continue
        array = feature.type.multiArrayType
        shape = tuple(int(d) for d in array.shape)
        if shape != tuple(spec.shape):
            problems.append(f"{role} {spec.name!r} has shape {list(shape)}, expected {list(spec.shape)}")
        dtype = _array_dtype_name(array.dataType)
        want = _array_dtype_name_for(spec)
        if dtype != want:
            problems.append(f"{role} {spec.name!r} is {dtype}, expected {want}")
    return problems


def _array_dtype_name(code: int) -> str:
    from coremltools.proto import FeatureTypes_pb2

    return FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(code)


def _array_dtype_name_for(spec: TensorSpec) -> str:
    if spec.is_integer:
        return "INT32"
    return "FLOAT16" if spec.dtype == "float16" else "FLOAT32"


def check_weights(precision: str, census: WeightCensus) -> list[str]:
    """Problems with how weights are stored, given the manifest precision claimed.

    * ``fp16`` / ``fp32``: every weight is a dense const of that type; no constexpr ops.
    * ``int8-weights``: at least one linear-quantization op, all with int8/uint8 data; no LUT
      ops; no weight left dense.
    * ``palettized-<n>bit``: at least one ``constexpr_lut_to_dense``, all with a ``2**n`` LUT;
      no int8 quantization ops; no weight left dense.
    """
    palette = re.fullmatch(r"palettized-(\d+)bit", precision)
    if precision in ("fp16", "fp32"):
        return _check_dense(precision, census)
    if precision == "int8-weights":
        return _check_int8(census)
    if palette:
        return _check_palette(int(palette.group(1)), census)
    return [f"precision {precision!r} is not one a CoreML variant ships in"]


def _check_dense(precision: str, census: WeightCensus) -> list[str]:
    want = "FLOAT16" if precision == "fp16" else "FLOAT32"
    problems = []
    compressed = {op: census.ops[op] for op in (*QUANT_OPS, LUT_OP) if census.ops[op]}
    if compressed:
        problems.append(f"claims {precision} but weights are compressed: {compressed}")
    other = [(n, d) for n, d in census.dense if d != want]
    if other:
        problems.append(
            f"claims {precision} but {len(other)} weight(s) are {other[0][1]} (first: {other[0][0]})"
        )
    return problems


def _check_int8(census: WeightCensus) -> list[str]:
    problems = _uncompressed(census, "int8-weights")
    if not census.quantized:
        problems.insert(0, "claims int8-weights but has no linear-quantization op")
    bad = sorted({d for d in census.quantized if d not in _INT8_TYPES})
    if bad:
        problems.append(f"claims int8-weights but quantized data is {', '.join(bad)}")
    if census.palettized:
        problems.append(f"claims int8-weights but {len(census.palettized)} weight(s) are palettized")
    return problems


def _check_palette(nbits: int, census: WeightCensus) -> list[str]:
    claim = f"palettized-{nbits}bit"
    problems = _uncompressed(census, claim)
    if not census.palettized:
        problems.insert(0, f"claims {claim} but has no {LUT_OP} op")
    bad = sorted({b for b in census.palettized if b != nbits})
    if bad:
        problems.append(f"claims {claim} but LUTs are {', '.join(f'{b}-bit' for b in bad)}")
    int8 = [d for d in census.quantized if d in _INT8_TYPES]
    if int8:
        problems.append(f"claims {claim} but {len(int8)} weight(s) are linear-quantized")
    return problems


def _uncompressed(census: WeightCensus, claim: str) -> list[str]:
    if not census.dense:
        return []
    name, dtype = census.dense[0]
    return [f"claims {claim} but {len(census.dense)} weight(s) are dense {dtype} (first: {name})"]


def target_name(spec_version: int) -> str:
    """``iOS16`` etc. for a spec version (the raw number when coremltools does not know it)."""
    import coremltools as ct

    try:
        return ct.target(spec_version).name
    except ValueError:
        return f"specificationVersion {spec_version}"
