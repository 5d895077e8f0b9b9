"""Agent resident memory, each case in a fresh ``python -c`` process that imports only what it needs.

Cases, each reading ``VmRSS`` (and the peak, ``VmHWM``) from ``/proc/self/status`` after settling:

* ``interpreter``: ``python -c`` and nothing else (the floor);
* ``import edge_agent.agent``: the agent's modules (numpy included), no agent;
* ``agent, no model``: an agent started against the real server for a model name with no
  release, so every check-in is refused and it stays model-less (no runtime imported);
* ``agent + <model> (<runtime>)``: an agent that installed the model (download, signature,
  golden probe) on a device offering only that runtime, after 50 ``predict`` calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

#: what the child runs: argv[1] is a JSON spec; prints one JSON line.
CHILD = r"""
import json, sys, time
spec = json.loads(sys.argv[1])

def status():
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields

agent = None
if spec["case"] != "interpreter":
    import edge_agent.agent
if spec["case"] in ("no-model", "model"):
    from pathlib import Path
    from edge_agent.agent import Agent
    from edge_agent.config import AgentConfig
    from edge_agent.device import describe, installed_runtimes

    runtimes = installed_runtimes()
    if spec.get("runtime"):
        runtimes = {spec["runtime"]: runtimes[spec["runtime"]]}
    config = AgentConfig(server=spec["server"], model=spec["model"], state_dir=Path(spec["state_dir"]),
                         trusted_keys=[Path(spec["trusted_key"])], enroll_token=spec["enroll_token"],
                         device_class="bench", check_interval_seconds=0.5, threads=1)
    agent = Agent(config, device=describe("bench", runtimes=runtimes)).start()
    deadline = time.monotonic() + spec["timeout_seconds"]
    ready = (lambda: agent.current is not None) if spec["case"] == "model" \
        else (lambda: agent.identity.device_id is not None)
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"not ready after {spec['timeout_seconds']} s: {agent.status()}")
        time.sleep(0.05)
    if agent.current is not None:
        import numpy as np
        shape = [int(s) for s in agent.current.release.manifest["task"]["inputs"][0]["shape"]]
        batch = np.zeros(shape, dtype=np.float32)
        for _ in range(50):
            agent.predict(batch)
time.sleep(spec["settle_seconds"])
result = status()
result["modules"] = len(sys.modules)
result["runtimes_imported"] = sorted(m for m in ("onnxruntime", "ai_edge_litert", "tflite_runtime",
                                                 "tensorflow", "torch") if m in sys.modules)
if agent is not None:
    result["status"] = agent.status()
    agent.stop(flush_timeout_seconds=1.0)
print(json.dumps(result))
"""


def measure_rss(spec: dict[str, Any], env: dict[str, str], cwd: Path, timeout_seconds: float = 120) -> dict:
    """Run one case in a fresh interpreter; its JSON line, with ``case`` and ``runtime``.

    Raises:
        RuntimeError: the child failed or printed no result.
    """
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout_seconds, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"RSS case {spec['case']} failed ({done.returncode}): {done.stderr[-1500:]}")
    return json.loads(lines[-1])
