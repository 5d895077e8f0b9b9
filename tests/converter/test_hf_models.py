"""Real Hugging Face ``transformers`` models (small configs, trained briefly, no download)
through the converter: a BERT-style sentence encoder, a ViT classifier and a Llama-style
decoder LM run as a fixed-length forward pass. Each converts to ONNX and TFLite (validated on
their runtimes) and to every CoreML kind (spec-checked, ``not_validated`` off macOS), and is
judged on the metrics of its task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.skip_policy import require_module

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from converter.pipeline import run_conversion  # noqa: E402 - after the toolchain check
from converter.progress import Progress  # noqa: E402
from converter.recipe import parse_recipe  # noqa: E402

pytestmark = pytest.mark.slow

KINDS = ("onnx-fp32", "tflite-fp32", "coreml-fp16", "coreml-int8-weights", "coreml-palettized-4bit")
RECIPE = {"validation": {"max_samples": 48, "calibration_samples": 16, "golden_count": 8},
          "variants": [{"kind": k} for k in KINDS]}


def build(name: str, out: Path) -> tuple[Path, tuple[str, ...]]:
    """Train the example ``name`` on one thread (seeded: the same weights on any host)."""
    require_module("transformers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if name == "encoder":
            from examples import hf_encoder as example

            example.build_example(out, "tiny", head="embedding")
            return out / "encoder.pt", example.SIZES["tiny"].input_specs
        if name == "vit":
            from examples import hf_vision as example

            example.build_example(out, "tiny")
            return out / "vit.pt", example.SIZES["tiny"].input_specs
        from examples import hf_decoder as example

        example.build_example(out, "tiny")
        return out / "decoder.pt", example.SIZES["tiny"].input_specs
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["encoder", "vit", "decoder"])
def release(request, signing_key, tmp_path_factory):
    data = tmp_path_factory.mktemp(request.param)
    model, specs = build(request.param, data)
    out = data / "release"
    conversion = run_conversion(model, specs, data / "eval.npz", out, calib_data=data / "calib.npz",
                                recipe=parse_recipe(RECIPE), signing_key=signing_key,
                                model_name=f"hf-{request.param}", progress=Progress(quiet=True))
    return request.param, out, {r.id: r for r in conversion.results}


def test_every_format_ships(release):
    _, out, results = release
    status = {variant_id: r.status for variant_id, r in results.items()}
    assert status == {"onnx-fp32": "passed", "tflite-fp32": "passed", "coreml-fp16": "not_validated",
                      "coreml-int8-weights": "not_validated",
                      "coreml-palettized-4bit": "not_validated"}, {i: r.reason for i, r in results.items()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {v["id"] for v in manifest["variants"]} == set(KINDS)
    for variant_id in ("onnx-fp32", "tflite-fp32"):
        assert results[variant_id].metrics["max_abs_err"] <= 1e-4


def test_coreml_variants_hold_the_weights_they_claim(release):
    _, _, results = release
    assert set(results["coreml-fp16"].built.details["weight_ops"]) == {"const_float16"}
    assert "constexpr_affine_dequantize" in results["coreml-int8-weights"].built.details["weight_ops"]
    assert "constexpr_lut_to_dense" in results["coreml-palettized-4bit"].built.details["weight_ops"]
    for r in results.values():
        if r.format == "coreml":
            assert "spec checked" in r.reason and not r.metrics


def test_each_model_is_judged_on_its_task(release):
    name, out, results = release
    manifest = json.loads((out / "manifest.json").read_text())
    kind = manifest["task"]["kind"]
    metrics = results["onnx-fp32"].metrics
    header = next(line for line in (out / "report.md").read_text().splitlines()
                  if line.startswith("| variant |"))
    assert "golden" in metrics and "agreement" in metrics["golden"]  # the device's rule
    if name == "vit":
        assert kind == "classification"
        assert {"accuracy", "agreement"} <= set(metrics) and "rel_err" not in metrics
        assert metrics["accuracy"] > 0.5  # trained: chance is 1/8
        assert "| accuracy |" in header and "| agree |" in header
    else:
        assert kind == ("embedding" if name == "encoder" else "generic")
        assert {"cosine", "rel_err"} <= set(metrics) and "agreement" not in metrics
        assert "| cosine |" in header and "| rel err |" in header
        assert "agree" not in header and "accuracy" not in header


def test_a_language_model_that_returns_its_cache_is_told_to_drop_it():
    from transformers import LlamaConfig, LlamaForCausalLM

    from converter.errors import InputSpecError
    from converter.reference import fit_check
    from converter.specs import TensorSpec

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config).eval()
    ids = TensorSpec("input_ids", (1, 8), "int64")
    with pytest.raises(InputSpecError, match="use_cache = False"):
        fit_check(model, [ids], {"input_ids": np.zeros((1, 8), np.int64)})
    config.use_cache = False
    assert [s.shape for s in fit_check(model, [ids], {"input_ids": np.zeros((1, 8), np.int64)})] \
        == [(1, 8, 32)]
