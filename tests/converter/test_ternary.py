"""Ternary weights: the step on a real model, the 2-bit packing, and the packed ONNX and 2-bit
Core ML variants built, validated on onnxruntime after unpacking (Core ML: spec-checked off
macOS) and sized honestly."""

from __future__ import annotations

import io
import json
import platform
import zipfile

import numpy as np
import pytest

from converter.compress.steps import TernaryStep, parse_step
from converter.errors import RecipeError
from edgeship.runtimes import open_runner
from edgeship.runtimes.packed import (
    PackedModelError,
    PackedOnnxRunner,
    dequantize,
    pack_codes,
    read_packed,
    unpack_codes,
)

# --------------------------------------------------------------------------- parsing and packing


@pytest.mark.parametrize("entry, step", [
    ("ternary", TernaryStep()),
    ("ternary:per-channel:0.5:learned", TernaryStep(threshold=0.5, scale="learned")),
    ({"step": "ternary", "keep": ["features.0"], "fine_tune_epochs": 2},
     TernaryStep(keep=("features.0",), fine_tune_epochs=2)),
])
def test_ternary_steps_parse_and_label_back(entry, step):
    parsed = parse_step(entry, "recipe")
    assert parsed == step
    assert parse_step(parsed.label(), "recipe") == TernaryStep(parsed.threshold, parsed.scale)


@pytest.mark.parametrize("entry, fragment", [
    ("ternary:2.5", "threshold must be in"), ("ternary:binary", "neither per-channel"),
    ({"step": "ternary", "scale": "max"}, "scale must be one of"),
])
def test_bad_ternary_steps_are_refused(entry, fragment):
    with pytest.raises(RecipeError, match=fragment):
        parse_step(entry, "recipe")


