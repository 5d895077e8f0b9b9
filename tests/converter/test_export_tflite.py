"""TFLite backend on the real toolchain: litert-torch export, ai-edge-quantizer, LiteRT runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

from torch import nn  # noqa: E402

from converter.catalogue import VARIANT_KINDS  # noqa: E402
from converter.errors import UnsupportedModelError, VariantBuildError  # noqa: E402
from converter.export import tflite  # noqa: E402
from converter.export.base import ExportContext, VariantRequest  # noqa: E402
from converter.export.dispatch import build_variant  # noqa: E402
from converter.specs import TensorSpec  # noqa: E402
from edgeship.runtimes.litert import LiteRTRunner  # noqa: E402

pytestmark = pytest.mark.slow

SEQ, VOCAB = 16, 64


class TinyCNN(nn.Module):
    """Two conv + BatchNorm blocks and a linear head: 10 classes from 3x16x16 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Block(nn.Module):
    """One post-norm transformer encoder block with an additive attention-mask bias."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = h.shape
        qkv = self.qkv(h).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5 + bias, dim=-1)
        h = self.ln1(h + self.proj((att @ v).transpose(1, 2).reshape(b, s, d)))
        return self.ln2(h + self.ff(h))


class TinyBert(nn.Module):
    """BERT-style encoder: int64 ``input_ids`` + ``attention_mask`` -> (logits, hidden)."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, 32), nn.Embedding(SEQ, 32)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(32, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        h = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1]).unsqueeze(0))
        bias = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -1e4
        for block in self.blocks:
            h = block(h, bias)
        return self.head(h[:, 0]), h


class Cumprod(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumprod(x, dim=-1)


def _cnn_samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def _bert_samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(4, SEQ + 1))
        mask = (np.arange(SEQ) < length).astype(np.int64)[None]
        ids = rng.integers(1, VOCAB, (1, SEQ)).astype(np.int64) * mask
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _context(model, inputs, samples, work_dir: Path) -> ExportContext:
    example = samples[0]
    with torch.no_grad():
        ref = model(*(torch.from_numpy(example[s.name]) for s in inputs))
    ref = ref if isinstance(ref, tuple) else (ref,)
    outputs = [TensorSpec(f"out{i}", tuple(r.shape), "float32") for i, r in enumerate(ref)]
    return ExportContext(
        model=model, inputs=inputs, outputs=outputs, example=example,
        calibration=lambda: iter(samples), calibration_count=len(samples), work_dir=work_dir,
    )


def _torch_outputs(ctx: ExportContext, sample) -> list[np.ndarray]:
    with torch.no_grad():
        out = ctx.model(*(torch.from_numpy(sample[s.name]) for s in ctx.inputs))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _build(ctx: ExportContext, base: Path, kind: str, vid: str | None = None, **options):
    spec = VARIANT_KINDS[kind]
    request = VariantRequest(vid or kind, spec, {**spec.options, **options})
    return build_variant(request, base, ctx)


def _runner(ctx: ExportContext, built) -> LiteRTRunner:
    return LiteRTRunner(built.path, [s.name for s in ctx.inputs], io=built.io, threads=1)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    for bn in (model.bn1, model.bn2):  # non-trivial BatchNorm statistics to fold
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    inputs = [TensorSpec("image", (1, 3, 16, 16), "float32")]
    ctx = _context(model, inputs, _cnn_samples(16, 0), tmp_path_factory.mktemp("cnn"))
    return ctx, tflite.export_base(ctx)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyBert().eval()
    inputs = [TensorSpec("input_ids", (1, SEQ), "int64"),
              TensorSpec("attention_mask", (1, SEQ), "int64")]
    ctx = _context(model, inputs, _bert_samples(16, 0), tmp_path_factory.mktemp("bert"))
    return ctx, tflite.export_base(ctx)


@pytest.mark.parametrize("which, samples", [("cnn", _cnn_samples), ("bert", _bert_samples)])
def test_fp32_matches_torch(which, samples, request):
    ctx, base = request.getfixturevalue(which)
    built = _build(ctx, base, "tflite-fp32")
    assert built.path.name == "tflite-fp32.tflite" and built.io is None
    runner = _runner(ctx, built)
    assert runner.runtime == "litert"
    for sample in samples(4, 1):
        got, want = runner.run(sample), _torch_outputs(ctx, sample)
        assert [g.shape for g in got] == [w.shape for w in want]  # output order kept
        for g, w in zip(got, want, strict=True):
            assert g.dtype == np.float32
            assert np.max(np.abs(g - w)) <= 1e-4


