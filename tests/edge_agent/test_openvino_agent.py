"""OpenVINO variants on a device: a real server, real converted releases (ONNX and OpenVINO
variants of the digits CNN), real agents over HTTP. The server gives an OpenVINO variant only to
a device that reports the openvino runtime, and the agent runs it on OpenVINO and reports it.

The agent side needs the ``openvino`` package (the ``agent-openvino`` extra): the agent-only
venv, which has only the ``agent`` extra, skips this module by design.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.skip_policy import dev_venv_only

dev_venv_only("openvino")

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.device import describe, installed_runtimes  # noqa: E402
from edge_agent.runtime_probe import probe_runtimes  # noqa: E402
from tests.edge_agent.conftest import MODEL, wait_until  # noqa: E402
from tests.edge_agent.harness import ROOT, ServerProcess, toolchain_python  # noqa: E402
from tests.edge_agent.test_agent_e2e import eval_batches, feed  # noqa: E402

pytestmark = pytest.mark.slow
KINDS = "onnx-fp32,openvino-fp16,openvino-int8"


@pytest.fixture(scope="module")
def openvino_releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``examples.releases`` with ONNX and OpenVINO kinds, built in the toolchain interpreter."""
    out = tmp_path_factory.mktemp("openvino-releases")
    command = [toolchain_python(), "-m", "examples.releases", "--out", str(out), "--kinds", KINDS]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def openvino_server(tmp_path: Path, openvino_releases: dict[str, Any]):
    process = ServerProcess(tmp_path / "server", openvino_releases["keys"]["public"]).start()
    try:
        process.publish(openvino_releases["releases"]["1"])
        process.set_stable(MODEL, "1")
        yield process
    finally:
        process.stop()


def _manifest(releases: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(releases["releases"]["1"]) / "manifest.json").read_text())


def _agent(tmp_path: Path, server: ServerProcess, releases: dict[str, Any], name: str,
           runtimes: dict[str, str]) -> Agent:
    from edge_agent.config import AgentConfig

    config = AgentConfig(
        server=server.url, model=MODEL, state_dir=tmp_path / name, enroll_token=server.enroll,
        trusted_keys=[Path(releases["keys"]["public"])], device_class="linux-x86_64",
        check_interval_seconds=0.5, report_interval_seconds=1.0, backoff_initial_seconds=0.2,
        backoff_max_seconds=1.0, variant_backoff_seconds=60.0, threads=1,
    )
    return Agent(config, device=describe("linux-x86_64", runtimes=runtimes))


def test_the_openvino_runtime_is_announced_when_its_probe_passes():
    assert "openvino" in installed_runtimes()
    outcome = probe_runtimes(["openvino"])["openvino"]
    assert outcome.loaded, outcome.detail


def test_only_a_device_reporting_openvino_gets_and_runs_an_openvino_variant(tmp_path, openvino_server,
                                                                            openvino_releases):
    manifest = _manifest(openvino_releases)
    formats = {v["id"]: v["format"] for v in manifest["variants"]}
    assert {"openvino-fp16", "onnx-fp32"} <= set(formats), formats
    openvino_version = installed_runtimes()["openvino"]
    onnx_version = installed_runtimes()["onnxruntime"]
    ov_agent = _agent(tmp_path, openvino_server, openvino_releases, "ov", {"openvino": openvino_version})
    ort_agent = _agent(tmp_path, openvino_server, openvino_releases, "ort", {"onnxruntime": onnx_version})
    images, labels = eval_batches(openvino_releases)
    for agent in (ov_agent, ort_agent):
        agent.start()
    try:
        wait_until(lambda: ov_agent.current is not None and ort_agent.current is not None,
                   timeout=60, what="both agents running a model")
        assert formats[ov_agent.current.variant_id] == "openvino"
        assert formats[ort_agent.current.variant_id] == "onnx"
        # the OpenVINO model answers the eval set as the release's reference did
        answers = [int(np.argmax(ov_agent.predict({"image": images[i][None]}, label=labels[i])[0]))
                   for i in range(50)]
        assert np.mean(np.array(answers) == labels[:50]) >= 0.9
        feed(ort_agent, images, labels, 10)
        ran = ov_agent.current.variant_id
        wait_until(lambda: any(r["variant_id"] == ran for r in openvino_server.reports()),
                   timeout=60, what="the server holding a report of the OpenVINO variant")
    finally:
        for agent in (ov_agent, ort_agent):
            agent.stop()
    assert formats[ort_agent.current.variant_id] == "onnx"  # never moved to an OpenVINO variant
