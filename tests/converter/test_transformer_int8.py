"""A real ``transformers`` encoder through the default recipe: fast int8 that keeps its cosine,
static int8 predicted not worth building and skipped unbuilt.

The encoder (``examples/hf_encoder.py``, BertModel, 0.2M parameters) is trained briefly and
then given planted outlier channels (function-preserving), as pretrained BERTs have: plain
dynamic int8 loses cosine on them, so the int8-dynamic variants must find the MatMuls that the
outliers feed and keep exactly those in float.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_quantizer")

from converter.progress import Progress

pytestmark = pytest.mark.slow

#: the encoder's attention output projections: where the planted outliers enter.
PLANTED = {"bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.1.attention.output.dense"}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny encoder trained once (seeded, one thread), outliers planted, files on disk."""
    import torch

    from examples.hf_encoder import build_example, plant_outliers

    out = tmp_path_factory.mktemp("hf-encoder")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_example(out, "tiny", head="embedding", seed=0)
        model = torch.load(out / "encoder.pt", weights_only=False)
        torch.save(plant_outliers(model), out / "encoder.pt")
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def conversion(encoder_dir: Path, signing_key: Path, tmp_path_factory: pytest.TempPathFactory):
    from converter import run_conversion
    from examples.hf_encoder import SIZES

    return run_conversion(
        encoder_dir / "encoder.pt", list(SIZES["tiny"].input_specs), encoder_dir / "eval.npz",
        tmp_path_factory.mktemp("release") / "release", calib_data=encoder_dir / "calib.npz",
        model_name="hf-encoder", signing_key=signing_key, progress=Progress(quiet=True),
    )


def test_outliers_break_plain_dynamic_int8(conversion) -> None:
    """The model is a real test: the first, untuned int8-dynamic builds miss the cosine gate."""
    results = {r.id: r for r in conversion.results}
    assert conversion.manifest.task["kind"] == "embedding"
    for variant_id in ("onnx-int8-dynamic", "tflite-int8-dynamic"):
        first = results[variant_id].tuning["attempts"][0]
        assert first["status"] == "failed" and "cosine" in first["rejected"], first


@pytest.mark.parametrize("variant_id", ["onnx-int8-dynamic", "tflite-int8-dynamic"])
def test_int8_dynamic_ships_with_the_outlier_layers_in_float(conversion, variant_id) -> None:
    result = {r.id: r for r in conversion.results}[variant_id]
    assert result.status == "passed", result.reason
    assert result.metrics["cosine"] >= 0.99
    assert result.tuning["outcome"] == "passed"
    kept = result.tuning["kept"]["float_layers"]
    modules = {row["layer"]: row["module"] for row in result.tuning["sensitivity"]}
    # the sensitivity ranking found the planted layers, and only those stay float
    assert {modules[name] for name in kept} <= PLANTED and 1 <= len(kept) <= len(PLANTED)
    ranked = [row["module"] for row in result.tuning["sensitivity"]]
    assert set(ranked[: len(PLANTED)]) == PLANTED
    assert f"keep-float:{len(kept)}-layers" in result.compression
    shipped = {v.id for v in conversion.manifest.variants}
    assert variant_id in shipped


def test_onnx_int8_dynamic_runs_its_matmuls_in_integer(conversion) -> None:
    """Structure, not speed: every weight MatMul but the float ones is MatMulInteger fed by a
    DynamicQuantizeLinear, and the file holds int8 weights (a quarter of the fp32 size or so)."""
    import onnx

    results = {r.id: r for r in conversion.results}
    result = results["onnx-int8-dynamic"]
    graph = onnx.load(str(conversion.out / result.built.path.name)).graph
    ops = [n.op_type for n in graph.node]
    constants = {t.name for t in graph.initializer}
    float_weight_matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]
    integer = ops.count("MatMulInteger")
    assert len(float_weight_matmuls) == len(result.tuning["kept"]["float_layers"])
    assert integer >= 10 and integer >= 4 * len(float_weight_matmuls)
    assert ops.count("DynamicQuantizeLinear") >= 1
    assert result.size_bytes < 0.4 * results["onnx-fp32"].size_bytes


def test_weight_only_int8_is_built_only_where_dynamic_int8_is_not_faster(conversion) -> None:
    """The rule follows the measured latencies: skipped when int8-dynamic passed faster than fp32,
    built otherwise. On this tiny encoder the two p50s are close, and a busy machine can invert
    them (CI saw it), so the test checks the rule against what was measured, not one outcome."""
    results = {r.id: r for r in conversion.results}
    dynamic, weights, fp32 = results["onnx-int8-dynamic"], results["onnx-int8-weights"], results["onnx-fp32"]
    assert dynamic.status == "passed"
    ratio = dynamic.metrics["latency_ms"]["p50"] / fp32.metrics["latency_ms"]["p50"]
    if ratio < 1:
        assert weights.status == "skipped" and weights.built is None
        assert weights.reason.startswith(f"not built: onnx-int8-dynamic passed its gates at p50 {ratio:.2f}x")
    else:
        assert weights.status != "skipped" and weights.built is not None, weights.reason


@pytest.mark.parametrize("variant_id", ["onnx-int8-static", "tflite-int8"])
def test_static_int8_is_predicted_not_worth_building_and_skipped_unbuilt(conversion, variant_id) -> None:
    result = {r.id: r for r in conversion.results}[variant_id]
    assert result.status == "skipped"
    assert result.reason.startswith("not built: a transformer graph (")
    assert "attention MatMuls" in result.reason and "LayerNorm" in result.reason
    assert result.built is None and result.tuning is None and result.build_seconds is None
    assert not result.metrics
    assert variant_id not in {v.id for v in conversion.manifest.variants}


