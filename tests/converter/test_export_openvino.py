"""The OpenVINO kinds against the real toolchain (openvino.convert_model, NNCF, OpenVINO's CPU
plugin): both kinds built and validated through the pipeline, the shipped zip, and NNCF's
accuracy control recovering the outlier model that plain int8 ruins."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.skip_policy import require_module

require_module("torch")
require_module("openvino", "pip install -e '.[converter]'")
require_module("nncf", "pip install -e '.[converter]'")

from converter.catalogue import VARIANT_KINDS  # noqa: E402
from converter.errors import VariantBuildError  # noqa: E402
from converter.export import openvino as openvino_backend  # noqa: E402
from converter.export.base import ExportContext, VariantRequest  # noqa: E402
from converter.export.dispatch import build_variant  # noqa: E402
from converter.export.openvino_int8 import item_fidelity  # noqa: E402
from converter.progress import Progress  # noqa: E402
from converter.recipe import Gates, VariantPlan  # noqa: E402
from converter.specs import TensorSpec  # noqa: E402
from converter.tuning.openvino_accuracy import control_target  # noqa: E402
from edgeship.runtimes import open_runner  # noqa: E402
from edgeship.runtimes.openvino import BIN_ENTRY, XML_ENTRY, read_ir_zip  # noqa: E402

pytestmark = pytest.mark.slow


def _recipe(tmp_path: Path, variants: str) -> Path:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[validation]\nmax_samples = 300\ncalibration_samples = 64\n"
                      "[tuning]\nsensitivity_samples = 100\n" + variants)
    return recipe


@pytest.fixture(scope="module")
def digits_conversion(digits_dir, signing_key, tmp_path_factory):
    from converter import run_conversion

    tmp = tmp_path_factory.mktemp("openvino")
    recipe = _recipe(tmp, '[[variants]]\nkind = "openvino-fp16"\n[[variants]]\nkind = "openvino-int8"\n'
                          '[[variants]]\nkind = "onnx-int8-static"\n')
    return run_conversion(
        digits_dir / "digits_cnn.pt", ["image:1x1x8x8:float32"], digits_dir / "eval.npz",
        tmp / "release", calib_data=digits_dir / "calib.npz", recipe=recipe, model_name="digits",
        signing_key=signing_key, progress=Progress(quiet=True),
    )


def test_both_kinds_are_validated_on_openvino_and_ship_one_zip(digits_conversion):
    results = {r.id: r for r in digits_conversion.results}
    shipped = {v.id: v for v in digits_conversion.manifest.variants}
    fp16 = results["openvino-fp16"]
    assert fp16.status == "passed", fp16.reason
    assert fp16.runtime["name"] == "openvino" and fp16.runtime["min_version"]
    assert fp16.metrics["agreement"] == 1.0 and fp16.metrics["max_abs_err"] < 1e-2
    int8 = results["openvino-int8"]
    # the gate decides: passed exactly when the measured metrics are within the default gates
    gated = int8.metrics["agreement"] >= 0.99 and int8.metrics["accuracy_drop"] <= 0.005
    assert int8.status == ("passed" if gated else "failed"), (int8.status, int8.metrics)
    assert int8.metrics["agreement"] >= 0.95, int8.metrics
    assert int8.compression == ["quant:nncf:default:per-channel"] or int8.tuning
    assert int8.built.details["fake_quantize_ops"] > 0
    for variant_id in ("openvino-fp16", "openvino-int8"):
        if variant_id not in shipped:
            continue
        entry = shipped[variant_id]
        assert entry.format == "openvino" and entry.file == f"{variant_id}.openvino.zip"
        with zipfile.ZipFile(digits_conversion.out / entry.file) as archive:
            assert sorted(archive.namelist()) == sorted((XML_ENTRY, BIN_ENTRY))
    fp32_bytes = results["openvino-fp16"].size_bytes
    assert results["openvino-int8"].size_bytes < fp32_bytes  # int8 weights under float16 ones


def test_outlier_model_plain_int8_misses_and_nncf_accuracy_control_recovers(digits_dir, signing_key,
                                                                            tmp_path, monkeypatch):
    from converter import run_conversion

    monkeypatch.setenv("EDGESHIP_DIGITS_DIR", str(digits_dir))
    recipe = _recipe(tmp_path, '[[variants]]\nkind = "openvino-int8"\n')
    conversion = run_conversion(
        "examples.outlier:trained_model", ["image:1x1x8x8:float32"], digits_dir / "eval.npz",
        tmp_path / "release", calib_data=digits_dir / "calib.npz", recipe=recipe,
        model_name="digits-outlier", signing_key=signing_key, progress=Progress(quiet=True),
    )
    (result,) = conversion.results
    attempts = result.tuning["attempts"]
    # plain NNCF int8 collapses on the outlier channels, whatever the range estimator...
    assert attempts[0]["status"] == "failed" and attempts[0]["metrics"]["accuracy_drop"] > 0.5
    calibrations = [a for a in attempts[1:] if a["change"].startswith("calibration")]
    assert {a["options"]["calibration"] for a in calibrations} == {"minmax", "mean-quantile"}
    assert all(a["status"] == "failed" for a in calibrations)
    # ...and NNCF's accuracy control, given the gate as its drop, reverts what it must to pass
    last = attempts[-1]
    assert last["change"].startswith("NNCF accuracy control (top1, max drop 0.005")
    assert last["options"]["accuracy_control"] is True and last["kept"]
    assert result.status == "passed" and result.metrics["accuracy_drop"] <= 0.005, result.reason
    assert result.tuning["outcome"] == "passed"
    assert "nncf:accuracy-control" in result.compression
    control = result.built.details["accuracy_control"]
    assert control["metric"] == "top1" and control["validation_samples"] == 100
    assert control["drop"] <= control["max_drop"] == 0.005
    assert {v.id for v in conversion.manifest.variants} == {"openvino-int8"}


# --------------------------------------------------------------------------- builder level


@pytest.fixture(scope="module")
def digits_base(digits_dir, tmp_path_factory):
    import torch

    from examples.digits import DigitsCNN

    model = DigitsCNN()
    model.load_state_dict(torch.load(digits_dir / "weights.pt", weights_only=True))
    model.eval()
    with np.load(digits_dir / "calib.npz") as npz:
        images = npz["image"][:32]
    samples = [{"image": images[i : i + 1]} for i in range(len(images))]
    ctx = ExportContext(
        model=model, inputs=[TensorSpec("image", (1, 1, 8, 8), "float32")],
        outputs=[TensorSpec("output", (1, 10), "float32")], example=samples[0],
        calibration=lambda: iter(samples), calibration_count=len(samples),
        work_dir=tmp_path_factory.mktemp("ov-builder"),
    )
    return ctx, openvino_backend.export_base(ctx)


def _request(kind: str, variant_id: str, **options) -> VariantRequest:
    spec = VARIANT_KINDS[kind]
    return VariantRequest(variant_id, spec, {**dict(spec.options), **options})


def test_the_same_model_gives_the_same_zip_and_the_runner_reads_it_in_memory(digits_base):
    ctx, base = digits_base
    assert base.frontend == "pytorch"
    first = build_variant(_request("openvino-fp16", "a"), base, ctx)
    second = build_variant(_request("openvino-fp16", "b"), base, ctx)
    assert first.path.name == "a.openvino.zip"
    assert first.path.read_bytes() == second.path.read_bytes()
    xml, weights = read_ir_zip(first.path)
    assert b'element_type="f16"' in xml and len(weights) > 0
    (logits,) = open_runner(first.path, "openvino", ["image"], threads=1).run(ctx.example)
    import torch

    with torch.no_grad():
        expected = ctx.model(*ctx.example_tensors()).numpy()
    assert logits.dtype == np.float32 and np.abs(logits - expected).max() < 1e-2


def test_when_the_pytorch_frontend_refuses_the_onnx_export_is_converted(digits_base, monkeypatch, tmp_path):
    ctx, _ = digits_base

    def refuse(_ctx):
        raise RuntimeError("Tracing failed: unsupported construct")

    monkeypatch.setattr(openvino_backend, "_from_torch", refuse)
    onnx_ctx = ExportContext(model=ctx.model, inputs=ctx.inputs, outputs=ctx.outputs, example=ctx.example,
                             calibration=ctx.calibration, calibration_count=ctx.calibration_count,
                             work_dir=tmp_path)
    base = openvino_backend.export_base(onnx_ctx)
    assert base.frontend == "onnx" and (tmp_path / "_openvino_onnx").is_dir()
    built = build_variant(_request("openvino-fp16", "via-onnx"), base, onnx_ctx)
    assert built.details["frontend"] == "onnx"
    (logits,) = open_runner(built.path, "openvino", ["image"], threads=1).run(ctx.example)
    import torch

    with torch.no_grad():
        expected = ctx.model(*ctx.example_tensors()).numpy()
    assert np.abs(logits - expected).max() < 1e-2


def test_accuracy_control_without_tuner_samples_validates_on_the_calibration_set(digits_base):
    ctx, base = digits_base
    built = build_variant(_request("openvino-int8", "ac", accuracy_control=True, max_drop=0.0), base, ctx)
    control = built.details["accuracy_control"]
    assert control["validation_samples"] == ctx.calibration_count and control["drop"] == 0.0


def test_a_bad_option_is_a_build_error_naming_it(digits_base):
    ctx, base = digits_base
    with pytest.raises(VariantBuildError, match="calibration 'histogramm'"):
        build_variant(_request("openvino-int8", "bad", calibration="histogramm"), base, ctx)
    with pytest.raises(VariantBuildError, match="preset 'fast'"):
        build_variant(_request("openvino-int8", "bad", preset="fast"), base, ctx)


def test_a_zip_that_is_not_an_ir_is_refused(tmp_path):
    path = tmp_path / "x.openvino.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.xml", "<net/>")
        archive.writestr("../evil.bin", b"")
    with pytest.raises(ValueError, match=r"holds exactly model\.xml and model\.bin"):
        read_ir_zip(path)
    (tmp_path / "y.openvino.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip"):
        read_ir_zip(tmp_path / "y.openvino.zip")


def test_the_gate_becomes_nncf_metric_and_drop():
    plan = VariantPlan(_request("openvino-int8", "v"), Gates(max_accuracy_drop=0.005, min_agreement=0.99))
    assert control_target("classification", plan) == ("top1", 0.005)
    loose = VariantPlan(plan.request, Gates(max_accuracy_drop=0.05, min_agreement=0.98))
    assert control_target("classification", loose)[1] == pytest.approx(0.02)
    embedding = VariantPlan(plan.request, Gates(max_accuracy_drop=None, min_agreement=None, min_cosine=0.995))
    assert control_target("embedding", embedding) == ("cosine", pytest.approx(0.005))
    ref = [np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)]
    assert item_fidelity([np.array([[0.0, 1.0], [0.0, 1.0]])], ref, "top1") == 0.5
    assert item_fidelity(ref, ref, "cosine") == pytest.approx(1.0)
