"""Starting a gray release and following it to its end while the live view runs.

:class:`Monitor` is one tick of watching: the server's ``/metrics`` into the history, the
fleet's status, Prometheus' firing alerts, and the live block. :func:`follow_rollout` ticks
until the rollout ends (rolled back, promoted or aborted), printing each transition with the
controller's reason, and returns what happened (:class:`RolloutOutcome`).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from examples.demo.fleet import Fleet, FleetSnapshot
from examples.demo.live import LiveView, MetricsHistory, latest_verdicts, parse_metrics, render
from examples.demo.prometheus import PrometheusProcess
from examples.demo.server import ServerProcess

TERMINAL = ("promoted", "rolled_back", "aborted")
VERDICT_POLL_SECONDS = 4.0  # the full status (with verdicts) is heavier than the summary
ALERT_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class GuardMinimums:
    """Minimum samples per arm for the demo's guards (thresholds stay the server's defaults).

    The defaults (1000 inferences, 500 latencies, 400 labelled samples, 20 devices) suit real
    fleets; a 100-agent demo reaches these smaller ones within a stage of seconds.
    """

    error_rate: int = 400
    latency: int = 300
    accuracy: int = 300
    load_failures: int = 3

    def spec(self) -> dict[str, Any]:
        """The ``guards`` body of ``POST /v1/rollouts``."""
        return {"guards": [
            {"metric": "error_rate", "min_samples": self.error_rate},
            {"metric": "latency", "min_samples": self.latency},
            {"metric": "accuracy", "min_samples": self.accuracy},
            {"metric": "load_failures", "min_samples": self.load_failures},
        ]}


def rollout_body(model: str, version: str, percents: tuple[float, ...], stage_seconds: float,
                 stage_samples: int, guards: GuardMinimums) -> dict[str, Any]:
    """``POST /v1/rollouts`` body: stratified stages with the demo's minimums; 100% is not analysed."""
    stages = [{"percent": p, "min_duration_seconds": stage_seconds if p < 100 else 0,
               "min_samples": stage_samples if p < 100 else 0} for p in percents]
    return {"model": model, "candidate_version": version, "stages": stages, "guards": guards.spec(),
            "stratify": True}


class Monitor:
    """Everything the live view needs, refreshed by :meth:`tick`.

    Args:
        server: the rollout server.
        model: registry name.
        view: where the block goes.
        fleet: the fleet (None before it starts).
        prometheus: Prometheus (None when not running).
        window_seconds: the live rates' window.
    """

    def __init__(self, server: ServerProcess, model: str, view: LiveView, fleet: Fleet | None = None,
                 prometheus: PrometheusProcess | None = None, window_seconds: float = 10.0) -> None:
        self.server = server
        self.model = model
        self.view = view
        self.fleet = fleet
        self.prometheus = prometheus
        self.window_seconds = window_seconds
        self.history = MetricsHistory()
        self.started = time.monotonic()
        self.rollout: dict[str, Any] | None = None
        self.verdicts: list[dict[str, Any]] = []
        self.snapshot: FleetSnapshot | None = None
        #: every ``(rollout_id, kind, device class, cohort, version)`` the fleet showed
        self.arms_seen: set[tuple[Any, ...]] = set()
        self.alerts: list[str] | None = None
        self._alerts_at = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tick(self, force_print: bool = False) -> None:
        """Read the server, the fleet and Prometheus; redraw the block."""
        with contextlib.suppress(OSError):  # a slow /metrics: the next tick catches up
            self.history.add(time.monotonic(), parse_metrics(self.server.metrics_text(), self.model))
        if self.fleet is not None:
            self.fleet.check_alive()
            self.snapshot = self.fleet.snapshot()
            self.arms_seen.update(self.snapshot.rollout_arms())
        if self.prometheus is not None and time.monotonic() - self._alerts_at >= ALERT_POLL_SECONDS:
            self._alerts_at = time.monotonic()
            try:
                answer = self.prometheus.query('ALERTS{alertstate="firing"}')
                self.alerts = sorted({r["metric"]["alertname"] for r in answer["data"]["result"]})
            except (OSError, KeyError, ValueError):
                self.alerts = None
        lines = render(self.elapsed, self.rollout, self.history.window(self.window_seconds), self.snapshot,
                       self.verdicts, self.alerts)
        self.view.show(lines, force=force_print)

    def event(self, text: str) -> None:
        """A line printed for good, with the loop's clock."""
        minutes, seconds = divmod(int(self.elapsed), 60)
        self.view.event(f"[{minutes}:{seconds:02d}] {text}")


