"""Running the simulated fleet: worker threads, the per-window line, stopping by itself.

Usage::

    config = SimulationConfig(server="http://127.0.0.1:8080", enrollment_token=enroll, model="digits-cnn",
                              devices=2000, duration_seconds=120,
                              profiles=ProfileTable({"1": Profile(), "2": Profile(error_rate=0.05)}),
                              watch_rollout=7, operator_token=admin)
    summary = Simulation(config, log=print).run()     # a dict; see :func:`summary.build_summary`

Concurrency: ``workers`` threads (default 8), never one per device. Each worker owns every
``workers``-th device and one keep-alive connection, and keeps its devices in a heap by the
time their next window is due: it ticks the earliest due device, pushes it back one window
later, and sleeps when nobody is due. Devices start spread evenly over the first window. When
the server (or the machine) cannot keep up, windows stretch rather than pile up: a device is
never due earlier than the moment its last tick ended, and ``max_lag_seconds`` says how far
behind schedule the fleet ran.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rollout_server.simulator.config import SimulationConfig
from rollout_server.simulator.device import DeviceSettings, SimDevice
from rollout_server.simulator.errors import SimulatorError
from rollout_server.simulator.fleet import plan_fleet
from rollout_server.simulator.safety import Target, loopback_target
from rollout_server.simulator.stats import Snapshot, Totals, WorkerStats, merged
from rollout_server.simulator.summary import WindowLine, build_summary, window_line
from rollout_server.simulator.transport import Connection
from rollout_server.simulator.watch import RolloutStatus, RolloutWatcher


class Worker(threading.Thread):
    """Serves a slice of the fleet over one connection, in a time-sliced loop (see the module)."""

    def __init__(self, index: int, devices: Sequence[SimDevice], target: Target, settings: DeviceSettings,
                 config: SimulationConfig, stop: threading.Event, start_at: float) -> None:
        super().__init__(name=f"edgeship-simulate-{index}", daemon=True)
        self.devices = list(devices)
        self.target = target
        self.settings = settings
        self.config = config
        self.stop_event = stop
        self.start_at = start_at
        self.stats = WorkerStats()
        self.rng = np.random.default_rng([config.seed, index])

    def run(self) -> None:
        conn = Connection(self.target, self.config.request_timeout_seconds)
        window = self.config.window_seconds
        n = len(self.devices)
        heap = [(self.start_at + window * j / n, j) for j in range(n)]  # sorted, so already a heap
        try:
            while heap and not self.stop_event.is_set():
                due, j = heap[0]
                now = time.monotonic()
                if due > now:
                    self.stop_event.wait(min(due - now, 0.5))
                    continue
                heapq.heappop(heap)
                self.stats.lag(now - due)
                try:
                    alive = self.devices[j].tick(conn, self.settings, self.rng, self.stats, time.time())
                except Exception as err:  # an odd answer or a bug must not end the whole run
                    self.stats.failure(err)
                    conn.close()
                    alive = True
                if alive:
                    heapq.heappush(heap, (max(due + window, time.monotonic()), j))
        finally:
            conn.close()


class Simulation:
    """A simulated fleet against one loopback server; :meth:`run` blocks until it stops.

    Args:
        config: the run.
        log: called with each live line and the final summary text (``None``: silent).

    Raises:
        NotLoopbackError: ``config.server`` is not on loopback (raised here, before any request).
    """

    def __init__(self, config: SimulationConfig, log: Callable[[str], None] | None = None) -> None:
        self.target = loopback_target(config.server)
        self.config = config
        self.log = log or (lambda _line: None)
        self._stop = threading.Event()
        self.devices: list[SimDevice] = []
        self.lines: list[WindowLine] = []

    def stop(self) -> None:
        """Ask a running :meth:`run` to stop (from another thread); it returns its summary."""
        self._stop.set()

    def run(self) -> dict[str, Any]:
        """Run until the duration passes, the watched rollout ends, :meth:`stop` or Ctrl-C.

        Returns:
            The summary (:func:`~rollout_server.simulator.summary.build_summary`).

        Raises:
            SimulatorError: the watched rollout does not exist, has already ended, or its token
                is refused.
        """
        config = self.config
        watcher = None
        if config.watch_rollout is not None:
            watcher = RolloutWatcher(self.target, config.watch_rollout, config.operator_token or "",
                                     config.request_timeout_seconds)
        status = watcher.status() if watcher else None  # fails fast on an unknown rollout
        if status is not None and status.is_terminal:
            raise SimulatorError(f"rollout {status.rollout_id} is already {status.phase}: nothing to watch")
        settings = DeviceSettings(config.model, config.enrollment_token, config.profiles,
                                  config.inferences_per_second, config.time_scale, config.labelled_fraction,
                                  uuid.uuid4().hex[:8])
        specs = plan_fleet(config.devices, config.classes, config.runtimes, config.seed)
        self.devices = [SimDevice(i, spec) for i, spec in enumerate(specs)]
        count = min(config.workers, len(self.devices))
        started = time.monotonic()
        workers = [Worker(k, self.devices[k::count], self.target, settings, config, self._stop, started)
                   for k in range(count)]
        for worker in workers:
            worker.start()
        totals, stopped_because = Totals(), "duration"
        try:
            stopped_because, status = self._watch_loop(workers, watcher, status, totals, started)
        except KeyboardInterrupt:
            stopped_because = "interrupted"
        finally:
            self._stop.set()
            for worker in workers:
                worker.join(timeout=config.request_timeout_seconds + 1)
            totals.add(merged(w.stats.take() for w in workers))
        elapsed = time.monotonic() - started
        if watcher is not None:
            try:
                status = watcher.status() or status
            finally:
                watcher.close()
        summary = build_summary(config, self.target, self.devices, totals, elapsed, stopped_because, status,
                                self.lines)
        return summary

    def _watch_loop(self, workers: Sequence[Worker], watcher: RolloutWatcher | None,
                    status: RolloutStatus | None, totals: Totals,
                    started: float) -> tuple[str, RolloutStatus | None]:
        """Print a line per window until a reason to stop; returns it and the last status."""
        window = self.config.window_seconds
        deadline = started + self.config.duration_seconds
        next_line = last_line = started
        next_line += window
        while True:
            if self._stop.wait(max(0.0, min(next_line, deadline) - time.monotonic())):
                return "stopped", status
            now = time.monotonic()
            if now >= next_line or now >= deadline:
                snapshot: Snapshot = merged(w.stats.take() for w in workers)
                if watcher is not None:
                    status = watcher.status() or status
                line = window_line(now - started, now - last_line, snapshot, self.devices, status,
                                   totals.snapshot.reports_accepted)
                self.lines.append(line)
                self.log(line.text())
                totals.add(snapshot)
                last_line, next_line = now, next_line + window
                if next_line <= now:  # the main thread fell behind: no burst of catch-up lines
                    next_line = now + window
                if status is not None and status.is_terminal:
                    return f"rollout {status.phase}", status
            if now >= deadline:
                return "duration", status
