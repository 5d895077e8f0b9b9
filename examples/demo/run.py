"""The demo's orchestration: set-up, the stack (server, Prometheus, fleet), the loop, the summary.

The loop, after set-up:

1. start the fleet (Python agents and SDK phones) and wait until every agent runs v1 (the stable release);
2. gray release of v3, whose golden set does not match its model: the canary agents refuse it
   on-device (``golden_mismatch``), the load-failure guard fails, the controller rolls back;
3. gray release of v2, which is good: 10% → 50% → promoted, and every agent moves to v2.

From Python (what the end-to-end test does)::

    config = DemoConfig(workdir=Path("build/demo"))
    releases = ensure_releases(config.workdir / "example", Children())
    with DemoStack(config, releases) as stack:
        result = run_loop(stack)
        stack.prometheus.query("...")          # still scraping until the stack closes
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from examples.demo.fleet import PYTHON, SDK, Fleet, FleetSettings, fleet_text, phone_worker_command, wait_for
from examples.demo.live import LiveView
from examples.demo.prepare import ensure_releases, variant_table
from examples.demo.processes import Children, sigint_ignored
from examples.demo.prometheus import PrometheusProcess, find_prometheus
from examples.demo.rollouts import (
    GuardMinimums,
    Monitor,
    RolloutOutcome,
    follow_rollout,
    rollout_body,
    start_with_canaries,
)
from examples.demo.server import ServerProcess
from examples.demo.typescript import Unavailable
from examples.releases import MODEL_NAME

STABLE, BAD, GOOD = "1", "3", "2"
ROLLBACK_ALERT = "EdgeshipRolloutRolledBack"
ALERT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo can be told (``edgeship demo --help`` maps onto it).

    Attributes:
        workdir: releases cache (``example/``) and this run's state (``run/``, wiped at start).
        fleet: agents, worker processes, the phones' share and rates.
        phones: run the phones (SDK agents in Node) — None: when Node and sdk/js/node_modules are
            here (otherwise the fleet is Python agents only, and the output says why); True:
            required (set-up fails without them); False: never.
        stages: canary percents of both rollouts.
        stage_seconds: minimum duration of each analysed stage.
        stage_samples: canary inferences each analysed stage needs.
        guards: minimum samples of the guards.
        report_seconds: the agents' reporting window (the server tells them).
        controller_seconds: how often the controller runs.
        window_seconds: the controller's analysis window.
        prometheus: start Prometheus (None: when it is installed).
        prometheus_port: its port (None: 9090 when free).
        scrape_interval: Prometheus' scrape and rule evaluation interval.
        keep_running: after the summary, keep everything up until Ctrl-C.
        view_window_seconds: window of the live rates.
        print_every_seconds: how often the live block is printed when not on a terminal.
        fleet_timeout_seconds / rollback_timeout_seconds / promotion_timeout_seconds: give up after.
    """

    workdir: Path = Path("build/demo")
    fleet: FleetSettings = field(default_factory=FleetSettings)
    phones: bool | None = None
    stages: tuple[float, ...] = (10.0, 50.0, 100.0)
    stage_seconds: float = 30.0
    stage_samples: int = 400
    guards: GuardMinimums = field(default_factory=GuardMinimums)
    report_seconds: float = 2.0
    controller_seconds: float = 1.0
    window_seconds: float = 2.0
    prometheus: bool | None = None
    prometheus_port: int | None = None
    scrape_interval: str = "2s"
    keep_running: bool = False
    view_window_seconds: float = 10.0
    print_every_seconds: float = 10.0
    fleet_timeout_seconds: float = 180.0
    rollback_timeout_seconds: float = 120.0
    promotion_timeout_seconds: float = 300.0


    def warnings(self) -> list[str]:
        """Settings under which a stage may hold for ever (an arm with too few devices)."""
        need, agents = self.guards.load_failures, self.fleet.agents
        out = []
        for percent in self.stages:
            if percent >= 100:
                continue
            canary, stable = agents * percent / 100, agents * (100 - percent) / 100
            if min(canary, stable) < 2 * need:
                out.append(f"with {agents} agents a {percent:g}% stage expects {canary:.1f} canary and "
                           f"{stable:.1f} stable devices; the load-failure guard needs {need} in each "
                           "arm and holds the rollout until it has them")
        return out


