"""CoreML backend against the real toolchain (torch.jit.trace + coremltools).

Conversion and spec inspection run on any host; prediction only on macOS, so the runner test
checks the predict path on macOS and the refusal everywhere else.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from converter.catalogue import VARIANT_KINDS
from converter.errors import UnsupportedModelError, VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
from converter.specs import TensorSpec
from edgeship.runtimes import RuntimeUnavailable, open_runner

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")

from converter.export import coreml, coreml_package  # noqa: E402 - after the toolchain check
from converter.export.dispatch import build_variant  # noqa: E402

pytestmark = pytest.mark.slow

KINDS = ("coreml-fp16", "coreml-int8-weights", "coreml-palettized-4bit")
SEQ = 16


class TinyCNN(torch.nn.Module):
    """Conv + BatchNorm + Linear; conv2 (18k weights) is large enough to compress."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 128, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(128)
        self.fc = torch.nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class TinyEncoder(torch.nn.Module):
    """A one-layer BERT-style encoder: token + position embeddings, attention, MLP, classifier."""

    def __init__(self, vocab: int = 1000, dim: int = 64) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, dim)
        self.positions = torch.nn.Parameter(torch.randn(1, SEQ, dim) * 0.02)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm1 = torch.nn.LayerNorm(dim)
        self.up = torch.nn.Linear(dim, 4 * dim)
        self.down = torch.nn.Linear(4 * dim, dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, 2)
        self.scale = dim**-0.5

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.tokens(input_ids) + self.positions
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        bias = (1.0 - attention_mask[:, None, :].float()) * -1e4
        attn = torch.softmax(q @ k.transpose(1, 2) * self.scale + bias, dim=-1)
        h = self.norm1(h + self.proj(attn @ v))
        h = self.norm2(h + self.down(torch.nn.functional.gelu(self.up(h))))
        return self.head(h[:, 0])


