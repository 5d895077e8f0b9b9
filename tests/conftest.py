"""Shared fixtures: signing keys, the trained digits example, small npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeship.contract.signing import generate_keypair

    private, _ = generate_keypair(tmp_path_factory.mktemp("keys"))
    return private


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits example trained once per session (a few seconds), files on disk."""
    pytest.importorskip("torch")
    from examples.digits import build_example

    out = tmp_path_factory.mktemp("digits")
    build_example(out, epochs=15)
    return out


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path