@pytest.mark.parametrize("kind, tol", [("tflite-fp16", 1e-2), ("tflite-int8-dynamic", 0.15)])
@pytest.mark.parametrize("which, samples", [("cnn", _cnn_samples), ("bert", _bert_samples)])
def test_weight_quantized_variants_run(kind, tol, which, samples, request):
    ctx, base = request.getfixturevalue(which)
    built = _build(ctx, base, kind)
    assert built.io is None and built.compression
    assert built.path.stat().st_size < base.stat().st_size
    runner = _runner(ctx, built)
    for sample in samples(3, 2):
        for g, w in zip(runner.run(sample), _torch_outputs(ctx, sample), strict=True):
            assert np.max(np.abs(g - w)) <= tol * max(1.0, float(np.max(np.abs(w))))


def _granularity(built) -> str:
    """The weight granularity label the build's recorded per-layer choice implies."""
    chosen = built.details["weight_granularity"]
    return "per-layer" if chosen and chosen["tflite_ops_per_tensor"] else "per-channel"


def test_cnn_int8_full_integer(cnn):
    ctx, base = cnn
    built = _build(ctx, base, "tflite-int8")
    assert built.compression == [f"quant:static:int8:{_granularity(built)}", "keep-float:output-layer"]
    assert built.details["calibration"] == "minmax" and built.details["float_output_layer"]
    assert built.io is None  # float I/O, QUANTIZE/DEQUANTIZE inside the model
    assert built.details["ops"].get("QUANTIZE") and built.details["ops"].get("DEQUANTIZE")
    assert built.path.stat().st_size < base.stat().st_size
    runner = _runner(ctx, built)
    samples = _cnn_samples(32, 3)
    agree = 0
    for sample in samples:
        got, want = runner.run(sample)[0], _torch_outputs(ctx, sample)[0]
        agree += int(np.argmax(got) == np.argmax(want))
        assert np.max(np.abs(got - want)) <= 0.1 * np.max(np.abs(want)) + 0.05
    assert agree / len(samples) >= 0.8


def test_cnn_int8_integer_io(cnn):
    ctx, base = cnn
    built = _build(ctx, base, "tflite-int8", "cnn-int8-io", integer_io=True)
    (inp,), (out,) = built.io["inputs"], built.io["outputs"]
    assert inp["name"] == "image" and inp["dtype"] == "int8" and inp["scale"] > 0
    assert out["name"] == "out0" and out["dtype"] == "int8" and -128 <= out["zero_point"] <= 127
    float_io = _runner(ctx, _build(ctx, base, "tflite-int8"))
    runner = _runner(ctx, built)  # quantizes the float feed with the io block
    own_params = LiteRTRunner(built.path, ["image"])  # scale/zero point read from the model
    for sample in _cnn_samples(4, 4):
        got, want = runner.run(sample)[0], float_io.run(sample)[0]
        assert got.dtype == np.float32 and np.max(np.abs(got - want)) <= 3 * out["scale"]
        np.testing.assert_array_equal(own_params.run(sample)[0], got)


class TanhHead(nn.Module):
    """tanh(4x) then a head summing the 16 units: logits reach +-16 only when all units agree."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 4)
        with torch.no_grad():
            self.fc1.weight.copy_(4 * torch.eye(16))
            self.fc2.weight.fill_(1.0)
            self.fc2.weight[1] *= -1
            self.fc1.bias.zero_()
            self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _scaled_cnn_samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """CNN inputs whose scale varies from sample to sample (0.2 to 3, log-uniform)."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.2), np.log(3.0), n))
    return [{"image": (rng.standard_normal((1, 3, 16, 16)) * s).astype(np.float32)}
            for s in scales]


def _max_err(ctx: ExportContext, built, samples) -> tuple[float, float]:
    """Largest |tflite - torch| over the first output, and the largest |torch| logit."""
    runner = _runner(ctx, built)
    got = np.concatenate([runner.run(s)[0] for s in samples])
    want = np.concatenate([_torch_outputs(ctx, s)[0] for s in samples])
    return float(np.max(np.abs(got - want))), float(np.max(np.abs(want)))


def test_int8_ranges_are_min_max_over_all_samples(cnn, tmp_path):
    """ai-edge-quantizer's default moving average of per-sample ranges clips the larger samples;
    min/max over the calibration set does not."""
    model = cnn[0].model
    ctx = _context(model, cnn[0].inputs, _scaled_cnn_samples(32, 0), tmp_path)
    base = tflite.export_base(ctx)
    evals = _scaled_cnn_samples(32, 1)
    err, peak = _max_err(ctx, _build(ctx, base, "tflite-int8"), evals)
    assert err <= 0.05 * peak  # ~0.005 here
    moving = _build(ctx, base, "tflite-int8", "int8-ema", calibration="moving-average",
                    float_output_layer=False)  # what ai-edge-quantizer does by default
    assert moving.details["calibration"] == "moving-average"
    assert _max_err(ctx, moving, evals)[0] > 0.1 * peak  # ~0.2 here