class Lgamma(torch.nn.Module):
    """Uses ``torch.lgamma``, which coremltools has no converter for."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.lgamma(x))


def _context(model: torch.nn.Module, inputs: list[TensorSpec], work_dir: Path) -> ExportContext:
    rng = np.random.default_rng(0)
    example = {
        s.name: (
            rng.integers(0, 1000, s.shape).astype(s.np_dtype)
            if s.is_integer
            else rng.standard_normal(s.shape).astype(s.np_dtype)
        )
        for s in inputs
    }
    if "attention_mask" in example:
        example["attention_mask"][:] = 1
    model.eval()
    with torch.no_grad():
        out = model(*(torch.from_numpy(example[s.name]) for s in inputs))
    name = "logits"
    outputs = [TensorSpec(name, tuple(out.shape), "float32")]
    work_dir.mkdir(parents=True, exist_ok=True)
    return ExportContext(model, inputs, outputs, example, lambda: iter(()), 0, work_dir)


def _cnn_ctx(work_dir: Path) -> ExportContext:
    torch.manual_seed(0)
    return _context(TinyCNN(), [TensorSpec("image", (1, 3, 16, 16), "float32")], work_dir)


def _encoder_ctx(work_dir: Path) -> ExportContext:
    torch.manual_seed(0)
    inputs = [
        TensorSpec("input_ids", (1, SEQ), "int64"),
        TensorSpec("attention_mask", (1, SEQ), "int64"),
    ]
    return _context(TinyEncoder(), inputs, work_dir)


def _request(kind: str, **options: object) -> VariantRequest:
    variant = VARIANT_KINDS[kind]
    return VariantRequest(kind, variant, {**variant.options, **options})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportContext, dict[str, BuiltVariant]]:
    ctx = _encoder_ctx(tmp_path_factory.mktemp("coreml-encoder"))
    base = coreml.export_base(ctx)
    return ctx, {k: build_variant(_request(k), base, ctx) for k in KINDS}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportContext, dict[str, BuiltVariant]]:
    ctx = _cnn_ctx(tmp_path_factory.mktemp("coreml-cnn"))
    base = coreml.export_base(ctx)
    return ctx, {k: build_variant(_request(k), base, ctx) for k in KINDS}


@pytest.mark.parametrize("model", ["encoder", "cnn"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_builds_a_valid_zip(model: str, kind: str, request: pytest.FixtureRequest) -> None:
    ctx, built = request.getfixturevalue(model)
    variant = built[kind]
    assert variant.path == ctx.work_dir / f"{kind}.mlpackage.zip"
    assert variant.precision == VARIANT_KINDS[kind].precision
    assert coreml.inspect_artifact(variant, ctx) == []
    assert variant.details["weight_ops"]
    with zipfile.ZipFile(variant.path) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert "model.mlpackage/Manifest.json" in names
    assert "model.mlpackage/Data/com.apple.CoreML/model.mlmodel" in names
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)


def test_weights_and_targets_match_each_kind(encoder: tuple) -> None:
    _, built = encoder
    fp16, int8, lut = (built[k] for k in KINDS)
    assert fp16.compression == ["fp16:compute"]
    assert fp16.details["minimum_deployment_target"] == "iOS15"
    assert set(fp16.details["weight_ops"]) == {"const_float16"}
    assert int8.compression[-1] == "quant:weights:linear-int8:per-channel"
    assert int8.details["minimum_deployment_target"] == "iOS16"
    assert set(int8.details["weight_ops"]) == {"constexpr_affine_dequantize"}
    assert lut.compression[-1] == "palettize:kmeans:4bit"
    assert lut.details["minimum_deployment_target"] == "iOS16"
    assert set(lut.details["weight_ops"]) == {"constexpr_lut_to_dense"}


def test_compressed_variants_are_smaller(encoder: tuple, cnn: tuple) -> None:
    for _, built in (encoder, cnn):
        sizes = {k: built[k].path.stat().st_size for k in KINDS}
        assert sizes["coreml-int8-weights"] < 0.7 * sizes["coreml-fp16"], sizes
        assert sizes["coreml-palettized-4bit"] < sizes["coreml-int8-weights"], sizes


def test_same_model_gives_the_same_sha256(encoder: tuple, tmp_path: Path) -> None:
    """A fresh trace and conversion (new package UUIDs, kmeans run) gives identical bytes."""
    _, built = encoder
    ctx = _encoder_ctx(tmp_path)
    base = coreml.export_base(ctx)
    for kind in ("coreml-fp16", "coreml-palettized-4bit"):
        again = build_variant(_request(kind), base, ctx)
        assert _sha256(again.path) == _sha256(built[kind].path), kind


def test_inspect_detects_a_wrong_precision_claim(encoder: tuple) -> None:
    ctx, built = encoder
    fp16 = built["coreml-fp16"].path
    as_int8 = coreml.inspect_artifact(BuiltVariant(fp16, "int8-weights"), ctx)
    assert any("no linear-quantization op" in p for p in as_int8)
    int8 = built["coreml-int8-weights"].path
    assert coreml.inspect_artifact(BuiltVariant(int8, "fp16"), ctx)
    lut = built["coreml-palettized-4bit"].path
    as_2bit = coreml.inspect_artifact(BuiltVariant(lut, "palettized-2bit"), ctx)
    assert any("LUTs are 4-bit" in p for p in as_2bit)


def test_inspect_detects_a_tampered_input(encoder: tuple, tmp_path: Path) -> None:
    from coremltools.proto import Model_pb2

    ctx, built = encoder
    package = coreml_package.unzip_package(built["coreml-fp16"].path, tmp_path / "unzipped")
    spec_path = package / "Data/com.apple.CoreML/model.mlmodel"
    spec = Model_pb2.Model.FromString(spec_path.read_bytes())
    spec.description.input[0].name = "token_ids"
    spec_path.write_bytes(spec.SerializeToString())
    tampered = tmp_path / "tampered.mlpackage.zip"
    coreml_package.zip_package(package, tampered)
    problems = coreml.inspect_artifact(BuiltVariant(tampered, "fp16"), ctx)
    assert any("token_ids" in p for p in problems), problems

    wrong_shape = [TensorSpec(s.name, (1, 32), s.dtype) for s in ctx.inputs]
    other = ExportContext(ctx.model, wrong_shape, ctx.outputs, ctx.example, ctx.calibration, 0, ctx.work_dir)
    problems = coreml.inspect_artifact(built["coreml-fp16"], other)
    assert any("shape [1, 16], expected [1, 32]" in p for p in problems), problems


def test_inspect_reports_a_file_that_is_not_a_package(tmp_path: Path, encoder: tuple) -> None:
    ctx, _ = encoder
    junk = tmp_path / "junk.mlpackage.zip"
    with zipfile.ZipFile(junk, "w") as archive:
        archive.writestr("model.mlpackage/Manifest.json", "{}")
    problems = coreml.inspect_artifact(BuiltVariant(junk, "fp16"), ctx)
    assert len(problems) == 1 and "not a loadable CoreML package" in problems[0]


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    spec = TensorSpec("x", (1, 8), "float32")
    ctx = _context(Lgamma(), [spec], tmp_path)
    with pytest.raises(UnsupportedModelError) as err:
        coreml.export_base(ctx)
    assert err.value.format == "coreml"
    assert err.value.op == "lgamma"
    assert "\n" not in str(err.value)


def test_nothing_to_compress_is_not_applicable(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ctx = _context(torch.nn.Linear(8, 4), [TensorSpec("x", (1, 8), "float32")], tmp_path)
    base = coreml.export_base(ctx)
    with pytest.raises(NotApplicable):
        build_variant(_request("coreml-int8-weights"), base, ctx)


def test_bad_option_is_a_variant_build_error(encoder: tuple) -> None:
    ctx, _ = encoder
    with pytest.raises(VariantBuildError, match="granularity"):
        build_variant(_request("coreml-int8-weights", granularity="per_row"), None, ctx)
    with pytest.raises(VariantBuildError, match="nbits"):
        build_variant(_request("coreml-palettized-4bit", nbits=5), None, ctx)


def test_runner_predicts_on_macos_and_refuses_elsewhere(encoder: tuple) -> None:
    ctx, built = encoder
    names = [s.name for s in ctx.inputs]
    path = built["coreml-fp16"].path
    if sys.platform != "darwin":
        with pytest.raises(RuntimeUnavailable, match="CoreML prediction requires macOS"):
            open_runner(path, "coreml", input_names=names)
        return
    runner = open_runner(path, "coreml", input_names=names)
    assert runner.runtime == "coreml" and runner.version.startswith("coremltools ")
    (logits,) = runner.run(ctx.example)
    with torch.no_grad():
        expected = ctx.model(*ctx.example_tensors()).numpy()
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    np.testing.assert_allclose(logits, expected, atol=5e-2, rtol=5e-2)


def test_runner_imports_neither_torch_nor_coremltools_off_macos(encoder: tuple) -> None:
    _, built = encoder
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edgeship.runtimes import RuntimeUnavailable\n"
        "from edgeship.runtimes.coreml import CoreMLRunner\n"
        "try:\n"
        f"    CoreMLRunner(Path({str(built['coreml-fp16'].path)!r}), ['input_ids'])\n"
        "except RuntimeUnavailable:\n"
        "    pass\n"
        "if sys.platform != 'darwin':  # on macOS coremltools itself probes for torch\n"
        "    assert 'torch' not in sys.modules and 'coremltools' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root)


def test_runner_glue_with_a_stubbed_prediction(
    encoder: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The macOS path up to Core ML itself: unzip once, load the spec, cast feeds, order outputs."""
    import coremltools as ct

    ctx, built = encoder
    seen: dict[str, np.ndarray] = {}

    def predict(self: object, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.update(feeds)
        return {"logits": np.array([[1.5, -2.0]], dtype=np.float16)}

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(ct.models.MLModel, "predict", predict)
    from edgeship.runtimes.coreml import CoreMLRunner

    names = [s.name for s in ctx.inputs]
    runner = CoreMLRunner(built["coreml-fp16"].path, names, cache_dir=tmp_path)
    assert runner.version == f"coremltools {ct.__version__}"
    assert runner.output_names == ["logits"]
    (logits,) = runner.run(ctx.example)
    assert logits.dtype == np.float32 and logits.tolist() == [[1.5, -2.0]]
    assert {n: a.dtype for n, a in seen.items()} == {n: np.dtype(np.int32) for n in names}
    unpacked = list(tmp_path.glob("*/model.mlpackage/Manifest.json"))
    assert len(unpacked) == 1
    CoreMLRunner(built["coreml-fp16"].path, names, cache_dir=tmp_path)  # reuses the unzip
    assert list(tmp_path.glob("*/model.mlpackage/Manifest.json")) == unpacked
