from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from converter.errors import OutputError
from converter.staging import staged_directory
from edgeship.contract.fidelity import accuracy, fidelity


def test_fidelity_of_identical_and_perturbed_outputs():
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=(50, 10)).astype(np.float32)]
    same = fidelity(ref, ref, classification=True, agreement_cosine=0.99)
    assert same == {"agreement": 1.0, "max_abs_err": 0.0, "cosine": pytest.approx(1.0)}
    flipped = [ref[0].copy()]
    flipped[0][:5] *= -1  # five samples now point the other way
    result = fidelity(flipped, ref, classification=True, agreement_cosine=0.99)
    assert result["agreement"] <= 0.9 + 1e-9
    assert result["max_abs_err"] > 0
    embedding = fidelity(flipped, ref, classification=False, agreement_cosine=0.99)
    assert embedding["agreement"] == pytest.approx(0.9)


def test_fidelity_refuses_mismatched_outputs():
    with pytest.raises(ValueError, match="outputs"):
        fidelity([np.zeros((2, 3))], [np.zeros((2, 3))] * 2, True, 0.99)
    with pytest.raises(ValueError, match="shape"):
        fidelity([np.zeros((2, 4))], [np.zeros((2, 3))], True, 0.99)


def test_accuracy():
    assert accuracy(np.eye(4), np.array([0, 1, 2, 0])) == 0.75


def test_staged_directory_renames_on_success_and_cleans_up_on_failure(tmp_path):
    out = tmp_path / "release"
    with pytest.raises(RuntimeError), staged_directory(out) as stage:
        (stage / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash mid-write")
    assert not out.exists() and os.listdir(tmp_path) == []
    with staged_directory(out) as stage:
        (stage / "a.txt").write_text("v1")
    assert (out / "a.txt").read_text() == "v1"
    with pytest.raises(OutputError, match="already exists"), staged_directory(out):
        pass
    with pytest.raises(RuntimeError), staged_directory(out, force=True) as stage:
        raise RuntimeError("a failed replacement keeps the old release")
    assert (out / "a.txt").read_text() == "v1"
    with staged_directory(out, force=True) as stage:
        (stage / "b.txt").write_text("v2")
    assert sorted(os.listdir(out)) == ["b.txt"]
    assert sorted(os.listdir(tmp_path)) == ["release"]


def test_unwritable_location_is_refused_even_for_root():
    # /proc refuses new directories to every user, root included.
    with pytest.raises(OutputError, match="cannot"), staged_directory(Path("/proc/edgeship/r")):
        pass


def test_output_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create"), staged_directory(blocker / "sub" / "r"):
        pass
    with pytest.raises(OutputError, match="not a directory"), staged_directory(blocker):
        pass
