from __future__ import annotations

import numpy as np
import pytest

from converter.data import load_samples
from converter.errors import DataError, InputSpecError
from converter.specs import TensorSpec, parse_input_spec
from tests.conftest import write_npz


def test_parse_input_spec_accepts_common_shapes():
    assert parse_input_spec("image:1x3x32x32:float32") == TensorSpec("image", (1, 3, 32, 32), "float32")
    assert parse_input_spec("input_ids:1,128:int64").shape == (1, 128)
    assert parse_input_spec("mask:(1, 16):int64").is_integer


@pytest.mark.parametrize(
    "text, fragment",
    [("image:1x3x32", "NAME:SHAPE:DTYPE"), ("image:1xAx3:float32", "not integers"),
     ("image:1x0x3:float32", "positive"), ("image:1x3:float64", "dtype"), ("1bad:1:float32", "bad name")],
)
def test_parse_input_spec_rejects_bad_specs_with_reason(text, fragment):
    with pytest.raises(InputSpecError, match=fragment):
        parse_input_spec(text)


def test_load_samples_cuts_batches_and_keeps_labels(tmp_path):
    spec = parse_input_spec("x:2x3:float32")
    path = write_npz(tmp_path / "d.npz", x=np.arange(30, dtype=np.float32).reshape(10, 3),
                     labels=np.arange(10))
    samples = load_samples(path, [spec], "evaluation")
    assert len(samples) == 5
    assert samples.sample(1)["x"].shape == (2, 3)
    assert samples.sample_labels(4).tolist() == [8, 9]
    assert len(samples.head(2)) == 2


def test_load_samples_rejects_nan_and_names_the_sample(tmp_path):
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = np.nan
    path = write_npz(tmp_path / "calib.npz", x=x)
    with pytest.raises(DataError, match=r"'x' holds 1 NaN/Inf values \(first in sample 2\)"):
        load_samples(path, [parse_input_spec("x:1x3:float32")], "calibration")


def test_load_samples_rejects_inf(tmp_path):
    x = np.zeros((4, 3), np.float32)
    x[0, 0] = np.inf
    with pytest.raises(DataError, match="NaN/Inf"):
        load_samples(write_npz(tmp_path / "c.npz", x=x), [parse_input_spec("x:1x3:float32")], "calibration")


@pytest.mark.parametrize(
    "arrays, fragment",
    [({"y": np.zeros((4, 3))}, "no array 'x'"),
     ({"x": np.zeros((4, 5))}, "expected Nx3"),
     ({"x": np.zeros((4, 3)), "labels": np.zeros(3)}, "3 labels for 4 samples")],
)
def test_load_samples_names_the_problem(tmp_path, arrays, fragment):
    path = write_npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=fragment):
        load_samples(path, [parse_input_spec("x:1x3:float32")], "evaluation")


def test_integer_inputs_must_be_whole_numbers(tmp_path):
    spec = parse_input_spec("ids:1x4:int64")
    ok = load_samples(write_npz(tmp_path / "a.npz", ids=np.ones((2, 4), np.float32)), [spec], "evaluation")
    assert ok.sample(0)["ids"].dtype == np.int64
    with pytest.raises(DataError, match="fractional"):
        load_samples(write_npz(tmp_path / "b.npz", ids=np.full((2, 4), 0.5)), [spec], "evaluation")


def test_missing_or_corrupt_npz_is_a_data_error(tmp_path):
    spec = [parse_input_spec("x:1x3:float32")]
    with pytest.raises(DataError, match="does not exist"):
        load_samples(tmp_path / "none.npz", spec, "evaluation")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_samples(bad, spec, "evaluation")
