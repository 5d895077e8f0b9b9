"""Edge cases of the contract that a device relies on when it judges a model."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship.contract.fidelity import fidelity, per_sample_cosine
from edgeship.contract.manifest import MODEL_NAME_PATTERN, ManifestError, check_manifest


def test_zero_outputs_do_not_agree_with_a_reference_that_is_not_zero():
    reference = [np.ones((4, 8), dtype=np.float32)]
    zeros = [np.zeros((4, 8), dtype=np.float32)]
    assert per_sample_cosine(zeros, reference).tolist() == [0.0] * 4
    assert fidelity(zeros, reference, classification=False, agreement_cosine=0.99)["agreement"] == 0.0


def test_zero_outputs_agree_with_a_zero_reference():
    zeros = [np.zeros((2, 3), dtype=np.float32)]
    assert per_sample_cosine(zeros, zeros).tolist() == [1.0, 1.0]


def test_a_model_name_with_a_trailing_newline_is_not_a_name():
    assert MODEL_NAME_PATTERN.match("digits-cnn")
    assert not MODEL_NAME_PATTERN.match("digits-cnn\n")


def test_a_manifest_with_no_variant_is_refused():
    tensor = {"shape": [1], "dtype": "float32"}
    manifest = {"schema": "edgeship.manifest/v1", "model": "digits-cnn", "version": "1",
                "task": {"kind": "classification", "inputs": [{"name": "x", **tensor}],
                         "outputs": [{"name": "y", **tensor}]},
                "reference": {}, "golden": {"file": "golden.npz", "sha256": "a" * 64}, "variants": []}
    with pytest.raises(ManifestError, match="variants: must list at least one variant"):
        check_manifest(manifest)
