"""Blockwise 4-bit weights on the real toolchains and runtimes: onnxruntime's MatMulNBits and
ai-edge-quantizer's INT4 blocks on the tiny BERT example (a MatMul-heavy model), refused on a
CNN, and gated on quality like every variant in a conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from converter.catalogue import VARIANT_KINDS  # noqa: E402
from converter.errors import VariantBuildError  # noqa: E402
from converter.export.base import ExportContext, NotApplicable, VariantRequest  # noqa: E402
from converter.export.dispatch import build_variant  # noqa: E402
from converter.specs import TensorSpec  # noqa: E402
from tests.converter.conftest import export_context  # noqa: E402


class SmallCNN(nn.Module):
    """Nearly all weights in convolutions: nothing for 4-bit MatMul weights to do."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _request(kind: str, **options) -> VariantRequest:
    k = VARIANT_KINDS[kind]
    return VariantRequest(kind, k, {**k.options, **options})


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> ExportContext:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    samples = [{"image": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    return export_context(SmallCNN(), [TensorSpec("image", (1, 3, 16, 16), "float32")], samples,
                    tmp_path_factory.mktemp("cnn-work"))


def _linear_count(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.Linear))


def _rel_err(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    noise = sum(float(np.sum((o - r) ** 2)) for o, r in zip(outputs, reference, strict=True))
    return (noise / sum(float(np.sum(r ** 2)) for r in reference)) ** 0.5


# --------------------------------------------------------------------------- ONNX


def _onnx_outputs(path: Path, ctx: ExportContext) -> list[np.ndarray]:
    from edgeship.runtimes.onnx import OnnxRunner

    runner = OnnxRunner(path, [s.name for s in ctx.inputs], threads=1)
    return [np.concatenate(o) for o in zip(*(runner.run(s) for s in ctx.calibration()), strict=True)]


@pytest.mark.slow
def test_onnx_int4_stores_every_linear_in_4_bit_blocks(bert, bert_onnx) -> None:
    import onnx
    from onnx import numpy_helper

    built = build_variant(_request("onnx-int4-weights"), bert_onnx, bert)
    model = onnx.load(str(built.path))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == _linear_count(bert.model) == built.details["matmuls_quantized"]
    inits = {t.name: t for t in model.graph.initializer}
    for node in nbits:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == 4 and attrs["block_size"] == 32
        blob = numpy_helper.to_array(inits[node.input[1]])  # [N, K/32, 16]: two weights a byte
        assert blob.dtype == np.uint8 and blob.shape == (attrs["N"], -(-attrs["K"] // 32), 16)
        assert numpy_helper.to_array(inits[node.input[2]]).size == attrs["N"] * blob.shape[1]
    assert built.details["embeddings_quantized"] == 1  # the token table, 8-bit by default
    assert built.compression == ["quant:weights:int4:block32", "quant:embeddings:int8:block32"]
    int8 = build_variant(_request("onnx-int8-weights"), bert_onnx, bert)
    assert built.path.stat().st_size < 0.75 * int8.path.stat().st_size
    assert _rel_err(_onnx_outputs(built.path, bert), _onnx_outputs(bert_onnx, bert)) < 0.25


@pytest.mark.slow
def test_onnx_int4_block_size_and_zero_points_follow_the_options(bert, bert_onnx) -> None:
    import onnx

    request = VariantRequest("asym", VARIANT_KINDS["onnx-int4-weights"],
                             {**VARIANT_KINDS["onnx-int4-weights"].options, "block_size": 64,
                              "symmetric": False, "embedding_bits": 0})
    built = build_variant(request, bert_onnx, bert)
    assert built.compression == ["quant:weights:int4:block64:asym"]
    model = onnx.load(str(built.path))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(len(n.input) >= 4 and n.input[3] for n in nbits)  # zero points
    assert all(a.i == 64 for n in nbits for a in n.attribute if a.name == "block_size")
    assert not any(n.op_type == "GatherBlockQuantized" for n in model.graph.node)


@pytest.mark.slow
def test_onnx_int4_embedding_tables_take_4_bits_when_asked(bert, bert_onnx) -> None:
    import onnx

    built = build_variant(_request("onnx-int4-weights", embedding_bits=4), bert_onnx, bert)
    assert built.compression[-1] == "quant:embeddings:int4:block32"
    gathers = [n for n in onnx.load(str(built.path)).graph.node if n.op_type == "GatherBlockQuantized"]
    assert gathers and all(a.i == 4 for n in gathers for a in n.attribute if a.name == "bits")


@pytest.mark.parametrize("options, named", [
    ({"block_size": 24}, "block_size"), ({"block_size": 8}, "block_size"),
    ({"symmetric": "yes"}, "symmetric"), ({"accuracy_level": 7}, "accuracy_level"),
    ({"embedding_bits": 2}, "embedding_bits"), ({"embedding_bits": True}, "embedding_bits"),
])
def test_onnx_int4_bad_options_are_named(options, named, cnn) -> None:
    with pytest.raises(VariantBuildError, match=named):
        build_variant(_request("onnx-int4-weights", **options), Path("unused.onnx"), cnn)


@pytest.mark.slow
def test_onnx_int4_is_not_applicable_to_a_cnn(cnn) -> None:
    from converter.export.onnx import export_base

    with pytest.raises(NotApplicable, match="Conv"):
        build_variant(_request("onnx-int4-weights"), export_base(cnn), cnn)


# --------------------------------------------------------------------------- TFLite


def _tflite_outputs(path: Path, ctx: ExportContext) -> list[np.ndarray]:
    from edgeship.runtimes.litert import LiteRTRunner

    runner = LiteRTRunner(path, [s.name for s in ctx.inputs], threads=1)
    return [np.concatenate(o) for o in zip(*(runner.run(s) for s in ctx.calibration()), strict=True)]


@pytest.mark.slow
def test_tflite_int4_stores_fully_connected_weights_as_int4(bert, bert_tflite) -> None:
    from converter.export.tflite_int4 import int4_tensors

    built = build_variant(_request("tflite-int4-weights"), bert_tflite, bert)
    assert built.compression == ["quant:dynamic:int4:block32"]
    fully_connected = built.details["ops"]["FULLY_CONNECTED"]
    # every fully connected weight, plus the embedding table(s)
    assert int4_tensors(built.path) == built.details["int4_tensors"] >= fully_connected
    int8 = build_variant(_request("tflite-int8-dynamic", per_tensor_layers=[]), bert_tflite, bert)
    assert built.path.stat().st_size < 0.8 * int8.path.stat().st_size
    assert _rel_err(_tflite_outputs(built.path, bert), _tflite_outputs(bert_tflite, bert)) < 0.25


def test_tflite_int4_bad_block_size_is_named(cnn) -> None:
    with pytest.raises(VariantBuildError, match="block_size 48"):
        build_variant(_request("tflite-int4-weights", block_size=48), Path("unused.tflite"), cnn)


@pytest.mark.slow
def test_tflite_int4_is_not_applicable_to_a_cnn(cnn) -> None:
    pytest.importorskip("litert_torch")
    from converter.export.tflite import export_base

    with pytest.raises(NotApplicable, match="Conv"):
        build_variant(_request("tflite-int4-weights"), export_base(cnn), cnn)


# --------------------------------------------------------------------------- gated in a conversion


@pytest.mark.slow
def test_int4_variants_are_validated_and_gated_on_their_runtime(bert_dir, signing_key, tmp_path):
    """Each int4 variant is measured on its runtime and ships exactly when its measured metrics
    pass the gates; a failure names the gate it missed."""
    from converter import run_conversion
    from converter.gates import gate_failures
    from converter.progress import Progress
    from converter.recipe import parse_recipe
    from examples.tiny_bert import INPUT_SPECS

    recipe = parse_recipe({"validation": {"max_samples": 128}, "variants": [
        "onnx-fp32", "onnx-int4-weights", "tflite-fp32", "tflite-int4-weights"]})
    conversion = run_conversion(  # the fp32 variants ship, so this never raises NoVariantPassed
        bert_dir / "tiny_bert.pt", list(INPUT_SPECS), bert_dir / "eval.npz", tmp_path / "rel",
        calib_data=bert_dir / "calib.npz", recipe=recipe, model_name="tiny-bert",
        signing_key=signing_key, progress=Progress(quiet=True))
    results = {r.id: r for r in conversion.results}
    plans = {p.request.id: p for p in recipe.variants}
    for variant_id in ("onnx-int4-weights", "tflite-int4-weights"):
        result = results[variant_id]
        assert result.precision == "int4-weights" and result.size_bytes, (variant_id, result.reason)
        assert result.metrics["agreement"] is not None and "latency_ms" in result.metrics
        failures = gate_failures(result.metrics, plans[variant_id].gates, result.precision)
        assert result.status == ("failed" if failures else "passed"), (variant_id, result.reason)
        if failures:
            assert failures[0] in result.reason
        assert result.size_bytes < 0.5 * results[variant_id.replace("int4-weights", "fp32")].size_bytes
