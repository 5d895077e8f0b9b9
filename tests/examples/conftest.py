"""Fixtures for the demo's tests: one work directory with the example releases built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.skip_policy import require_module

#: variant kinds of the tests' releases: one per runtime is enough, and converts faster.
TEST_KINDS = ("onnx-fp32", "tflite-fp32")


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--workdir`` whose ``example/`` holds the signed releases (trained and converted once)."""
    require_module("torch")
    require_module("flask")
    from examples.demo.prepare import ensure_releases
    from examples.demo.processes import Children

    workdir = tmp_path_factory.mktemp("demo")
    ensure_releases(workdir / "example", Children(), kinds=TEST_KINDS, say=lambda _: None)
    return workdir
