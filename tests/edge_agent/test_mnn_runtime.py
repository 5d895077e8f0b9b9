"""MNN end to end: the agent probes MNN, the server offers mnn variants only to devices that report
MNN, and the agent runs one against a real server with a release converted by the real toolchain.

The agent-only venv has no MNN (it is the optional ``agent-mnn`` extra): there these tests skip
with the allowed dev-venv reason; everywhere else a missing ``mnn`` fails under CI.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.device import describe, installed_runtimes
from edge_agent.runtime_probe import probe_runtimes
from tests.edge_agent.conftest import MODEL, wait_until
from tests.edge_agent.harness import ServerProcess, edgeship
from tests.skip_policy import dev_venv_only

MNN = dev_venv_only("MNN")  # the agent-only venv skips the module before any release is built
VERSION = "7"


@pytest.fixture(scope="module")
def mnn_release(releases: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The digits model (v1's training) converted to onnx-fp32, mnn-fp32 and mnn-int8, signed."""
    data = Path(releases["eval"]).parent / "v1"
    out = tmp_path_factory.mktemp("mnn-release") / f"{MODEL}-{VERSION}"
    recipe = out.parent / "recipe.toml"
    recipe.write_text("".join(f'[[variants]]\nkind = "{k}"\n' for k in ("onnx-fp32", "mnn-fp32", "mnn-int8")))
    edgeship("convert", "--model", data / "digits_cnn.pt", "--input", "image:1x1x8x8:float32",
             "--calib", data / "calib.npz", "--eval", data / "eval.npz", "--recipe", recipe,
             "--model-name", MODEL, "--version", VERSION, "--signing-key", releases["keys"]["private"],
             "--out", out, timeout=600)
    return str(out)


@pytest.fixture
def mnn_server(tmp_path: Path, releases: dict[str, Any], mnn_release: str) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "server", releases["keys"]["public"]).start()
    try:
        process.publish(mnn_release)
        process.set_stable(MODEL, VERSION)
        yield process
    finally:
        process.stop()


def _call(server: ServerProcess, method: str, path: str, payload: Any = None,
          credential: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(f"{server.url}{path}", method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _assignment(server: ServerProcess, runtimes: dict[str, str]) -> tuple[int, Any]:
    status, enrolled = _call(server, "POST", "/v1/devices/register", {
        "enrollment_token": server.enroll, "device_class": "linux-x86_64", "arch": "x86_64",
        "os": "Linux", "ram_bytes": 0, "runtimes": runtimes})
    assert status in (200, 201), enrolled
    return _call(server, "GET", f"/v1/devices/{enrolled['device_id']}/assignment?model={MODEL}",
                 credential=enrolled["credential"])


def test_the_mnn_probe_loads_its_embedded_model():
    outcome = probe_runtimes(["mnn"])["mnn"]
    assert outcome.loaded, outcome.detail


def test_mnn_variants_go_only_to_devices_that_report_mnn(mnn_server):
    status, body = _assignment(mnn_server, {"mnn": MNN.version()})
    assert status == 200, body
    assert body["variant"]["id"].startswith("mnn-") and body["variant"]["runtime"]["name"] == "mnn"
    status, body = _assignment(mnn_server, {"onnxruntime": "1.32.0"})
    assert status == 200 and body["variant"]["id"] == "onnx-fp32", body
    # an older major version than the one the converter validated with is not MNN enough
    status, body = _assignment(mnn_server, {"mnn": "2.9.0"})
    assert status == 409 and body["error"] == "no_variant", body


def test_an_agent_with_only_mnn_runs_an_mnn_variant_and_reports(agent_config, mnn_server, releases):
    """A device whose only runtime is MNN (what its probe found) gets an mnn variant, loads it,
    checks it against the golden set and runs it."""
    device = describe("linux-x86_64", runtimes={"mnn": installed_runtimes()["mnn"]})
    agent = Agent(agent_config(server=mnn_server.url, enroll_token=mnn_server.enroll), device=device).start()
    try:
        wait_until(lambda: agent.current is not None and agent.current.version == VERSION, timeout=90,
                   what="the mnn release installed")
        assert agent.current.variant_id.startswith("mnn-")
        with np.load(releases["eval"]) as npz:
            images, labels = npz["image"], npz["labels"]
        for i in range(20):
            agent.predict({"image": images[i][None]}, label=labels[i])
        outputs = agent.predict({"image": images[:1]})
        assert outputs[0].shape == (1, 10)
        wait_until(lambda: sum(r["inferences"] for r in mnn_server.reports()) >= 21, what="reports stored")
    finally:
        agent.stop()
    rows = mnn_server.reports()
    assert {r["variant_id"] for r in rows} == {agent.current.variant_id}
    assert sum(r["correct"] for r in rows) >= 16  # ~0.95 accurate: real answers from MNN
    assert not any(r["err_load_failed"] for r in rows)