@pytest.mark.parametrize("count", [1, 4, 7, 1001])
def test_codes_pack_four_to_a_byte_and_unpack_to_the_same_codes(count):
    codes = np.random.default_rng(count).integers(-1, 2, count).astype(np.int8)
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.size == -(-count // 4)
    assert np.array_equal(unpack_codes(packed, count), codes)


def test_packing_layout_and_bad_input_are_as_documented():
    assert pack_codes(np.array([1, -1, 0, 1])).tolist() == [0b01_00_10_01]  # first code in the low bits
    with pytest.raises(PackedModelError, match="code 3"):
        unpack_codes(np.array([0b11], np.uint8), 1)
    with pytest.raises(PackedModelError, match="need 9"):
        unpack_codes(np.zeros(2, np.uint8), 9)
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        pack_codes(np.array([2]))
    codes = np.array([[1, 0], [-1, 1], [0, -1]], np.int8)  # scales along the last axis
    assert np.array_equal(dequantize(codes, np.array([2.0, 3.0]), (3, 2), 1),
                          np.array([[2, 0], [-2, 3], [0, -3]], np.float32))


# --------------------------------------------------------------------------- the step

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits_env(digits_dir):
    from converter.compress.env import StepEnv
    from converter.compress.steps import Training
    from converter.compress.training import TrainingSet
    from converter.data import SampleSet
    from converter.progress import Progress
    from converter.specs import parse_input_spec
    from examples.digits import DigitsCNN, load_split

    specs = [parse_input_spec("image:1x1x8x8:float32")]
    x_tr, y_tr, x_te, y_te = load_split()
    model = DigitsCNN()
    model.load_state_dict(torch.load(digits_dir / "weights.pt", weights_only=True))
    env = StepEnv(specs, {"image": np.zeros((1, 1, 8, 8), np.float32)},
                  TrainingSet.from_samples(SampleSet(specs, {"image": x_tr}, y_tr)),
                  SampleSet(specs, {"image": x_te}, y_te), Training(fine_tune_epochs=2),
                  Progress(io.StringIO()))
    return model.eval(), env


def channel_values(weight: torch.Tensor) -> int:
    return max(len(row.unique()) for row in weight.detach().reshape(weight.shape[0], -1))


@pytest.mark.parametrize("scale", ["mean", "learned"])
def test_every_ternarised_channel_holds_at_most_three_values_and_kept_layers_stay_float(digits_env, scale):
    from converter.compress.chain import ModelChain

    model, env = digits_env
    step = TernaryStep(scale=scale, keep=("features.0", "head.3"))
    result = ModelChain(model, env).apply((step,))
    details, ternary = result.records[0].details, result.module
    assert set(details["layers"]) == {"features.3", "features.7", "head.1"}
    for name in details["layers"]:
        weight = ternary.get_submodule(name).weight
        assert channel_values(weight) <= 3 and details["layers"][name]["values_per_channel"] <= 3
        magnitudes = weight.detach().abs().reshape(weight.shape[0], -1)
        assert all(len(row[row > 0].unique()) <= 1 for row in magnitudes)  # ±scale_c and 0
    for name in step.keep:  # fine-tuned along, but float
        assert channel_values(ternary.get_submodule(name).weight) > 3
    assert len(details["fine_tune"]) == 2 and 0.8 < details["ternary_share"] < 1.0
    assert not any("parametrizations" in k for k in ternary.state_dict())  # plain weights again


def test_an_unknown_keep_name_fails_the_step_naming_it(digits_env):
    from converter.compress.chain import ModelChain
    from converter.errors import CompressionError

    model, env = digits_env
    with pytest.raises(CompressionError, match=r"keep names no Conv/Linear module: features\.1"):
        ModelChain(model, env).apply((TernaryStep(keep=("features.1",)),))


# --------------------------------------------------------------------------- variants on the runtime


#: Wide gates: these tests are about storage and the runtime, not where two epochs of
#: fine-tuning land (a 0.9-point drop on one machine); a broken unpacking still fails them.
RECIPE = """
[gates]
max_accuracy_drop = 0.05
min_agreement = 0.9

[compression]
fine_tune_epochs = 2

[[variants]]
kind = "onnx-int8-static"

[[variants]]
kind = "onnx-fp32"
id = "onnx-ternary"
steps = ["ternary:per-channel:0.7"]

[[variants]]
kind = "onnx-ternary-packed"
steps = ["ternary:per-channel:0.7"]

[[variants]]
kind = "onnx-ternary-packed"
id = "packed-dense"

[[variants]]
kind = "coreml-palettized-2bit"
steps = ["ternary:per-channel:0.7"]
"""


@pytest.fixture(scope="module")
def ternary_release(digits_dir, signing_key, tmp_path_factory):
    from converter import run_conversion
    from converter.progress import Progress

    work = tmp_path_factory.mktemp("ternary")
    (work / "recipe.toml").write_text(RECIPE)
    conversion = run_conversion(
        digits_dir / "digits_cnn.pt", ["image:1x1x8x8:float32"], digits_dir / "eval.npz",
        work / "release", calib_data=digits_dir / "calib.npz", train_data=digits_dir / "train.npz",
        recipe=work / "recipe.toml", model_name="digits-cnn", signing_key=signing_key,
        progress=Progress(quiet=True),
    )
    return work / "release", {r.id: r for r in conversion.results}


@pytest.mark.slow
def test_packed_variant_runs_unpacked_on_onnxruntime_like_the_ternary_export(ternary_release, digits_dir):
    release, results = ternary_release
    packed, plain = results["onnx-ternary-packed"], results["onnx-ternary"]
    assert packed.status == "passed" and plain.status == "passed", (packed.reason, plain.reason)
    manifest = {v["id"]: v for v in json.loads((release / "manifest.json").read_text())["variants"]}
    entry = manifest["onnx-ternary-packed"]
    assert entry["file"] == "onnx-ternary-packed.onnx.pack" and entry["format"] == "onnx"
    assert entry["precision"] == "ternary-2bit-packed" and entry["runtime"]["name"] == "onnxruntime-packed"
    assert entry["compression"] == ["ternary:per-channel:0.7", "pack:ternary:2bit:per-channel"]
    # what a device does: open_runner on the shipped file unpacks it; outputs = the float export's
    images = np.load(digits_dir / "eval.npz")["image"][:64]
    runner = open_runner(release / entry["file"], "onnx", ["image"], threads=1)
    assert isinstance(runner, PackedOnnxRunner)
    float_runner = open_runner(release / manifest["onnx-ternary"]["file"], "onnx", ["image"], threads=1)
    for image in images:
        got, want = runner.run({"image": image[None]})[0], float_runner.run({"image": image[None]})[0]
        assert np.abs(got - want).max() <= 1e-5
    assert packed.metrics["accuracy"] == plain.metrics["accuracy"]


@pytest.mark.slow
def test_packed_size_is_reported_on_the_wire_and_in_memory(ternary_release):
    release, results = ternary_release
    packed, int8, plain = results["onnx-ternary-packed"], results["onnx-int8-static"], results["onnx-ternary"]
    details = packed.built.details
    # the wire: 2 bits per packed weight plus the float rest, well under int8's 8 bits
    assert packed.size_bytes == details["wire_bytes"] == (release / packed.built.path.name).stat().st_size
    assert packed.size_bytes < int8.size_bytes < plain.size_bytes
    assert packed.size_bytes < plain.size_bytes / 4
    # memory: the runtime keeps every packed weight as float32, no saving there
    assert details["unpacked_bytes"] == 4 * details["packed_weights"]
    assert details["runtime_weight_bytes"] == 4 * (details["packed_weights"] + details["float_weights_left"])
    assert details["runtime_weight_bytes"] > 0.9 * plain.size_bytes
    _, tensors = read_packed(release / packed.built.path.name)
    assert sum(t.count for t in tensors) == details["packed_weights"] and len(tensors) == 5
    md = (release / "report.md").read_text()
    assert f"`onnx-ternary-packed` ships {details['wire_bytes']:,} B" in md
    assert f"keeps {details['runtime_weight_bytes']:,} B of float32 weights" in md
    # no ternary step, nothing to pack: skipped, saying why
    assert results["packed-dense"].status == "skipped"
    assert "put a 'ternary' step" in results["packed-dense"].reason


@pytest.mark.slow
def test_a_packed_file_with_another_scheme_is_refused_at_load(ternary_release, tmp_path):
    release, results = ternary_release
    source = release / results["onnx-ternary-packed"].built.path.name
    forged = tmp_path / "forged.onnx.pack"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(forged, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "header.json":
                data = data.replace(b"edgeship.ternary-2bit/v1", b"edgeship.ternary-2bit/v9")
            dst.writestr(name, data)
    with pytest.raises(PackedModelError, match="v9"):
        open_runner(forged, "onnx", ["image"])


@pytest.mark.slow
def test_coreml_two_bit_palettes_are_spec_checked_and_not_validated_off_macos(ternary_release):
    _, results = ternary_release
    coreml = results["coreml-palettized-2bit"]
    assert coreml.precision == "palettized-2bit"
    assert coreml.compression[-1] == "palettize:kmeans:2bit:group1"
    assert coreml.built.details["minimum_deployment_target"] == "iOS18"
    assert coreml.built.details["weight_ops"].get("constexpr_lut_to_dense", 0) >= 3
    if platform.system() != "Darwin":
        assert coreml.status == "not_validated"
        assert "CoreML prediction requires macOS" in coreml.reason and "spec checked" in coreml.reason
    else:
        assert coreml.status == "passed", coreml.reason
