"""The demo's fleet: device profiles, the plan of agents per worker process, and the workers.

Two kinds of agents: Python agents (:mod:`examples.demo.fleet_worker`, the edge agent of a
Raspberry Pi or a Linux box) and phones, SDK agents in a Node process
(``sdk/js/demo/phone_fleet_worker.ts``, the TypeScript SDK on ``onnxruntime-node``, as an app
embeds it). A share of the fleet (``phone_share``) are phones, all in one Node process; the
other agents are spread over ``W`` Python worker processes, agent ``i`` in worker ``w = i mod W``
with profile ``(i div W + w) mod 3``, so each process hosts every class and the classes are even.
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
from examples.demo.typescript import SDK as SDK_DIR
from examples.demo.typescript import node_program

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


#: the Python agents' profiles
PROFILES: tuple[DeviceProfile, ...] = (
    DeviceProfile("rpi4", ("litert",), 4 * GIB),
    DeviceProfile("rpi5", ("onnxruntime",), 8 * GIB),
    DeviceProfile("linux-x86_64", ("onnxruntime", "litert"), 16 * GIB),
)
#: the phones' profiles (SDK agents: onnxruntime is the only runtime the SDK ships)
PHONE_PROFILES: tuple[DeviceProfile, ...] = (
    DeviceProfile("android", ("onnxruntime",), 6 * GIB),
    DeviceProfile("ios", ("onnxruntime",), 4 * GIB),
)
PYTHON, SDK = "python", "sdk"
PHONE_WORKER_SOURCE = SDK_DIR / "demo" / "phone_fleet_worker.ts"
PHONE_WORKER = SDK_DIR / "build" / "demo" / "demo" / "phone_fleet_worker.js"


def phone_worker_command() -> list[str]:
    """``node .../phone_fleet_worker.js``, compiled with the SDK's ``tsc`` first when stale.

    Raises:
        examples.demo.typescript.Unavailable: no Node.js or no ``sdk/js/node_modules``.
        RuntimeError: the worker does not compile.
    """
    return node_program(PHONE_WORKER_SOURCE.parent / "tsconfig.json", PHONE_WORKER, [PHONE_WORKER_SOURCE])


@dataclass(frozen=True)
class FleetSettings:
    """How the fleet runs.

    Attributes:
        agents: number of agents.
        workers: Python worker processes hosting the agents that are not phones.
        phone_share: the share of ``agents`` that are phones (SDK agents in one Node process), when
            the SDK can run here; 0 for none.
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
    phone_share: float = 0.2
    rate_per_second: float = 4.0
    check_interval_seconds: float = 1.0
    report_interval_seconds: float = 2.0
    variant_backoff_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.agents < 1 or self.workers < 1:
            raise ValueError(f"agents and workers must be >= 1, got {self.agents} and {self.workers}")
        if self.rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be positive, got {self.rate_per_second}")
        if not 0 <= self.phone_share < 1:
            raise ValueError(f"phone_share must be in [0, 1), got {self.phone_share}")

    def phones(self) -> int:
        """How many of the agents are phones (rounded; a small fleet gets fewer or none)."""
        return round(self.agents * self.phone_share)


@dataclass(frozen=True)
class WorkerPlan:
    """One worker process: its kind (``python`` or ``sdk``) and its agents' entries."""

    kind: str
    agents: list[dict[str, Any]]


def plan_fleet(settings: FleetSettings, state_root: Path, phones: bool = True) -> list[WorkerPlan]:
    """The worker processes and their agents (name, state directory, device class, runtimes, RAM).

    With ``phones``, ``settings.phones()`` agents are phones in one last ``sdk`` worker, the
    classes alternating; the rest are spread over the ``python`` workers.
    """
    count = settings.phones() if phones else 0
    python = settings.agents - count
    workers = min(settings.workers, python)
    plan = [WorkerPlan(PYTHON, []) for _ in range(workers)]
    for i in range(python):
        worker, slot = i % workers, i // workers
        profile = PROFILES[(slot + worker) % len(PROFILES)]  # every worker hosts every class, evenly
        plan[worker].agents.append(_entry(f"agent-{i:03d}", profile, state_root))
    if count:
        profiles = [PHONE_PROFILES[i % len(PHONE_PROFILES)] for i in range(count)]  # classes alternate
        plan.append(WorkerPlan(SDK, [_entry(f"phone-{i:03d}", profile, state_root)
                                     for i, profile in enumerate(profiles)]))
    return plan


def _entry(name: str, profile: DeviceProfile, state_root: Path) -> dict[str, Any]:
    return {"name": name, "state_dir": str(state_root / name), "device_class": profile.device_class,
            "runtimes": list(profile.runtimes), "ram_bytes": profile.ram_bytes}


