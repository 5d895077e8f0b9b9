"""One fleet worker process: a few dozen real edge agents, each replaying real eval data.

``python -m examples.demo.fleet_worker SPEC.json`` (started by :class:`examples.demo.fleet.Fleet`).
Every agent is a full :class:`edge_agent.agent.Agent` with its own state directory, identity,
model store and outbox, talking HTTP to the server; :class:`edge_agent.workload.Replay` feeds it
the eval set (inputs and labels) at a fixed rate. Only the process is shared: a hundred agent
processes would not fit on a small machine, twenty-five agents per process do.

Every second the worker writes what each agent runs to ``status_file`` (JSON, replaced
atomically; the phones' Node worker, ``sdk/js/demo/phone_fleet_worker.ts``, writes the same rows
with ``kind: "sdk"``). SIGTERM or SIGINT stops the replays, then the agents (each closes its window and
delivers its outbox), then the process exits 0. Imports only the agent side: no torch, no Flask.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

STATUS_SECONDS = 1.0
START_SPACING_SECONDS = 0.05  # spread the registrations and first downloads a little


def simulated_sensors(agent: dict[str, Any]) -> dict[str, Path | None]:
    """A thermal zone and, for Raspberry Pi classes, a ``vcgencmd`` for one simulated device.

    The demo's agents share one host, whose sensors (if any) say nothing about the devices they
    stand for: each gets its own, under its state directory, read by the real agent code
    (``edge_agent.health``). Temperatures 45–70 °C by agent; a Raspberry Pi in five reports a
    throttled CPU (under-voltage and throttled now).
    """
    root = Path(agent["state_dir"]) / "sensors"
    zone = root / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    seed = sum(map(ord, agent["name"]))
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(f"{45_000 + (seed * 7919) % 25_000}\n")
    vcgencmd = None
    if agent["device_class"].startswith("rpi"):
        vcgencmd = root / "vcgencmd"
        state = "0x50005" if seed % 5 == 0 else "0x0"
        vcgencmd.write_text(f"#!/bin/sh\necho throttled={state}\n")
        vcgencmd.chmod(0o755)
    return {"thermal_dir": root / "thermal", "vcgencmd": vcgencmd}


def agent_config(spec: dict[str, Any], agent: dict[str, Any]):
    """The :class:`edge_agent.config.AgentConfig` of one agent of the worker's ``spec``."""
    from edge_agent.config import AgentConfig

    return AgentConfig(
        server=spec["server"], model=spec["model"], state_dir=Path(agent["state_dir"]),
        trusted_keys=[Path(spec["trusted_key"])], enroll_token=spec["enroll_token"],
        device_class=agent["device_class"], check_interval_seconds=spec["check_interval_seconds"],
        report_interval_seconds=spec["report_interval_seconds"], request_timeout_seconds=10.0,
        backoff_initial_seconds=0.5, backoff_max_seconds=5.0,
        variant_backoff_seconds=spec["variant_backoff_seconds"], threads=1,
        ram_bytes=agent["ram_bytes"], **simulated_sensors(agent),
    )


def device_fields(agent: dict[str, Any]) -> dict[str, Any]:
    """Registration fields: the agent's class and RAM, and the runtimes its profile has here."""
    from edge_agent.device import describe, installed_runtimes

    here = installed_runtimes()
    runtimes = {name: here[name] for name in agent["runtimes"] if name in here} or here
    return describe(agent["device_class"], agent["ram_bytes"], runtimes)


class Worker:
    """The agents of one spec, their replays and the status file."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.status_file = Path(spec["status_file"])
        self.agents: list[tuple[dict[str, Any], Any, Any]] = []  # (agent spec, Agent, Replay)
        self.stopping = threading.Event()

    def start(self) -> None:
        """Start every agent and its replay (each replay starts at a random row of the set)."""
        from edge_agent.agent import Agent
        from edge_agent.workload import Replay

        rng = random.Random(self.spec.get("seed", 0))
        for agent_spec in self.spec["agents"]:
            if self.stopping.is_set():
                return
            agent = Agent(agent_config(self.spec, agent_spec), device=device_fields(agent_spec)).start()
            replay = Replay(agent, Path(self.spec["eval"]), self.spec["rate_per_second"])
            replay.sent = rng.randrange(replay.rows)
            self.agents.append((agent_spec, agent, replay.start()))
            self.write_status()
            self.stopping.wait(START_SPACING_SECONDS)

    def status(self) -> dict[str, Any]:
        """What each agent runs now, as the agent itself sees it."""
        rows = []
        for agent_spec, agent, replay in self.agents:
            status = agent.status()  # cohort: where its measurements go (stable if it refused the canary)
            rows.append({
                "name": agent_spec["name"], "device_class": agent_spec["device_class"], "kind": "python",
                "device_id": status["device_id"], "version": status["version"],
                "variant": status["variant"], "cohort": status["cohort"], "rollout_id": status["rollout_id"],
                "sent": replay.sent,
            })
        return {"pid": os.getpid(), "time": time.time(), "planned": len(self.spec["agents"]),
                "kind": "python", "agents": rows}

    def write_status(self) -> None:
        temporary = self.status_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.status()))
        os.replace(temporary, self.status_file)

    def run_until_stopped(self) -> None:
        while not self.stopping.wait(STATUS_SECONDS):
            try:
                self.write_status()
            except (OSError, RuntimeError, ValueError) as err:  # a missed status is not worth dying for
                logging.getLogger("edgeship.demo").warning("status not written: %s", err)

    def stop(self) -> None:
        """Stop the replays, then every agent in parallel (each flushes its outbox)."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.agents))) as pool:
            list(pool.map(lambda entry: entry[2].stop(), self.agents))
            list(pool.map(lambda entry: entry[1].stop(flush_timeout_seconds=3.0), self.agents))


def main(argv: list[str] | None = None) -> int:
    """Run the worker described by the JSON spec file ``argv[0]`` until SIGTERM or SIGINT."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m examples.demo.fleet_worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    worker = Worker(spec)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stopping.set())
    try:
        worker.start()
        worker.run_until_stopped()
    finally:
        worker.stop()
    logging.getLogger("edgeship.demo").info("worker stopped: %d agents", len(worker.agents))
    return 0


if __name__ == "__main__":
    sys.exit(main())
