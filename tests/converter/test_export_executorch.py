"""The ExecuTorch variants against the real toolchain: torch.export, the XNNPACK quantizer and
partitioner, and ExecuTorch's Python runtime (``executorch`` 1.5.1 beside torch 2.13.0)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.skip_policy import require_module

torch = require_module("torch")
require_module("executorch.runtime", "pip install executorch (the converter extra)")

from converter import run_conversion  # noqa: E402
from converter.catalogue import VARIANT_KINDS  # noqa: E402
from converter.errors import UnsupportedModelError  # noqa: E402
from converter.export import executorch as executorch_backend  # noqa: E402
from converter.export.base import ExportContext  # noqa: E402
from converter.recipe import parse_recipe  # noqa: E402
from converter.specs import TensorSpec  # noqa: E402
from edgeship.runtimes import open_runner  # noqa: E402

KINDS = ("executorch-xnnpack-fp32", "executorch-xnnpack-int8")


@pytest.fixture(scope="module")
def conversion(digits_dir, signing_key, tmp_path_factory) -> Any:
    from examples.digits import INPUT_SPEC

    out = tmp_path_factory.mktemp("executorch")
    recipe = out / "recipe.toml"
    recipe.write_text("".join(f'[[variants]]\nkind = "{kind}"\n' for kind in KINDS))
    return run_conversion(
        digits_dir / "digits_cnn.pt", [INPUT_SPEC], digits_dir / "eval.npz", out / "release",
        calib_data=digits_dir / "calib.npz", recipe=recipe, model_name="digits-cnn", version="1",
        signing_key=signing_key,
    )


def test_both_kinds_lower_to_xnnpack_and_pass_their_gates_on_executorch(conversion):
    results = {r.id: r for r in conversion.results}
    for kind in KINDS:
        result = results[kind]
        assert result.status == "passed", (kind, result.reason)
        assert result.runtime["name"] == "executorch"
        assert result.metrics["agreement"] >= 0.99, result.metrics
        assert result.built.details["delegate_calls"] >= 1  # XNNPACK runs it, not portable kernels
    assert results["executorch-xnnpack-fp32"].metrics["max_abs_err"] <= 1e-4
    assert results["executorch-xnnpack-int8"].size_bytes < 0.5 * results["executorch-xnnpack-fp32"].size_bytes
    assert results["executorch-xnnpack-int8"].compression[-1] == "quant:pt2e:xnnpack:per-channel"
    shipped = {v.id: v for v in conversion.manifest.variants}
    assert shipped["executorch-xnnpack-int8"].file.endswith(".pte")


def test_the_runner_feeds_by_name_and_refuses_a_wrong_input_count(conversion, digits_dir):
    shipped = next(v for v in conversion.manifest.variants if v.id == "executorch-xnnpack-fp32")
    path = conversion.out / shipped.file
    with np.load(digits_dir / "eval.npz") as npz:
        image = npz["image"][:1]
    model = torch.load(digits_dir / "digits_cnn.pt", weights_only=False).eval()
    got = open_runner(path, "executorch", ["image"], threads=1).run({"image": image})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(image)).numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="takes 1 inputs"):
        open_runner(path, "executorch", ["image", "mask"])


def test_a_model_torch_export_cannot_capture_is_refused_by_the_format(tmp_path):
    class DataDependentBranch(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x - 1

    spec = TensorSpec("x", (1, 4), "float32")
    ctx = ExportContext(model=DataDependentBranch(), inputs=[spec], outputs=[spec],
                        example={"x": np.ones((1, 4), np.float32)}, calibration=lambda: iter([]),
                        calibration_count=0, work_dir=tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"executorch: export failed: torch\.export"):
        executorch_backend.export_base(ctx)


def test_executorch_kinds_are_built_only_when_a_recipe_names_them():
    assert all(VARIANT_KINDS[kind].opt_in for kind in KINDS)
    default = {plan.request.kind.kind for plan in parse_recipe({}).variants}
    assert not default & set(KINDS) and "onnx-fp32" in default
