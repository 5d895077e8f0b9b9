"""The MNN variants against the real toolchain: MNNConvert and MNN's runtime (the ``mnn`` wheel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.skip_policy import require_module

torch = require_module("torch")
require_module("MNN", "pip install mnn (the converter extra)")

from converter import run_conversion  # noqa: E402
from converter.catalogue import VARIANT_KINDS  # noqa: E402
from converter.errors import UnsupportedModelError, VariantBuildError  # noqa: E402
from converter.export import mnn as mnn_backend  # noqa: E402
from converter.export.base import ExportContext, NotApplicable, VariantRequest  # noqa: E402
from converter.export.dispatch import build_variant  # noqa: E402
from converter.specs import TensorSpec  # noqa: E402
from edgeship.runtimes import open_runner  # noqa: E402

MNN_KINDS = ("mnn-fp32", "mnn-int8")


def _recipe(path: Path, kinds: tuple[str, ...]) -> Path:
    path.write_text("".join(f'[[variants]]\nkind = "{kind}"\n' for kind in kinds))
    return path


def _context(model: torch.nn.Module, inputs: list[TensorSpec], work: Path) -> ExportContext:
    example = {s.name: np.zeros(s.shape, dtype=s.np_dtype) for s in inputs}
    outputs = model(*(torch.from_numpy(example[s.name]) for s in inputs))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    specs = [TensorSpec(f"output_{i}", tuple(o.shape), "float32") for i, o in enumerate(outputs)]
    work.mkdir(parents=True, exist_ok=True)
    return ExportContext(model=model.eval(), inputs=inputs, outputs=specs, example=example,
                         calibration=lambda: iter([example]), calibration_count=1, work_dir=work)


def _request(kind: str, **options) -> VariantRequest:
    return VariantRequest(kind, VARIANT_KINDS[kind], {**VARIANT_KINDS[kind].options, **options})


def test_both_mnn_kinds_convert_and_pass_their_gates_on_mnn(digits_dir, signing_key, tmp_path):
    from examples.digits import INPUT_SPEC

    conversion = run_conversion(
        digits_dir / "digits_cnn.pt", [INPUT_SPEC], digits_dir / "eval.npz", tmp_path / "release",
        calib_data=digits_dir / "calib.npz", recipe=_recipe(tmp_path / "recipe.toml", MNN_KINDS),
        model_name="digits-cnn", version="1", signing_key=signing_key,
    )
    results = {r.id: r for r in conversion.results}
    for kind in MNN_KINDS:
        result = results[kind]
        assert result.status == "passed", (kind, result.reason)
        assert result.runtime["name"] == "mnn" and result.runtime["min_version"]
        assert result.metrics["agreement"] >= 0.99, result.metrics
    assert results["mnn-fp32"].metrics["max_abs_err"] <= 1e-4
    # int8 weights: the Conv/Linear weights take a byte instead of four
    assert results["mnn-int8"].size_bytes < 0.5 * results["mnn-fp32"].size_bytes
    assert results["mnn-int8"].precision == "int8-weights"
    assert results["mnn-int8"].compression[-1] == "quant:weights:int8:per-channel:symmetric"
    shipped = {v.id: v for v in conversion.manifest.variants}
    assert shipped["mnn-int8"].format == "mnn" and shipped["mnn-int8"].file.endswith(".mnn")


class TwoIntegerInputs(torch.nn.Module):
    """Token ids and a mask (int64, which MNN turns into int32), a float head and a 3-D output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = torch.nn.Embedding(50, 16), torch.nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids) * mask[..., None].to(torch.float32)
        return self.head(x.mean(1)), x


def test_integer_inputs_are_fed_as_mnn_declares_them_and_outputs_keep_their_order(tmp_path):
    inputs = [TensorSpec("ids", (2, 5), "int64"), TensorSpec("mask", (2, 5), "int64")]
    ctx = _context(TwoIntegerInputs(), inputs, tmp_path)
    base = mnn_backend.export_base(ctx)
    built = build_variant(_request("mnn-fp32"), base, ctx)
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 5))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = open_runner(built.path, "mnn", ["ids", "mask"], threads=1).run({"ids": ids, "mask": mask})
    with torch.no_grad():
        want = ctx.model(torch.from_numpy(ids), torch.from_numpy(mask))
    assert [g.shape for g in got] == [(2, 3), (2, 5, 16)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)


def test_a_model_without_weights_to_quantize_skips_int8(tmp_path):
    class Elementwise(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x * 2.0 + 1.0)

    ctx = _context(Elementwise(), [TensorSpec("x", (1, 8), "float32")], tmp_path)
    base = mnn_backend.export_base(ctx)
    with pytest.raises(NotApplicable, match="no Conv/MatMul weights"):
        build_variant(_request("mnn-int8"), base, ctx)


@pytest.mark.parametrize("block_size", [-1, 2.5, True])
def test_a_bad_block_size_is_refused_by_name(tmp_path, block_size):
    ctx = _context(torch.nn.Linear(8, 4), [TensorSpec("x", (1, 8), "float32")], tmp_path)
    base = mnn_backend.export_base(ctx)
    with pytest.raises(VariantBuildError, match="block_size must be 0"):
        build_variant(_request("mnn-int8", block_size=block_size), base, ctx)


def test_blockwise_int8_weights_are_built_and_named(tmp_path):
    ctx = _context(torch.nn.Linear(64, 32), [TensorSpec("x", (1, 64), "float32")], tmp_path)
    base = mnn_backend.export_base(ctx)
    built = build_variant(_request("mnn-int8", block_size=32), base, ctx)
    assert built.details["weight_granularity"] == "block-32"
    x = np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)
    got = open_runner(built.path, "mnn", ["x"], threads=1).run({"x": x})[0]
    with torch.no_grad():
        want = ctx.model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_a_converter_crash_is_a_reason_and_a_partial_onnx_export_is_not_reused(tmp_path, monkeypatch):
    """MNNConvert segfaults on some graphs (ONNX STFT with mnn 3.6): the child dies, the
    converter gets the signal as the reason. The crash is made here so the test does not
    depend on which graphs a given MNN release crashes on."""
    ctx = _context(torch.nn.Linear(4, 4), [TensorSpec("x", (1, 4), "float32")], tmp_path / "ctx")
    broken = tmp_path / "ctx" / "_onnx_base"
    broken.mkdir(parents=True)
    (broken / "base.onnx").write_bytes(b"not a finished export")  # no exporter tag
    base = mnn_backend.export_base(ctx)  # exported again, not reused
    assert base.onnx == broken / "base.onnx" and base.fp32.stat().st_size > 0

    monkeypatch.setattr(mnn_backend, "_CONVERT_SCRIPT",
                        "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    reason = mnn_backend.convert(base.onnx, tmp_path / "crashed.mnn")
    assert reason == "killed by signal 11 while converting"


def test_mnnconvert_refusing_the_model_is_an_unsupported_model_error(tmp_path, monkeypatch):
    ctx = _context(torch.nn.Linear(4, 4), [TensorSpec("x", (1, 4), "float32")], tmp_path)
    monkeypatch.setattr(mnn_backend, "convert", lambda source, out, flags=None: "killed by signal 11")
    with pytest.raises(UnsupportedModelError, match="mnn: export failed: MNNConvert: killed by signal 11"):
        mnn_backend.export_base(ctx)