@dataclass
class LoopResult:
    """What the loop did and how long it took (seconds)."""

    fleet_ready_seconds: float = 0.0
    bad: RolloutOutcome | None = None
    good: RolloutOutcome | None = None
    rollback_alert_seconds: float | None = None
    all_on_candidate_seconds: float = 0.0
    loop_seconds: float = 0.0
    #: agents and worker processes per kind (``python``, ``sdk``)
    agents_by_kind: dict[str, int] = field(default_factory=dict)
    workers_by_kind: dict[str, int] = field(default_factory=dict)
    #: ``{(kind, device class): {variant: agents}}`` once the fleet runs v1
    variants_by_class: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    refused_devices: int = 0
    #: ``{device class: (canary devices that refused, canary devices)}`` at the rollback (the server's)
    refused_by_class: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: ``Counter((kind, device class, cohort, version))`` at the rollback, at the promotion, at the end
    at_rollback: Counter = field(default_factory=Counter)
    at_promotion: Counter = field(default_factory=Counter)
    at_end: Counter = field(default_factory=Counter)
    #: every ``(kind, device class, cohort, version)`` seen in the good release's arms (its rollout id)
    good_arms_seen: set[tuple[str, str, str | None, str | None]] = field(default_factory=set)
    final_versions: dict[str, int] = field(default_factory=dict)