@dataclass
class RolloutOutcome:
    """How a rollout ended.

    Attributes:
        id: rollout id.
        candidate: the candidate version.
        phase: final phase.
        reason: the controller's reason for the last transition.
        seconds: from start to the end.
        stage_seconds: ``(percent, seconds spent)`` per stage left.
        failing: the ``fail`` verdicts of the deciding window (guard, reason).
        status: the final rollout status from the server.
        arms: what the fleet ran at the last look before the end, by ``(kind, device class,
            cohort, version)`` (a second later the agents are already moving).
    """

    id: int
    candidate: str
    phase: str = "running"
    reason: str = ""
    seconds: float = 0.0
    stage_seconds: list[tuple[float, float]] = field(default_factory=list)
    failing: list[tuple[str, str]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    arms: Counter = field(default_factory=Counter)


def start_rollout(server: ServerProcess, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/rollouts``; the new rollout's status."""
    return server.api("POST", "/v1/rollouts", body)


def start_with_canaries(monitor: Monitor, body: dict[str, Any], need: int, agents: int,
                        started: Callable[[dict[str, Any]], None], attempts: int = 5,
                        settle_seconds: float = 20.0) -> dict[str, Any]:
    """Start a rollout whose first stage puts at least ``need`` devices in each arm.

    The split is random (a new salt per rollout): with 100 agents a 10% stage holds fewer than
    3 canary devices about once in 500 rollouts, and the load-failure guard then holds the
    rollout until more devices come, which in a demo they never do. The server counts the
    stage's devices per arm (``devices`` in the status); a split that is too small is aborted,
    with the reason, and the rollout started again (``started`` is told of each rollout).
    """
    for attempt in range(1, attempts + 1):
        status = start_rollout(monitor.server, body)
        started(status)
        devices = _settled_devices(monitor, status["id"], agents, settle_seconds)
        if devices is None or min(devices.values()) >= need or attempt == attempts:
            return status
        reason = (f"only {devices['canary']} of {sum(devices.values())} agents fell in the canary by "
                  f"chance; the load-failure guard needs {need}: starting again with a new split")
        monitor.server.api("POST", f"/v1/rollouts/{status['id']}/abort", {"reason": reason})
        monitor.event(f"rollout #{status['id']} aborted: {reason}")
    raise AssertionError("unreachable")


def _settled_devices(monitor: Monitor, rollout_id: int, agents: int,
                     settle_seconds: float) -> dict[str, int] | None:
    """The rollout's devices per arm once every agent is counted (or after ``settle_seconds``)."""
    deadline = time.monotonic() + settle_seconds
    while True:
        devices = monitor.server.api("GET", f"/v1/rollouts/{rollout_id}").get("devices")
        if devices is None or sum(devices.values()) >= agents or time.monotonic() > deadline:
            return devices
        monitor.tick()
        time.sleep(1.0)


def follow_rollout(monitor: Monitor, rollout_id: int, timeout_seconds: float,
                   poll_seconds: float = 1.0) -> RolloutOutcome:
    """Tick until rollout ``rollout_id`` ends; print its stage changes and its end.

    Raises:
        TimeoutError: it did not end within ``timeout_seconds`` (the latest verdicts are named).
    """
    server = monitor.server
    started = time.monotonic()
    stage_started, stage, percent = started, 1, None
    outcome: RolloutOutcome | None = None
    verdicts_at = 0.0
    while True:
        summary = _summary(server, rollout_id)
        monitor.rollout = summary
        outcome = outcome or RolloutOutcome(rollout_id, summary["candidate"])
        percent = summary["canary_percent"] if percent is None else percent
        now = time.monotonic()
        if summary["stage"] != stage and summary["phase"] not in TERMINAL:
            outcome.stage_seconds.append((percent, now - stage_started))
            monitor.event(f"rollout #{rollout_id}: stage {stage} passed after {now - stage_started:.0f} s → "
                          f"stage {summary['stage']}/{summary['stages']}, canary share "
                          f"{summary['canary_percent']:g}%")
            stage, stage_started, percent = summary["stage"], now, summary["canary_percent"]
        if summary["phase"] in TERMINAL or now - verdicts_at >= VERDICT_POLL_SECONDS:
            verdicts_at = now
            outcome.status = server.api("GET", f"/v1/rollouts/{rollout_id}")
            monitor.verdicts = latest_verdicts(outcome.status)
        if summary["phase"] in TERMINAL:
            outcome.arms = monitor.snapshot.arms() if monitor.snapshot is not None else Counter()
            outcome.stage_seconds.append((percent, now - stage_started))
            outcome.phase, outcome.reason = summary["phase"], summary["reason"]
            outcome.seconds = now - started
            outcome.failing = [(v["guard"], v["reason"]) for v in monitor.verdicts if v["outcome"] == "fail"]
            monitor.tick(force_print=True)
            return outcome
        monitor.tick()
        if now - started > timeout_seconds:
            latest = "; ".join(f"{v['guard']} {v['outcome']}: {v['reason']}" for v in monitor.verdicts)
            raise TimeoutError(f"rollout #{rollout_id} still {summary['phase']} at stage {summary['stage']} "
                               f"after {timeout_seconds:.0f} s; latest verdicts: {latest or 'none'}")
        time.sleep(max(0.0, poll_seconds - (time.monotonic() - now)))


def _summary(server: ServerProcess, rollout_id: int) -> dict[str, Any]:
    for rollout in server.api("GET", "/v1/rollouts")["rollouts"]:
        if rollout["id"] == rollout_id:
            return rollout
    raise RuntimeError(f"rollout #{rollout_id} is not listed by the server")