def test_switchable_model_emulates_quantize_dynamic(encoder_dir: Path, tmp_path: Path) -> None:
    """The sensitivity run's int8 emulation gives onnxruntime's quantize_dynamic outputs."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from converter.data import load_samples
    from converter.export.base import ExportContext
    from converter.export.onnx import export_base
    from converter.export.onnx_common import dynamic_source
    from converter.reference import fit_check
    from converter.specs import parse_input_spec
    from converter.tuning.onnx_dynamic_layers import SwitchableModel
    from converter.tuning.onnx_layers import run_onnx
    from examples.hf_encoder import SIZES

    specs = [parse_input_spec(s) for s in SIZES["tiny"].input_specs]
    samples = load_samples(encoder_dir / "eval.npz", specs, "evaluation").head(16)
    model = torch.load(encoder_dir / "encoder.pt", weights_only=False).eval()
    ctx = ExportContext(model=model, inputs=specs, outputs=fit_check(model, specs, samples.sample(0)),
                        example=samples.sample(0), calibration=lambda: iter(samples),
                        calibration_count=len(samples), work_dir=tmp_path)
    source = dynamic_source(export_base(ctx), ctx)
    names = [s.name for s in specs]
    switchable = SwitchableModel(source, names, per_channel=True, reduce_range=True)
    emulated = switchable.run(list(samples), [name for name, _, _ in switchable.layers])[0]
    quantize_dynamic(source, tmp_path / "real.onnx", per_channel=True, reduce_range=True,
                     weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    real = run_onnx(tmp_path / "real.onnx", list(samples), names)[0]
    floats = switchable.run(list(samples), ())[0]
    assert np.abs(emulated - real).max() <= 1e-3 * np.abs(real).max()
    assert np.abs(floats - real).max() > 10 * np.abs(emulated - real).max()  # the emulation is not float


def test_skip_predicted_false_builds_static_int8_anyway(encoder_dir: Path, signing_key: Path,
                                                       tmp_path: Path) -> None:
    from converter import run_conversion
    from converter.pipeline import NoVariantPassed
    from converter.recipe import parse_recipe
    from examples.hf_encoder import SIZES

    recipe = parse_recipe({"variants": [
        {"kind": "onnx-int8-static", "tuning": {"skip_predicted": False, "enabled": False}}]})
    try:
        results = run_conversion(
            encoder_dir / "encoder.pt", list(SIZES["tiny"].input_specs), encoder_dir / "eval.npz",
            tmp_path / "release", recipe=recipe, model_name="hf-encoder", signing_key=signing_key,
            progress=Progress(quiet=True),
        ).results
    except NoVariantPassed as err:  # it missed its gates: still built and measured
        results = err.results
    (result,) = results
    assert result.status in ("passed", "failed") and result.size_bytes and result.metrics


def test_weight_only_int8_ships_as_the_only_faithful_one_when_dynamic_fails(
        encoder_dir: Path, signing_key: Path, tmp_path: Path) -> None:
    from converter import run_conversion
    from converter.recipe import parse_recipe
    from examples.hf_encoder import SIZES

    recipe = parse_recipe({"validation": {"max_samples": 64}, "variants": [
        "onnx-fp32", {"kind": "onnx-int8-dynamic", "tuning": False}, "onnx-int8-weights"]})
    conversion = run_conversion(
        encoder_dir / "encoder.pt", list(SIZES["tiny"].input_specs), encoder_dir / "eval.npz",
        tmp_path / "release", recipe=recipe, model_name="hf-encoder", signing_key=signing_key,
        progress=Progress(quiet=True),
    )
    results = {r.id: r for r in conversion.results}
    assert results["onnx-int8-dynamic"].status == "failed"  # the outliers, untuned
    weights = results["onnx-int8-weights"]
    assert weights.status == "passed" and weights.metrics["cosine"] >= 0.99
    assert weights.reason == "ships as the only faithful int8 of its format: onnx-int8-dynamic failed"
    assert "only faithful int8" in (conversion.out / "report.md").read_text()


def test_cnn_graphs_keep_static_int8(tmp_path: Path) -> None:
    """The prediction reads the exported graph: a CNN has no attention, so static int8 stays."""
    from converter.export.base import ExportContext
    from converter.export.onnx import export_base as onnx_base
    from converter.export.tflite import export_base as tflite_base
    from converter.specs import TensorSpec, parse_input_spec
    from converter.tuning.feasibility import onnx_profile, static_int8_verdict, tflite_profile
    from examples.digits import INPUT_SPEC, DigitsCNN

    spec = parse_input_spec(INPUT_SPEC)
    example = {spec.name: np.zeros(spec.shape, np.float32)}
    logits = TensorSpec("logits", (1, 10), "float32")
    ctx = ExportContext(model=DigitsCNN().eval(), inputs=[spec], outputs=[logits], example=example,
                        calibration=lambda: iter([example]), calibration_count=1,
                        work_dir=tmp_path)
    for profile in (onnx_profile(onnx_base(ctx)), tflite_profile(tflite_base(ctx))):
        assert profile.convolutions == 3 and profile.attention_matmuls == 0, profile
        assert static_int8_verdict(profile) is None