class DemoStack:
    """Server (v1, v2, v3 published, v1 stable), Prometheus when wanted, and later the fleet.

    A context manager: leaving it (normally, on an error or on Ctrl-C) stops the fleet workers,
    Prometheus and the server, in that order.
    """

    def __init__(self, config: DemoConfig, releases: dict[str, Any], out: TextIO | None = None,
                 children: Children | None = None) -> None:
        self.config = config
        self.releases = releases
        self.out = out or sys.stdout
        self.children = children or Children()
        self.run_dir = Path(config.workdir).resolve() / "run"
        self.server: ServerProcess | None = None
        self.prometheus: PrometheusProcess | None = None
        self.fleet: Fleet | None = None
        self.phone_worker: list[str] | None = None
        self.view = LiveView(self.out, print_every_seconds=config.print_every_seconds)

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def __enter__(self) -> DemoStack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        config = self.config
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.server = ServerProcess(self.run_dir / "server", self.releases["keys"]["public"],
                                    report_seconds=config.report_seconds,
                                    controller_seconds=config.controller_seconds,
                                    window_seconds=config.window_seconds)
        self.server.start()
        self.children.add("server", self.server.process, stop_timeout_seconds=15)
        self.say(f"server: {self.server.url} (SQLite in {self.server.data_dir}, log server.log)")
        from rollout_server.client import ServerClient

        client = ServerClient(self.server.url, self.server.admin)
        for version in (STABLE, GOOD, BAD):
            published = client.publish(self.releases["releases"][version])
            self.say(f"published {published['model']} v{published['version']}: "
                     f"{', '.join(v['id'] for v in published['variants'])}")
        self.server.api("POST", f"/v1/models/{MODEL_NAME}/stable", {"version": STABLE})
        self.say(f"stable: {MODEL_NAME} v{STABLE}")
        binary = find_prometheus()
        if config.prometheus or (config.prometheus is None and binary):
            if binary is None:
                raise RuntimeError("--prometheus given but no prometheus binary on PATH "
                                   "(Debian: apt-get install prometheus)")
            self.prometheus = PrometheusProcess(binary, f"127.0.0.1:{self.server.port}",
                                                self.run_dir / "prometheus", port=config.prometheus_port,
                                                scrape_interval=config.scrape_interval).start()
            self.children.add("prometheus", self.prometheus.process, stop_timeout_seconds=15)
            self.say(f"prometheus: {self.prometheus.url} scrapes the server every {config.scrape_interval} "
                     f"with edgeship's alert rules — look at {self.prometheus.url}/alerts and "
                     f"{self.prometheus.url}/graph")
        else:
            self.say("prometheus: not installed, skipped (Debian: apt-get install prometheus)")
        self.phone_worker = self._phone_worker()

    def _phone_worker(self) -> list[str] | None:
        """The phones' Node worker, built when stale; None (and why, plainly) when it cannot run."""
        config = self.config
        phones = config.fleet.phones()
        if config.phones is False or phones == 0:
            self.say("phones: none (the fleet runs Python agents only)")
            return None
        try:
            command = phone_worker_command()
        except (Unavailable, RuntimeError, OSError, subprocess.TimeoutExpired) as err:
            if config.phones:
                raise RuntimeError(f"phones required but the SDK cannot run: {err}") from err
            why = " ".join(str(err).strip().splitlines()[:2])  # a compile error's first message too
            self.say(f"phones: NONE — {why}. The fleet runs Python agents only "
                     "(`make demo` sets the SDK up: Node.js 20.19+ and `npm ci --ignore-scripts` in sdk/js)")
            return None
        self.say(f"phones: {phones} SDK agent{'s' if phones > 1 else ''} (android, ios; TypeScript SDK on "
                 "onnxruntime-node) in one Node process")
        return command

    def start_fleet(self) -> Fleet:
        """Start the fleet workers."""
        assert self.server is not None
        self.fleet = Fleet(self.config.fleet, self.run_dir / "fleet", self.server.url, self.server.enroll,
                           self.releases["keys"]["public"], self.releases["eval"], MODEL_NAME,
                           phone_worker=self.phone_worker)
        return self.fleet.start(self.children)

    def close(self) -> None:
        """Stop the fleet workers, Prometheus and the server (safe to call twice)."""
        self.view.close()
        running = self.children.pids()
        if running:
            self.say(f"stopping {len(running)} processes: {', '.join(running)}")
        with sigint_ignored():
            if self.fleet is not None:  # first, while the server can still take their last reports
                self.fleet.stop(self.children)
        self.children.stop_all()
        with sigint_ignored():
            if self.prometheus is not None:
                self.prometheus.stop()
            if self.server is not None:
                self.server.stop()


