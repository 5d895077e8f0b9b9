"""The runtime probe: a runtime that crashes, hangs or fails to load a model is not announced,
the probe survives it, and the answer is cached until the runtime packages change."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edge_agent import runtime_probe
from edge_agent.device import installed_runtimes
from edge_agent.runtime_probe import CACHE_FILE, ProbeOutcome, loadable_runtimes, probe_runtimes
from tests.edge_agent.conftest import MODEL, wait_until
from tests.edge_agent.harness import ROOT, ServerProcess
from tests.skip_policy import require_module

#: runtime → the module its runner imports first (what a broken package breaks).
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "litert": "ai_edge_litert"}
CRASH = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
ABORT = "import os\nos.abort()\n"
HANG = "import time\ntime.sleep(3600)\n"
RAISE = "raise ImportError('libfoo.so: cannot open shared object file')\n"
# imports fine, but no session can be made: what an emulated CPU's missing instruction looks like
NO_SESSION = ("__version__ = '1.20.0'\nclass SessionOptions:\n    pass\n"
              "class InferenceSession:\n    def __init__(self, *args, **kwargs):\n"
              "        raise RuntimeError('session creation failed: illegal instruction')\n")


@pytest.fixture(autouse=True)
def real_runtimes() -> None:
    """Both runtimes must really be installed: a broken copy shadows one of them."""
    require_module("onnxruntime")
    require_module("ai_edge_litert")


def shadow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str, source: str) -> Path:
    """A package named like ``runtime``'s module, first on the children's PYTHONPATH."""
    folder = tmp_path / f"broken-{runtime}"
    package = folder / RUNTIME_MODULES[runtime]
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(ROOT)]))
    return folder


def test_the_runtimes_installed_here_pass_their_probe():
    outcomes = probe_runtimes(["onnxruntime", "litert"])
    assert {name: o.loaded for name, o in outcomes.items()} == {"onnxruntime": True, "litert": True}, outcomes


@pytest.mark.parametrize("runtime, source, detail", [
    ("onnxruntime", CRASH, "killed by SIGSEGV"),
    ("litert", ABORT, "killed by SIGABRT"),
    ("litert", RAISE, "RuntimeUnavailable: no TFLite interpreter"),
    ("onnxruntime", NO_SESSION, "session creation failed"),
])
def test_a_runtime_that_cannot_load_is_not_announced_and_the_other_is(tmp_path, monkeypatch, runtime, source,
                                                                        detail, caplog):
    shadow(tmp_path, monkeypatch, runtime, source)
    outcomes = probe_runtimes(["onnxruntime", "litert"])
    assert not outcomes[runtime].loaded and detail in outcomes[runtime].detail
    assert outcomes[runtime].definite
    other = next(name for name in RUNTIME_MODULES if name != runtime)
    assert outcomes[other].loaded
    announced = loadable_runtimes(tmp_path / "state")
    assert runtime not in announced and announced[other] == installed_runtimes()[other]
    assert f"runtime {runtime}" in caplog.text and detail in caplog.text  # says what failed and why


def test_a_hanging_import_times_out_is_not_announced_and_not_cached(tmp_path, monkeypatch):
    shadow(tmp_path, monkeypatch, "litert", HANG)
    started = time.monotonic()
    outcomes = probe_runtimes(["litert"], timeout_seconds=2)
    assert time.monotonic() - started < 30  # killed at the timeout, not waited out
    assert outcomes["litert"] == ProbeOutcome("litert", False, "timed out after 2 s", definite=False)


def test_the_answer_is_cached_until_the_runtime_packages_change(tmp_path, monkeypatch, caplog):
    calls: list[list[str]] = []

    def counting(runtimes, timeout_seconds):
        calls.append(list(runtimes))
        return {name: ProbeOutcome(name, name == "onnxruntime", "" if name == "onnxruntime" else "exit 1")
                for name in runtimes}

    state = tmp_path / "state"
    state.mkdir()
    first = loadable_runtimes(state, probe=counting)
    assert first == {"onnxruntime": installed_runtimes()["onnxruntime"]} and len(calls) == 1
    caplog.clear()
    assert loadable_runtimes(state, probe=counting) == first and len(calls) == 1  # a restart: from the cache
    assert "runtime litert" in caplog.text and "exit 1; probed at an earlier start" in caplog.text
    cached = json.loads((state / CACHE_FILE).read_text())
    assert cached["refused"] == {name: "exit 1" for name in installed_runtimes() if name != "onnxruntime"}
    versions = dict(cached["key"]["distributions"], **{"ai-edge-litert": "9.9.9"})  # an upgrade
    monkeypatch.setattr(runtime_probe, "distribution_versions", lambda: versions)
    assert loadable_runtimes(state, probe=counting) == first and len(calls) == 2


def test_a_timed_out_probe_is_tried_again_at_the_next_start(tmp_path):
    calls: list[str] = []

    def slow(runtimes, timeout_seconds):
        calls.append("probe")
        return {name: ProbeOutcome(name, False, "timed out after 60 s", definite=False) for name in runtimes}

    assert loadable_runtimes(tmp_path, probe=slow) == {}
    assert loadable_runtimes(tmp_path, probe=slow) == {} and calls == ["probe", "probe"]
    assert not (tmp_path / CACHE_FILE).exists()


def test_the_probe_child_refuses_an_unknown_runtime():
    done = subprocess.run(runtime_probe._child_command("tensorrt"), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "unknown runtime" in done.stderr


# -- the agent as a process: what it announces is what it can run -----------------------------------


class AgentProcess:
    """``edgeship agent`` with its own environment (a broken runtime package on PYTHONPATH)."""

    def __init__(self, state_dir: Path, server: ServerProcess, releases: dict[str, Any],
                 pythonpath: list[Path]) -> None:
        self.state_dir = state_dir
        self.log_path = state_dir.with_name(state_dir.name + ".log")
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*pythonpath, ROOT]))}
        self.args = [sys.executable, "-m", "edgeship.cli", "agent", "--server", server.url,
                     "--enroll-token", server.enroll, "--model", MODEL, "--state-dir", str(state_dir),
                     "--trusted-key", releases["keys"]["public"], "--device-class", "linux-x86_64",
                     "--check-interval", "0.5"]
        self.process: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, after: int = 0, timeout: float = 90.0) -> None:
        wait_until(lambda: text in self.log()[after:] or self.process.poll() is not None, timeout, what=text)
        assert text in self.log()[after:], f"agent exited before {text!r}:\n{self.log()[-3000:]}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def preferred_runtime(server: ServerProcess) -> str:
    """The runtime of the variant the server gives a device that announces both runtimes."""
    def call(method: str, path: str, payload: Any = None, credential: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(f"{server.url}{path}", method=method, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    enrolled = call("POST", "/v1/devices/register", {
        "enrollment_token": server.enroll, "device_class": "linux-x86_64", "arch": "x86_64", "os": "Linux",
        "ram_bytes": 0, "runtimes": installed_runtimes()})
    assignment = call("GET", f"/v1/devices/{enrolled['device_id']}/assignment?model={MODEL}",
                      credential=enrolled["credential"])
    return assignment["variant"]["runtime"]["name"]


def announced(server: ServerProcess, device_id: str) -> dict[str, str]:
    with sqlite3.connect(server.data_dir / "edgeship.db") as db:
        return json.loads(db.execute("SELECT runtimes FROM devices WHERE id = ?", (device_id,)).fetchone()[0])


def test_an_agent_whose_preferred_runtime_crashes_runs_the_other_and_updates_when_it_is_fixed(
        tmp_path, server, releases):
    """Announcing from package metadata, this agent was assigned a variant whose runtime kills it
    on import. Probed, it announces only what loads, runs the other runtime's variant, and once the
    broken package is gone (a restart) tells the server, which moves it to the preferred variant."""
    broken = preferred_runtime(server)
    other = next(name for name in RUNTIME_MODULES if name != broken)
    folder = tmp_path / "broken"
    (folder / RUNTIME_MODULES[broken]).mkdir(parents=True)
    (folder / RUNTIME_MODULES[broken] / "__init__.py").write_text(CRASH)
    agent = AgentProcess(tmp_path / "agent", server, releases, [folder]).start()
    try:
        agent.wait_for(f"now running {MODEL} v1")
        log = agent.log()
        assert f"runtime {broken}" in log and "killed by SIGSEGV" in log
        device_id = json.loads((agent.state_dir / "identity.json").read_text())["device_id"]
        assert broken not in announced(server, device_id) and other in announced(server, device_id)
        assert not any(r["err_load_failed"] for r in server.reports())  # nothing it could not run
    finally:
        agent.stop()
    mark = len(agent.log())
    fixed = AgentProcess(agent.state_dir, server, releases, []).start()
    try:
        fixed.wait_for(f"now running {MODEL} v1", after=mark)  # not the restored one: a new install
        assert announced(server, device_id) == installed_runtimes()
        state = json.loads((agent.state_dir / "models" / "state.json").read_text())
        assert state["current"]["release"]["variant_id"].startswith(VARIANT_PREFIX[broken])
    finally:
        fixed.stop()


VARIANT_PREFIX = {"onnxruntime": "onnx-", "litert": "tflite-"}