def test_int8_float_output_layer_does_not_clip_outputs(tmp_path):
    """Eval logits twice the calibrated range: an int8 last layer clips them, a float one not."""
    rng = np.random.default_rng(0)
    calib = [{"x": rng.choice([-1.0, 1.0], (1, 16)).astype(np.float32)} for _ in range(32)]
    inputs = [TensorSpec("x", (1, 16), "float32")]
    ctx = _context(TanhHead().eval(), inputs, calib, tmp_path)
    base = tflite.export_base(ctx)
    evals = [{"x": np.full((1, 16), v, np.float32)} for v in (1.0, -1.0)]  # logits +-16
    calib_peak = max(float(np.max(np.abs(_torch_outputs(ctx, s)[0]))) for s in calib)
    built = _build(ctx, base, "tflite-int8")
    err, peak = _max_err(ctx, built, evals)
    assert peak > 1.5 * calib_peak
    assert built.details["float_output_layer"] and "keep-float:output-layer" in built.compression
    assert err <= 0.02 * peak  # ~0.1: the tanh units' int8 step, summed
    clipped = _build(ctx, base, "tflite-int8", "int8-int8-head", float_output_layer=False)
    assert clipped.compression == [f"quant:static:int8:{_granularity(clipped)}"]
    assert _max_err(ctx, clipped, evals)[0] > 0.25 * peak  # clipped at the calibrated range
    # int8 outputs come from int8 ops: the option does not apply
    io = _build(ctx, base, "tflite-int8", "int8-io", integer_io=True)
    assert not io.details["float_output_layer"] and io.io["outputs"][0]["dtype"] == "int8"


class EmbedAndLogits(nn.Module):
    """Returns ``(logits, embedding)`` with ``logits = head(embedding)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor):
        embedding = torch.tanh(self.embed(x))
        return self.head(embedding), embedding


def test_int8_output_also_read_by_the_float_head(tmp_path):
    """The DEQUANTIZE feeding both the float head and the ``embedding`` output: the signature
    must name it (ai-edge-quantizer leaves it on the int8 tensor, which XNNPACK never fills)."""
    from converter.export.tflite_common import load_interpreter
    from edgeship.runtimes.litert import signature_io

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 6)).astype(np.float32)} for _ in range(16)]
    ctx = _context(EmbedAndLogits().eval(), [TensorSpec("x", (1, 6), "float32")], samples,
                   tmp_path)
    built = _build(ctx, tflite.export_base(ctx), "tflite-int8")
    assert built.details["float_output_layer"] and built.io is None
    _, outputs = signature_io(load_interpreter(built.path))
    assert [np.dtype(d["dtype"]).name for d in outputs] == ["float32", "float32"]
    runner = _runner(ctx, built)  # default resolver: XNNPACK
    for sample in samples[:4]:
        for g, w in zip(runner.run(sample), _torch_outputs(ctx, sample), strict=True):
            assert np.max(np.abs(g - w)) <= 0.05


def test_int8_rejects_unknown_calibration(cnn):
    ctx, base = cnn
    with pytest.raises(VariantBuildError, match="calibration must be one of"):
        _build(ctx, base, "tflite-int8", "bad", calibration="entropy")


def test_bert_int8_keeps_token_ids_integer(bert):
    ctx, base = bert
    built = _build(ctx, base, "tflite-int8")
    assert built.io is None and built.path.stat().st_size < base.stat().st_size
    # float head for the logits; the hidden states also feed the head, so they stay int8
    assert len(built.details["float_output_tensors"]) == 1
    runner = _runner(ctx, built)
    samples, agree = _bert_samples(16, 5), 0
    for sample in samples:
        got, want = runner.run(sample), _torch_outputs(ctx, sample)
        assert [g.shape for g in got] == [w.shape for w in want]
        assert np.all(np.isfinite(got[0])) and np.all(np.isfinite(got[1]))
        agree += int(np.argmax(got[0]) == np.argmax(want[0]))
    # int8 LayerNorm/softmax lose more than CNNs do (mean |err| ~0.03 on logits, ~95% agree)
    assert agree / len(samples) >= 0.75
    io = _build(ctx, base, "tflite-int8", "bert-int8-io", integer_io=True).io
    assert [e["scale"] for e in io["inputs"]] == [None, None]
    assert [e["dtype"] for e in io["inputs"]] == ["int32", "int32"]
    assert all(e["dtype"] == "int8" and e["scale"] > 0 for e in io["outputs"])


def test_unsupported_op_is_named(tmp_path):
    inputs = [TensorSpec("x", (1, 8), "float32")]
    ctx = _context(Cumprod().eval(), inputs, [{"x": np.ones((1, 8), np.float32)}], tmp_path)
    with pytest.raises(UnsupportedModelError) as info:
        tflite.export_base(ctx)
    assert info.value.op == "aten.cumprod" and info.value.format == "tflite"
    assert "\n" not in str(info.value)


def test_quantizer_failure_is_a_variant_build_error(cnn, tmp_path):
    ctx, _ = cnn
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a tflite model")
    with pytest.raises(VariantBuildError, match=r"^tflite-int8-dynamic: ai-edge-quantizer: "):
        _build(ctx, bad, "tflite-int8-dynamic")
