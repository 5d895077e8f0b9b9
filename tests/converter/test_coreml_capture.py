"""How the CoreML backend captures a model: shape arithmetic on the TorchScript path, dict
outputs, and a trace that froze data-dependent control flow is caught, not shipped."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from converter.catalogue import VARIANT_KINDS
from converter.errors import UnsupportedModelError
from converter.export.base import ExportContext, VariantRequest
from converter.progress import Progress
from converter.reference import fit_check
from converter.specs import TensorSpec

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")

from converter.export import coreml  # noqa: E402 - after the toolchain check
from converter.export.dispatch import build_variant  # noqa: E402

pytestmark = pytest.mark.slow


class ShapeArithmetic(torch.nn.Module):
    """``int(h * w)`` and ``size()`` of traced shapes, a slice bounded by them, ``new_ones`` of a
    bool mask and ``torch.diff``: what coremltools 9.0 refused in Hugging Face models
    (numpy >= 2.4; no ``new_ones``/``diff`` converters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, int(h * w))
        half = flat[..., : flat.size(-1) // 2]
        keep = half.new_ones((), dtype=torch.bool) & (half > -3.0)
        steps = torch.diff(half, dim=-1, prepend=half[..., :1])
        return self.fc(torch.where(keep, steps, torch.zeros_like(steps)).mean(-1))


class TwoOutputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.fc(x)
        return {"embedding": torch.tanh(h), "score": h.sum(-1, keepdim=True)}


class SignBranch(torch.nn.Module):
    """A Python ``if`` on a tensor: a trace keeps only the example's branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 if x.sum() > 0 else x - 1.0


def context(model: torch.nn.Module, shape: tuple[int, ...], tmp_path: Path,
            calibration: list[np.ndarray] | None = None) -> tuple[ExportContext, io.StringIO]:
    torch.manual_seed(0)
    spec = TensorSpec("x", shape, "float32")
    example = {"x": np.abs(np.random.default_rng(0).standard_normal(shape)).astype(np.float32)}
    samples = [{"x": a} for a in (calibration or [])]
    log = io.StringIO()
    ctx = ExportContext(model.eval(), [spec], fit_check(model, [spec], example), example,
                        lambda: iter(samples), len(samples), tmp_path, Progress(stream=log))
    return ctx, log


def test_shape_arithmetic_converts_on_the_torchscript_path(tmp_path):
    ctx, log = context(ShapeArithmetic(), (1, 4, 4, 4), tmp_path)
    base = coreml.export_base(ctx)
    assert "TorchScript path failed" not in log.getvalue()
    assert isinstance(base.traced, torch.jit.ScriptModule)


def test_dict_outputs_keep_their_names_and_order(tmp_path):
    ctx, _ = context(TwoOutputs(), (1, 8), tmp_path)
    assert [s.name for s in ctx.outputs] == ["embedding", "score"]
    base = coreml.export_base(ctx)
    kind = VARIANT_KINDS["coreml-fp16"]
    built = build_variant(VariantRequest(kind.kind, kind, dict(kind.options)), base, ctx)
    assert coreml.inspect_artifact(built, ctx) == []


def test_a_trace_that_froze_a_branch_is_not_converted(tmp_path):
    negative = [-np.ones((1, 8), np.float32), -2 * np.ones((1, 8), np.float32)]
    ctx, log = context(SignBranch(), (1, 8), tmp_path, calibration=negative)
    with pytest.raises(UnsupportedModelError) as err:
        coreml.export_base(ctx)
    assert "control flow frozen" in err.value.detail
    assert "torch.export" in err.value.detail
    assert "trying torch.export" in log.getvalue()


def test_a_branch_every_sample_takes_still_converts(tmp_path):
    positive = [np.ones((1, 8), np.float32)]
    ctx, _ = context(SignBranch(), (1, 8), tmp_path, calibration=positive)
    assert coreml.export_base(ctx).model is not None
