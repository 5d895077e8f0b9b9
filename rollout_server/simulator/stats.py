"""Request and report counts of the simulated fleet, per worker, merged once per window.

Each worker records into its own :class:`WorkerStats` (a lock taken per request, never
contended but by the main thread's :meth:`WorkerStats.take` once per window); the main thread
merges the snapshots into the window's line and into the run's :class:`Totals`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rollout_server.simulator.transport import Answer

#: request kinds, in the order of the summary.
KINDS = ("register", "assignment", "reports")


@dataclass
class Snapshot:
    """What happened since the previous snapshot (one worker's, or several merged).

    Attributes:
        statuses: (kind, status) → requests; status 0 means no response.
        latencies: kind → request seconds.
        reports_accepted: reports the server stored.
        reports_duplicate: reports the server had already stored (a retry).
        reports_rejected: reports refused (4xx other than 409) and dropped.
        traffic: (cohort, version) → summed inferences, errors and labelled/correct of accepted reports.
        max_lag_seconds: how late the latest-served device was against its schedule.
        failures: exceptions raised inside device ticks (each tick is skipped, the run goes on).
    """

    statuses: Counter = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    reports_accepted: int = 0
    reports_duplicate: int = 0
    reports_rejected: int = 0
    traffic: dict[tuple[str, str], Counter] = field(default_factory=dict)
    max_lag_seconds: float = 0.0
    failures: Counter = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        """Requests sent, answered or not."""
        return sum(self.statuses.values())

    def all_latencies(self) -> np.ndarray:
        """Every request's seconds, all kinds."""
        return np.fromiter((s for values in self.latencies.values() for s in values), dtype=float)

    def merge(self, other: Snapshot) -> None:
        """Add ``other`` into this one."""
        self.statuses.update(other.statuses)
        for kind, values in other.latencies.items():
            self.latencies.setdefault(kind, []).extend(values)
        self.reports_accepted += other.reports_accepted
        self.reports_duplicate += other.reports_duplicate
        self.reports_rejected += other.reports_rejected
        for key, counts in other.traffic.items():
            self.traffic.setdefault(key, Counter()).update(counts)
        self.max_lag_seconds = max(self.max_lag_seconds, other.max_lag_seconds)
        self.failures.update(other.failures)


class WorkerStats:
    """One worker's counters; :meth:`take` hands them over and starts afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current = Snapshot()

    def record(self, kind: str, answer: Answer) -> None:
        """Count one request and its latency."""
        with self._lock:
            self._current.statuses[kind, answer.status] += 1
            self._current.latencies[kind].append(answer.seconds)

    def count_reports(self, batch: Sequence[dict[str, Any]], accepted: set[str], duplicates: int) -> None:
        """Count a batch the server answered 200, and the traffic of the reports it stored."""
        with self._lock:
            snap = self._current
            snap.reports_accepted += len(accepted)
            snap.reports_duplicate += duplicates
            for report in batch:
                if report["id"] in accepted:
                    counts = snap.traffic.setdefault((report["cohort"], report["version"]), Counter())
                    counts.update(reports=1, inferences=report["inferences"],
                                  errors=sum(report["errors"].values()), labelled=report["labelled"],
                                  correct=report["correct"])

    def count_rejected(self, reports: int) -> None:
        """Count reports refused by the server."""
        with self._lock:
            self._current.reports_rejected += reports

    def lag(self, seconds: float) -> None:
        """Note how late a device's window was served."""
        if seconds > self._current.max_lag_seconds:
            with self._lock:
                self._current.max_lag_seconds = max(self._current.max_lag_seconds, seconds)

    def failure(self, error: BaseException) -> None:
        """Count an exception raised in a device tick."""
        with self._lock:
            self._current.failures[type(error).__name__] += 1

    def take(self) -> Snapshot:
        """The counts since the last call."""
        with self._lock:
            snapshot, self._current = self._current, Snapshot()
        return snapshot


def merged(snapshots: Iterable[Snapshot]) -> Snapshot:
    """One snapshot summing ``snapshots``."""
    total = Snapshot()
    for snapshot in snapshots:
        total.merge(snapshot)
    return total


def percentile_ms(seconds: np.ndarray | Sequence[float], q: float) -> float | None:
    """The ``q`` percentile (0..100) in milliseconds; ``None`` without samples."""
    values = np.asarray(seconds, dtype=float)
    return float(np.percentile(values, q) * 1e3) if values.size else None


class Totals:
    """The whole run: counts summed, latencies kept as compact arrays for the final quantiles."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self._latency_chunks: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}

    def add(self, window: Snapshot) -> None:
        """Fold one window in (its latency lists become float32 arrays)."""
        latencies, window.latencies = window.latencies, {}
        self.snapshot.merge(window)
        for kind, values in latencies.items():
            if values:
                self._latency_chunks.setdefault(kind, []).append(np.asarray(values, dtype=np.float32))

    def latencies(self, kind: str | None = None) -> np.ndarray:
        """Every request's seconds of ``kind`` (all kinds when None)."""
        kinds = [kind] if kind else list(self._latency_chunks)
        chunks = [c for k in kinds for c in self._latency_chunks.get(k, [])]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
