"""Per-layer weight granularity of the static int8 kinds, chosen by measured sensitivity, and
their compact storage, on the real toolchains: the digits CNN with outlier channels keeps the
one layer per tensor would ruin per channel; compacting an ONNX file changes neither its
outputs nor onnxruntime's fused int8 kernels; a conversion records the choice and ships
smaller files within the accuracy gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from converter.errors import VariantBuildError
from converter.progress import Progress
from converter.tuning.granularity import granularity_options


@pytest.mark.parametrize("options", [{"per_tensor_layers": "yes"}, {"per_tensor_layers": [1]},
                                     {"granularity_tolerance": -1}, {"granularity_tolerance": "x"}])
def test_bad_granularity_options_are_named(options):
    with pytest.raises(VariantBuildError, match=next(iter(options))):
        granularity_options(options, "onnx-int8-static")


def test_granularity_options_defaults():
    assert granularity_options({}, "v") == ("auto", 0.25)
    assert granularity_options({"per_tensor_layers": ("a",), "granularity_tolerance": 1}, "v") == (["a"], 1.0)


def _context(model, directory: Path, work: Path):
    from converter.data import load_samples
    from converter.export.base import ExportContext
    from converter.reference import fit_check
    from converter.specs import parse_input_spec

    specs = [parse_input_spec("image:1x1x8x8:float32")]
    calib = load_samples(directory / "calib.npz", specs, "calibration")
    work.mkdir(parents=True, exist_ok=True)
    return ExportContext(model=model, inputs=specs, outputs=fit_check(model, specs, calib.sample(0)),
                         example=calib.sample(0), calibration=lambda: iter(calib),
                         calibration_count=len(calib), work_dir=work)


def _digits(digits_dir: Path, outliers: bool):
    import torch

    from examples.digits import DigitsCNN
    from examples.outlier import with_outlier_channels

    model = DigitsCNN()
    model.load_state_dict(torch.load(digits_dir / "weights.pt", weights_only=True))
    return with_outlier_channels(model) if outliers else model.eval()


@pytest.mark.slow
def test_the_layer_per_tensor_ruins_stays_per_channel(digits_dir, tmp_path):
    """features.3's output channels 3 and 11 are 1000x the others (examples/outlier.py): per
    tensor, its other channels round to zero. The choice measures that and keeps it per
    channel; the layers where per tensor changes nothing measurable go per tensor."""
    from converter.export.onnx import export_base
    from converter.export.onnx_static import static_source
    from converter.tuning.granularity import choose_granularity

    ctx = _context(_digits(digits_dir, outliers=True), digits_dir, tmp_path)
    source = static_source(export_base(ctx), ctx)
    samples = [s for _, s in zip(range(16), ctx.calibration(), strict=False)]
    choice = choose_granularity(source, ["image"], samples, reduce_range=True, tolerance=0.25)
    rows = {row["module"]: row for row in choice.rows}
    assert set(rows) == {"features.0", "features.3", "features.7", "head.1", "head.3"}
    assert rows["features.3"]["per_tensor"] is False
    assert rows["features.3"]["score"] > 10 * choice.score_per_channel  # measured, not assumed
    assert choice.score_per_tensor > 10 * choice.score_per_channel
    assert {m for m, row in rows.items() if row["per_tensor"]} >= {"features.0", "head.3"}
    assert choice.score_chosen <= max(1.25 * choice.score_per_channel, 2e-4)
    assert set(choice.per_tensor) == {row["weight"] for row in choice.rows if row["per_tensor"]}


@pytest.mark.slow
def test_compact_onnx_keeps_outputs_and_fused_int8_kernels(digits_dir, tmp_path):
    import onnx
    import onnxruntime as ort

    from converter.catalogue import VARIANT_KINDS
    from converter.export.base import VariantRequest
    from converter.export.dispatch import build_variant
    from converter.export.onnx import export_base
    from converter.tuning.onnx_layers import run_onnx

    ctx = _context(_digits(digits_dir, outliers=False), digits_dir, tmp_path)
    base = export_base(ctx)
    kind = VARIANT_KINDS["onnx-int8-static"]

    def build(variant_id: str, compact: bool) -> Path:
        options = {**kind.options, "per_tensor_layers": [], "compact": compact}
        return build_variant(VariantRequest(variant_id, kind, options), base, ctx).path

    plain, compact = build("plain", False), build("compact", True)
    assert compact.stat().st_size < plain.stat().st_size - 1000
    samples = [s for _, s in zip(range(32), ctx.calibration(), strict=False)]
    a, b = run_onnx(plain, samples, ["image"])[0], run_onnx(compact, samples, ["image"])[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    graph = onnx.load(str(compact)).graph
    readers = {i: n.op_type for n in graph.node for i in n.input}
    constants = {t.name for t in graph.initializer}
    conv_dq = [n for n in graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in constants and readers.get(n.output[0]) == "Conv"]
    # weights and biases are symmetric: no zero point stored
    assert conv_dq and all(len(n.input) == 2 for n in conv_dq)

    def fused(path: Path) -> dict[str, int]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
        return {op: ops.count(op) for op in ("QLinearConv", "QGemm", "Conv", "Gemm")}

    assert fused(compact) == fused(plain) and fused(compact)["QLinearConv"] == len(conv_dq) // 2


@pytest.mark.slow
def test_conversion_records_the_choice_and_ships_smaller_int8(digits_dir, signing_key, tmp_path):
    pytest.importorskip("ai_edge_quantizer")
    from converter import run_conversion

    recipe = tmp_path / "recipe.toml"
    recipe.write_text("""