def fleet_text(agents_by_kind: dict[str, int], workers_by_kind: dict[str, int]) -> str:
    """``80 Python agents in 4 worker processes, 20 SDK phones (android, ios) in 1 Node process``."""
    parts = []
    kinds = ((PYTHON, "Python agents", "worker"), (SDK, "SDK phones (android, ios)", "Node"))
    for kind, what, process in kinds:
        if agents_by_kind.get(kind):
            workers = workers_by_kind.get(kind, 0)
            plural = "es" if workers > 1 else ""
            parts.append(f"{agents_by_kind[kind]} {what} in {workers} {process} process{plural}")
    return ", ".join(parts)


@dataclass
class FleetSnapshot:
    """What the agents say they run, summed over the workers' status files.

    Attributes:
        planned: agents planned.
        started: agents started.
        agents: one row per agent (name, kind, device_class, device_id, version, variant, cohort,
            rollout_id).
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

    def variants_by_class(self) -> dict[tuple[str, str], Counter]:
        """``{(kind, device_class): Counter(variant)}``."""
        out: dict[tuple[str, str], Counter] = {}
        for agent in self.agents:
            key = (agent.get("kind", PYTHON), agent["device_class"])
            out.setdefault(key, Counter())[agent.get("variant")] += 1
        return out

    def arms(self) -> Counter:
        """Agents per ``(kind, device_class, cohort, version)``: who runs what, in which arm."""
        return Counter((a.get("kind", PYTHON), a["device_class"], a.get("cohort"), a.get("version"))
                       for a in self.agents)

    def rollout_arms(self) -> set[tuple[Any, ...]]:
        """``(rollout_id, kind, device_class, cohort, version)`` of every agent: an agent of a
        rollout's stable arm runs what it ran before, but its reports carry the rollout's id."""
        return {(a.get("rollout_id"), a.get("kind", PYTHON), a["device_class"], a.get("cohort"),
                 a.get("version")) for a in self.agents}


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
        phone_worker: the command line of the phones' Node worker (without its spec), or None
            for a fleet of Python agents only.
    """

    def __init__(self, settings: FleetSettings, directory: Path, server_url: str, enroll_token: str,
                 trusted_key: str, eval_npz: str, model: str, python: str | None = None,
                 phone_worker: list[str] | None = None) -> None:
        self.settings = settings
        self.directory = Path(directory).resolve()
        self.server_url = server_url
        self.enroll_token = enroll_token
        self.trusted_key = str(Path(trusted_key).resolve())
        self.eval_npz = str(Path(eval_npz).resolve())
        self.model = model
        self.python = python or sys.executable
        self.phone_worker = phone_worker
        self.plan: list[WorkerPlan] = []
        self.status_files: list[Path] = []
        self.processes: list[Any] = []

    def start(self, children: Children) -> Fleet:
        """Write one spec per worker and start the workers (tracked by ``children``)."""
        self.plan = plan_fleet(self.settings, self.directory / "agents", phones=self.phone_worker is not None)
        for index, worker in enumerate(self.plan):
            status = self.directory / f"worker-{index}.status.json"
            spec_path = self.directory / f"worker-{index}.spec.json"
            spec = {
                "server": self.server_url, "model": self.model, "enroll_token": self.enroll_token,
                "trusted_key": self.trusted_key, "eval": self.eval_npz,
                "rate_per_second": self.settings.rate_per_second,
                "check_interval_seconds": self.settings.check_interval_seconds,
                "report_interval_seconds": self.settings.report_interval_seconds,
                "variant_backoff_seconds": self.settings.variant_backoff_seconds,
                "status_file": str(status), "seed": index, "agents": worker.agents,
            }
            spec_path.parent.mkdir(parents=True, exist_ok=True)
            spec_path.touch(mode=0o600)
            spec_path.write_text(json.dumps(spec, indent=1))
            if worker.kind == SDK:
                command, name = [*(self.phone_worker or []), str(spec_path)], f"phone-worker-{index}"
            else:
                command = [self.python, "-m", "examples.demo.fleet_worker", str(spec_path)]
                name = f"fleet-worker-{index}"
            process = spawn(command, self.directory / f"worker-{index}.log")
            self.processes.append(children.add(name, process, stop_timeout_seconds=20))
            self.status_files.append(status)
        return self

    def stop(self, children: Children) -> None:
        """Stop the workers together (each stops its agents, which deliver their last reports)."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            children.stop(process)

    def agents_of(self, kind: str) -> int:
        """Agents planned of ``kind`` (``python`` or ``sdk``)."""
        return sum(len(w.agents) for w in self.plan if w.kind == kind)

    def workers_of(self, kind: str) -> int:
        """Worker processes of ``kind``."""
        return sum(1 for w in self.plan if w.kind == kind)

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