def run_loop(stack: DemoStack) -> LoopResult:
    """Fleet up on v1, the bad release rolled back, the good one promoted; see the module docstring.

    Raises:
        TimeoutError: a step did not happen in time (the message says which).
        RuntimeError: a rollout ended otherwise than expected.
    """
    config, result = stack.config, LoopResult()
    started = time.monotonic()
    fleet = stack.start_fleet()
    settings = config.fleet
    for warning in config.warnings():
        stack.say(f"warning: {warning}")
    result.agents_by_kind = {kind: fleet.agents_of(kind) for kind in (PYTHON, SDK) if fleet.agents_of(kind)}
    result.workers_by_kind = {kind: fleet.workers_of(kind) for kind in result.agents_by_kind}
    stack.say(f"fleet: {settings.agents} agents: {fleet_text(result.agents_by_kind, result.workers_by_kind)} "
              f"({settings.rate_per_second:g} inferences/s each, real eval data with labels)")
    monitor = Monitor(stack.server, MODEL_NAME, stack.view, fleet, stack.prometheus,
                      config.view_window_seconds)
    wait_for(lambda: fleet.snapshot().running(STABLE) == settings.agents, config.fleet_timeout_seconds,
             f"all {settings.agents} agents to run v{STABLE}", tick=monitor.tick, every_seconds=1.0)
    result.fleet_ready_seconds = time.monotonic() - started
    snapshot = fleet.snapshot()
    result.variants_by_class = {c: dict(v) for c, v in sorted(snapshot.variants_by_class().items())}
    variants = "; ".join(f"{kind} {c}: {', '.join(v)}" for (kind, c), v in result.variants_by_class.items())
    monitor.event(f"fleet ready in {result.fleet_ready_seconds:.0f} s: every agent runs v{STABLE}; "
                  f"variants {variants}")

    result.bad = _rollout(stack, monitor, BAD, "golden set does not match the model", "rolled_back",
                          config.rollback_timeout_seconds)
    result.refused_devices, canary_devices = refusals(result.bad.status)
    result.refused_by_class = refusals_by_class(result.bad.status)
    result.at_rollback = result.bad.arms
    monitor.event(f"{result.refused_devices} of {canary_devices} canary agents refused v{BAD} on-device "
                  f"(golden check) and kept serving v{STABLE}; all agents get v{STABLE} again")
    if stack.prometheus is not None:
        result.rollback_alert_seconds = _wait_for_alert(stack.prometheus, monitor, ROLLBACK_ALERT)

    result.good = _rollout(stack, monitor, GOOD, "retrained, good", "promoted",
                           config.promotion_timeout_seconds)
    promoted = time.monotonic()
    result.good_arms_seen = {arm[1:] for arm in monitor.arms_seen if arm[0] == result.good.id}
    result.at_promotion = result.good.arms
    wait_for(lambda: fleet.snapshot().running(GOOD) == settings.agents, config.fleet_timeout_seconds,
             f"all agents to run v{GOOD}", tick=monitor.tick, every_seconds=1.0)
    result.all_on_candidate_seconds = time.monotonic() - promoted
    final = fleet.snapshot()
    result.final_versions = {str(v): n for v, n in final.count("version").items()}
    result.at_end = final.arms()
    monitor.event(f"100%: all {settings.agents} agents run v{GOOD} "
                  f"({result.all_on_candidate_seconds:.0f} s after the promotion)")
    monitor.tick(force_print=True)
    result.loop_seconds = time.monotonic() - started
    return result


def _wait_for_alert(prometheus: PrometheusProcess, monitor: Monitor, name: str) -> float | None:
    """Wait until Prometheus fires alert ``name``; seconds waited, or None after the timeout."""
    started = time.monotonic()

    def firing() -> bool:
        answer = prometheus.query(f'ALERTS{{alertname="{name}", alertstate="firing"}}')
        return bool(answer.get("data", {}).get("result"))

    try:
        wait_for(firing, ALERT_TIMEOUT_SECONDS, name, tick=monitor.tick, every_seconds=1.0)
    except TimeoutError:
        monitor.event(f"Prometheus: {name} did not fire within {ALERT_TIMEOUT_SECONDS:.0f} s")
        return None
    waited = time.monotonic() - started
    monitor.event(f"Prometheus: alert {name} firing ({waited:.0f} s after the rollback; "
                  f"{prometheus.url}/alerts)")
    return waited