[tuning]
enabled = false
[[variants]]
kind = "onnx-int8-static"
[[variants]]
kind = "onnx-int8-static"
id = "onnx-int8-per-channel"
per_tensor_layers = []
compact = false
[[variants]]
kind = "tflite-int8"
[[variants]]
kind = "tflite-int8"
id = "tflite-int8-per-channel"
per_tensor_layers = []
compact = false
""")
    conversion = run_conversion(
        digits_dir / "digits_cnn.pt", ["image:1x1x8x8:float32"], digits_dir / "eval.npz",
        tmp_path / "release", calib_data=digits_dir / "calib.npz", recipe=recipe,
        model_name="digits", signing_key=signing_key, progress=Progress(quiet=True),
    )
    results = {r.id: r for r in conversion.results}
    report = {v["id"]: v for v in json.loads((tmp_path / "release" / "report.json").read_text())["variants"]}
    for auto, fixed in (("onnx-int8-static", "onnx-int8-per-channel"),
                        ("tflite-int8", "tflite-int8-per-channel")):
        chosen = report[auto]["details"]["weight_granularity"]
        # the choice is measured and recorded, layer by layer
        assert chosen["layers"] == 5 and chosen["per_tensor_layers"] >= 1
        assert len(chosen["per_tensor"]) + len(chosen["per_channel"]) == chosen["layers"]
        assert chosen["score_chosen"] <= max(1.25 * chosen["score_per_channel"], 2e-4)
        assert any(step.endswith(":per-layer") for step in results[auto].compression)
        assert report[fixed]["details"]["weight_granularity"] is None
        # smaller than every weight per channel, as accurate as the gate asks, with margin
        assert results[auto].size_bytes < 0.97 * results[fixed].size_bytes
        assert results[auto].status == "passed", results[auto].reason
        assert results[auto].metrics["accuracy_drop"] <= 0.003


@pytest.mark.slow
def test_dynamic_tflite_takes_the_same_choice_where_its_kernels_can(digits_dir, tmp_path):
    """``tflite-int8-dynamic`` reuses the static kinds' measured choice (one measurement per
    conversion): the layer per tensor would ruin stays per channel, only ops whose hybrid
    kernels take per-tensor weights go per tensor, and the file is smaller than all per channel
    with the same outputs within int8 noise."""
    pytest.importorskip("ai_edge_quantizer")
    from converter.catalogue import VARIANT_KINDS
    from converter.export.base import VariantRequest
    from converter.export.dispatch import build_variant
    from converter.export.onnx import export_base as onnx_base
    from converter.export.tflite import export_base
    from converter.export.tflite_quant import DYNAMIC_PER_TENSOR_OPS
    from converter.tuning.tflite_layers import run_tflite

    ctx = _context(_digits(digits_dir, outliers=True), digits_dir, tmp_path)
    onnx_base(ctx)
    base = export_base(ctx)
    kind = VARIANT_KINDS["tflite-int8-dynamic"]

    def build(variant_id: str, **options) -> object:
        return build_variant(VariantRequest(variant_id, kind, {**kind.options, **options}), base, ctx)

    auto, per_channel = build("auto"), build("per-channel", per_tensor_layers=[], compact=False)
    chosen = auto.details["weight_granularity"]
    assert "features.3" in chosen["per_channel"] and chosen["tflite_ops_per_tensor"] >= 1
    assert auto.compression[0] == "quant:dynamic:int8:per-layer"
    assert per_channel.details["weight_granularity"] is None
    assert per_channel.compression[0] == "quant:dynamic:int8:per-channel"
    # the same measurement, cached: the static kind's choice is this one
    assert ("weight-granularity-onnx-source",) in ctx.cache
    # what the file stores: one scale for exactly the chosen ops, all of kinds that take it
    single = [op for op, scales in _weight_scales(auto.path) if scales == 1]
    assert len(single) == chosen["tflite_ops_per_tensor"] and set(single) <= DYNAMIC_PER_TENSOR_OPS
    assert all(scales > 1 for _, scales in _weight_scales(per_channel.path))
    assert auto.path.stat().st_size < 0.97 * per_channel.path.stat().st_size
    samples = [s for _, s in zip(range(32), ctx.calibration(), strict=False)]
    names = [o.name for o in ctx.outputs]
    float_out = run_tflite(base, samples, ["image"], names)[0]
    a, b = (run_tflite(p, samples, ["image"], names)[0] for p in (auto.path, per_channel.path))
    agree = [(x.argmax(-1) == float_out.argmax(-1)).mean() for x in (a, b)]
    assert agree[0] >= agree[1] - 1 / 16  # at most 2 of 32 samples apart
    error = [np.abs(x - float_out).mean() for x in (a, b)]
    assert error[0] <= 2 * error[1] + 1e-3 * np.abs(float_out).mean()


@pytest.mark.slow
def test_dynamic_tflite_skips_the_measurement_where_little_is_to_save(digits_dir, tmp_path):
    pytest.importorskip("ai_edge_quantizer")
    from converter.catalogue import VARIANT_KINDS
    from converter.export.base import VariantRequest
    from converter.export.dispatch import build_variant
    from converter.export.tflite import export_base
    from converter.export.tflite_granularity import per_channel_share
    from converter.export.tflite_quant import DYNAMIC_PER_TENSOR_OPS

    ctx = _context(_digits(digits_dir, outliers=False), digits_dir, tmp_path)
    base = export_base(ctx)
    kind = VARIANT_KINDS["tflite-int8-dynamic"]
    share = per_channel_share(base, DYNAMIC_PER_TENSOR_OPS)
    assert 0 < share < 1
    request = VariantRequest("v", kind, {**kind.options, "granularity_min_share": min(1.0, 2 * share)})
    built = build_variant(request, base, ctx)
    assert built.details["weight_granularity"]["per_tensor_layers"] == 0
    assert "of the int8 weights" in built.details["weight_granularity"]["skipped"]
    assert built.compression[0] == "quant:dynamic:int8:per-channel"
    assert not any(key[0] == "weight-granularity" for key in ctx.cache)  # nothing measured
    with pytest.raises(VariantBuildError, match="granularity_min_share"):
        build_variant(VariantRequest("w", kind, {**kind.options, "granularity_min_share": 2}), base, ctx)


def _weight_scales(path: Path) -> list[tuple[str, int]]:
    """``(op, scales stored for its int8 weight)`` per op of ``path`` with an int8 weight."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(path.read_bytes())
    graph = model.subgraphs[0]
    found = []
    for op in graph.operators:
        code = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        weight = graph.tensors[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        if code is not None and weight is not None and weight.quantization is not None \
                and weight.quantization.scale is not None and fb.TENSOR_CODE_TO_TYPE[weight.type] == "INT8":
            found.append((code.name, len(weight.quantization.scale)))
    return found
