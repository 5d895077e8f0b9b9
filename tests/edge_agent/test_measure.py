"""The measuring process the converter uses: real runtime, outputs, latencies, own memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.skip_policy import COREML_NEEDS_MACOS, dev_venv_only, require_module

ROOT = Path(__file__).resolve().parents[2]


def tiny_onnx(path: Path) -> Path:
    onnx = dev_venv_only("onnx")  # builds the model; the agent venv has only onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_measure_process_runs_every_sample_and_reports_its_own_memory(tmp_path):
    require_module("onnxruntime")
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", x=x)
    request = {"model": str(tiny_onnx(tmp_path / "m.onnx")), "format": "onnx",
               "inputs": str(tmp_path / "inputs.npz"), "input_names": ["x"], "batch": 1,
               "threads": 1, "warmup": 2, "out": str(tmp_path / "out.npz")}
    (tmp_path / "req.json").write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, "-m", "edgeship.runtimes.measure", str(tmp_path / "req.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["runtime"] == "onnxruntime" and len(result["latencies_ms"]) == 6
    # its own peak, not the parent's: far below what a torch-loaded parent would show
    assert 0 < result["peak_rss_bytes"] < 400 * 2**20
    with np.load(tmp_path / "out.npz") as out:
        expected = x @ np.arange(12, dtype=np.float32).reshape(4, 3)
        np.testing.assert_allclose(out["output_0"], expected, rtol=1e-5)


def test_measure_reports_an_unavailable_runtime_instead_of_crashing(tmp_path):
    if sys.platform == "darwin":
        pytest.skip(f"{COREML_NEEDS_MACOS} on macOS it predicts, this checks the refusal elsewhere")
    np.savez(tmp_path / "inputs.npz", x=np.zeros((1, 4), np.float32))
    request = {"model": str(tmp_path / "m.mlpackage.zip"), "format": "coreml",
               "inputs": str(tmp_path / "inputs.npz"), "input_names": ["x"], "batch": 1,
               "out": str(tmp_path / "out.npz")}
    (tmp_path / "req.json").write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, "-m", "edgeship.runtimes.measure", str(tmp_path / "req.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    assert "macOS" in json.loads(proc.stdout.strip().splitlines()[-1])["unavailable"]