def refusals_by_class(status: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{device class: (canary devices that failed to load or golden-check, canary devices)}`` in
    the newest load-failure verdict (the server judges every class on its own as well)."""
    for verdict in status.get("verdicts") or []:
        if verdict["guard"] == "load_failures":
            classes = (verdict.get("stats") or {}).get("classes") or {}
            return {c: (int(k.get("canary_failed_devices", 0)), int(k.get("canary_devices", 0)))
                    for c, k in sorted(classes.items())}
    return {}


def refusals(status: dict[str, Any]) -> tuple[int, int]:
    """``(canary devices that failed to load or golden-check, canary devices)`` in the newest
    load-failure verdict of a rollout status."""
    for verdict in status.get("verdicts") or []:
        if verdict["guard"] == "load_failures":
            pooled = (verdict.get("stats") or {}).get("pooled") or {}
            return int(pooled.get("canary_failed_devices", 0)), int(pooled.get("canary_devices", 0))
    return 0, 0


def _rollout(stack: DemoStack, monitor: Monitor, version: str, what: str, expected: str,
             timeout_seconds: float) -> RolloutOutcome:
    config = stack.config
    body = rollout_body(MODEL_NAME, version, config.stages, config.stage_seconds, config.stage_samples,
                        config.guards)
    ramp = " → ".join(f"{p:g}%" for p in config.stages)

    def started(status: dict) -> None:
        monitor.event(f"rollout #{status['id']} started: {MODEL_NAME} v{STABLE} → v{version} ({what}), "
                      f"stages {ramp} (≥ {config.stage_seconds:g} s and {config.stage_samples} canary "
                      "inferences each), stratified by device class")

    # a split too small for the guards is bad luck only when the settings expect enough canaries
    attempts = 1 if config.warnings() else 5
    status = start_with_canaries(monitor, body, config.guards.load_failures, config.fleet.agents, started,
                                 attempts)
    outcome = follow_rollout(monitor, status["id"], timeout_seconds)
    labels = {"rolled_back": "ROLLED BACK automatically", "promoted": "PROMOTED"}
    label = labels.get(outcome.phase, outcome.phase)
    monitor.event(f"rollout #{outcome.id} {label} after {outcome.seconds:.0f} s")
    for _, reason in outcome.failing:
        monitor.event(f"    reason: {reason}")
    if outcome.phase != expected:
        raise RuntimeError(f"rollout #{outcome.id} of v{version} ended {outcome.phase}, expected {expected}: "
                           f"{outcome.reason}")
    return outcome


def run_demo(config: DemoConfig, out: TextIO | None = None) -> int:
    """``edgeship demo``: set-up, the loop, the summary; 0 on success, 1 when a step failed, 130 on Ctrl-C.

    Every process it starts is stopped before it returns, whatever happens (SIGTERM is handled
    like Ctrl-C).
    """
    import signal

    from examples.demo.summary import summary_lines

    out = out or sys.stdout
    children = Children()
    started = time.monotonic()

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    say(f"edgeship demo: {config.fleet.agents} agents, two gray releases; state in {config.workdir}")
    try:
        releases = ensure_releases(Path(config.workdir) / "example", children, say=say)
        for line in variant_table(releases["releases"][STABLE]):
            say(line)
        with DemoStack(config, releases, out, children) as stack:
            setup_seconds = time.monotonic() - started
            say(f"set-up done in {setup_seconds:.0f} s; the loop starts (Ctrl-C stops everything)")
            result = run_loop(stack)
            prometheus_url = stack.prometheus.url if stack.prometheus else None
            for line in summary_lines(result, config, setup_seconds, prometheus_url, str(stack.run_dir)):
                say(line)
            if config.keep_running:
                _keep_running(stack, say)
        return 0
    except KeyboardInterrupt:
        say("edgeship demo: interrupted; every process it started is stopped")
        return 130
    except (TimeoutError, RuntimeError, OSError) as err:
        say(f"edgeship demo: error: {err}")
        return 1
    finally:
        children.stop_all()
        signal.signal(signal.SIGTERM, previous)


def _keep_running(stack: DemoStack, say) -> None:
    say("--keep-running: server, fleet and Prometheus stay up; Ctrl-C stops them")
    monitor = Monitor(stack.server, MODEL_NAME, stack.view, stack.fleet, stack.prometheus,
                      stack.config.view_window_seconds)
    try:
        while True:
            rollouts = stack.server.api("GET", "/v1/rollouts")["rollouts"]
            monitor.rollout = rollouts[0] if rollouts else None
            monitor.tick()
            time.sleep(1.0)
    except KeyboardInterrupt:
        say("\nstopping")

