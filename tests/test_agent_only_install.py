"""The agent extra alone: no torch, coremltools, Flask or converter toolchains, and the agent runs.

``make test`` runs this file in a venv with only ``pip install -e .[agent]`` (with
``EDGESHIP_AGENT_ONLY=1``); in the full dev venv it checks the import boundary instead.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skip_policy import AGENT_VENV_ONLY, agent_only_venv

ROOT = Path(__file__).resolve().parents[1]
NEVER_ON_A_DEVICE = ("torch", "coremltools", "flask", "litert_torch", "ai_edge_quantizer", "onnx",
                     "sqlalchemy")


@pytest.mark.skipif(not agent_only_venv(), reason=f"{AGENT_VENV_ONLY} checks the venv of test-agent-only")
def test_the_agent_only_venv_has_none_of_the_heavy_packages():
    present = [name for name in NEVER_ON_A_DEVICE if importlib.util.find_spec(name) is not None]
    assert present == []
    assert importlib.util.find_spec("onnxruntime") is not None
    assert importlib.util.find_spec("ai_edge_litert") is not None


def test_edgeship_agent_help_runs_and_importing_the_agent_stays_light():
    done = subprocess.run([sys.executable, "-m", "edgeship.cli", "agent", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "--enroll-token" in done.stdout
    probe = ("import sys, edge_agent.agent, edge_agent.cli, edge_agent.workload\n"
             "print(sorted({m.split('.')[0] for m in sys.modules}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, check=True).stdout
    assert not [name for name in NEVER_ON_A_DEVICE if f"'{name}'" in loaded]
