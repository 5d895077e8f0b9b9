"""Fixtures for the agent's tests: example releases (built once), a live server, agent settings.

Nothing here imports torch or Flask: the server and the converter run in subprocesses (see
``harness.py``), so the agent-only venv runs these tests too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentConfig
from tests.edge_agent.harness import ServerProcess, build_releases

MODEL = "digits-cnn"


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Signed digits releases v1, v2 and a golden-mismatch v3, with keys and eval data."""
    return build_releases(tmp_path_factory.mktemp("example-releases"))


@pytest.fixture
def server(tmp_path: Path, releases: dict[str, Any]) -> Iterator[ServerProcess]:
    """A fresh server with v1 and v2 published and v1 stable."""
    process = ServerProcess(tmp_path / "server", releases["keys"]["public"]).start()
    try:
        process.publish(releases["releases"]["1"])
        process.publish(releases["releases"]["2"])
        process.set_stable(MODEL, "1")
        yield process
    finally:
        process.stop()


@pytest.fixture
def agent_config(tmp_path: Path, server: ServerProcess,
                 releases: dict[str, Any]) -> Callable[..., AgentConfig]:
    """Settings for an agent of ``server``; keyword arguments override them."""

    def make(**overrides: Any) -> AgentConfig:
        values: dict[str, Any] = dict(
            server=server.url, model=MODEL, state_dir=tmp_path / "agent", enroll_token=server.enroll,
            trusted_keys=[Path(releases["keys"]["public"])], device_class="linux-x86_64",
            check_interval_seconds=0.5, report_interval_seconds=1.0, backoff_initial_seconds=0.2,
            backoff_max_seconds=1.0, variant_backoff_seconds=60.0, threads=1,
        )
        values.update(overrides)
        return AgentConfig(**values)

    return make


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")
