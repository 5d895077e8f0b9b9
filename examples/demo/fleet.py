"""The demo's fleet: device profiles, the plan of agents per worker process, and the workers.

``N`` agents are spread over ``W`` worker processes (:mod:`examples.demo.fleet_worker`), agent
``i`` in worker ``w = i mod W`` with profile ``(i div W + w) mod 4``, so each process hosts every
device class and the classes are even overall.
Each agent registers as its profile's device class with only that profile's runtimes, so the
server assigns different variants to different classes (TFLite where only LiteRT is present,
ONNX where only onnxruntime is).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.demo.processes import Children, spawn

GIB = 2**30


@dataclass(frozen=True)
class DeviceProfile:
    """A kind of device in the simulated fleet.

    Attributes:
        device_class: the coarse class sent at registration.
        runtimes: runtime names it reports (versions are this host's real ones).
        ram_bytes: RAM it reports (the server only assigns variants that fit in half of it).
    """

    device_class: str
    runtimes: tuple[str, ...]
    ram_bytes: int


PROFILES: tuple[DeviceProfile, ...] = (
    DeviceProfile("rpi4", ("litert",), 4 * GIB),
    DeviceProfile("rpi5", ("onnxruntime",), 8 * GIB),
    DeviceProfile("android", ("litert",), 6 * GIB),
    DeviceProfile("linux-x86_64", ("onnxruntime", "litert"), 16 * GIB),
)


@dataclass(frozen=True)
class FleetSettings:
    """How the fleet runs.

    Attributes:
        agents: number of agents.
        workers: worker processes hosting them.
        rate_per_second: inferences per second per agent.
        check_interval_seconds: how often each agent asks for its assignment.
        report_interval_seconds: reporting window until the server says otherwise.
        variant_backoff_seconds: how long an agent leaves a variant it refused alone. Short in
            the demo: the golden-mismatch release ships the very same model files as the good
            one, and the agent's backoff is keyed by the file's sha256 alone, so a long backoff
            would keep the agents that refused the bad release off the good one as well.
    """

    agents: int = 100
    workers: int = 4
    rate_per_second: float = 4.0
    check_interval_seconds: float = 1.0
    report_interval_seconds: float = 2.0
    variant_backoff_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.agents < 1 or self.workers < 1:
            raise ValueError(f"agents and workers must be >= 1, got {self.agents} and {self.workers}")
        if self.rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be positive, got {self.rate_per_second}")


def plan_fleet(settings: FleetSettings, state_root: Path) -> list[list[dict[str, Any]]]:
    """The agents of each worker: name, state directory, device class, runtimes, RAM."""
    workers = min(settings.workers, settings.agents)
    plan: list[list[dict[str, Any]]] = [[] for _ in range(workers)]
    for i in range(settings.agents):
        worker, slot = i % workers, i // workers
        profile = PROFILES[(slot + worker) % len(PROFILES)]  # every worker hosts every class, evenly
        name = f"agent-{i:03d}"
        plan[worker].append({
            "name": name, "state_dir": str(state_root / name), "device_class": profile.device_class,
            "runtimes": list(profile.runtimes), "ram_bytes": profile.ram_bytes,
        })
    return plan


@dataclass
class FleetSnapshot:
    """What the agents say they run, summed over the workers' status files.

    Attributes:
        planned: agents planned.
        started: agents started.
        agents: one row per agent (name, device_class, device_id, version, variant, cohort).
    """

    planned: int = 0
    started: int = 0
    agents: list[dict[str, Any]] = field(default_factory=list)

    def count(self, key: str, where: dict[str, Any] | None = None) -> Counter:
        """Agents per value of ``key`` (e.g. ``version``), among those matching ``where``."""
        rows = [a for a in self.agents if all(a.get(k) == v for k, v in (where or {}).items())]
        return Counter(a.get(key) for a in rows)

    def running(self, version: str) -> int:
        """Agents whose current model is ``version``."""
        return self.count("version")[version]

    def variants_by_class(self) -> dict[str, Counter]:
        """``{device_class: Counter(variant)}``."""
        out: dict[str, Counter] = {}
        for agent in self.agents:
            out.setdefault(agent["device_class"], Counter())[agent.get("variant")] += 1
        return out


class Fleet:
    """The worker processes of one fleet.

    Args:
        settings: size and rates.
        directory: state directories, specs, status files and logs go here.
        server_url: the rollout server.
        enroll_token: the server's enrollment token (written to the specs, mode 0600).
        trusted_key: the publisher's public key.
        eval_npz: inputs and labels to replay.
        model: registry name.
        python: interpreter for the workers (default: this one).
    """

    def __init__(self, settings: FleetSettings, directory: Path, server_url: str, enroll_token: str,
                 trusted_key: str, eval_npz: str, model: str, python: str | None = None) -> None:
        self.settings = settings
        self.directory = Path(directory).resolve()
        self.server_url = server_url
        self.enroll_token = enroll_token
        self.trusted_key = str(Path(trusted_key).resolve())
        self.eval_npz = str(Path(eval_npz).resolve())
        self.model = model
        self.python = python or sys.executable
        self.status_files: list[Path] = []
        self.processes: list[Any] = []

    def start(self, children: Children) -> Fleet:
        """Write one spec per worker and start the workers (tracked by ``children``)."""
        plan = plan_fleet(self.settings, self.directory / "agents")
        for index, agents in enumerate(plan):
            status = self.directory / f"worker-{index}.status.json"
            spec_path = self.directory / f"worker-{index}.spec.json"
            spec = {
                "server": self.server_url, "model": self.model, "enroll_token": self.enroll_token,
                "trusted_key": self.trusted_key, "eval": self.eval_npz,
                "rate_per_second": self.settings.rate_per_second,
                "check_interval_seconds": self.settings.check_interval_seconds,
                "report_interval_seconds": self.settings.report_interval_seconds,
                "variant_backoff_seconds": self.settings.variant_backoff_seconds,
                "status_file": str(status), "seed": index, "agents": agents,
            }
            spec_path.parent.mkdir(parents=True, exist_ok=True)
            spec_path.touch(mode=0o600)
            spec_path.write_text(json.dumps(spec, indent=1))
            process = spawn([self.python, "-m", "examples.demo.fleet_worker", str(spec_path)],
                            self.directory / f"worker-{index}.log")
            self.processes.append(children.add(f"fleet-worker-{index}", process, stop_timeout_seconds=20))
            self.status_files.append(status)
        return self

    def stop(self, children: Children) -> None:
        """Stop the workers together (each stops its agents, which deliver their last reports)."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            children.stop(process)

    def snapshot(self) -> FleetSnapshot:
        """The latest status of every worker (a worker that has not written yet counts as none)."""
        snap = FleetSnapshot(planned=self.settings.agents)
        for path in self.status_files:
            try:
                status = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            snap.started += len(status["agents"])
            snap.agents.extend(status["agents"])
        return snap

    def dead_workers(self) -> list[int]:
        """Indexes of workers that exited."""
        return [i for i, p in enumerate(self.processes) if p.poll() is not None]

    def log_tail(self, index: int, chars: int = 1500) -> str:
        try:
            return (self.directory / f"worker-{index}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raise ``RuntimeError`` with the log of a worker that exited."""
        dead = self.dead_workers()
        if dead:
            raise RuntimeError(f"fleet worker {dead[0]} exited ({self.processes[dead[0]].returncode}): "
                               f"{self.log_tail(dead[0])}")


def wait_for(condition, timeout_seconds: float, what: str, tick=None, every_seconds: float = 0.5) -> Any:
    """Call ``tick()`` and poll ``condition()`` until it returns something truthy.

    Raises:
        TimeoutError: not within ``timeout_seconds``, naming ``what``.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        if tick is not None:
            tick()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        time.sleep(every_seconds)
