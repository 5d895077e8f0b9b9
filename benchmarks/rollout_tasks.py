"""The rollout benchmarks' tasks: seeded simulated rollouts of one scenario, run in worker
processes, summarised, and checked against a target (``benchmarks/rollout_stats.py``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from rollout_server.analysis import GuardSpec
from rollout_server.analysis.arm_profile import ArmProfile
from rollout_server.analysis.simulate import run_rollouts, summarize

#: targets a row can be checked against: (rate of a summary, whether it meets the target)
TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "rolled back <= 5%": ("rolled_back_rate", lambda r: r <= 0.05),
    "rolled back >= 95%": ("rolled_back_rate", lambda r: r >= 0.95),
    "never promoted": ("promoted_rate", lambda r: r == 0.0),
    "promoted >= 95%": ("promoted_rate", lambda r: r >= 0.95),
}


def not_rolled_back(summary: dict[str, Any]) -> float:
    return 1.0 - summary["rolled_back_rate"]


@dataclass(frozen=True)
class Task:
    """``runs`` seeded rollouts of one scenario (run in a worker process)."""

    name: str
    runs: int
    seed: int
    canary: ArmProfile
    target: str
    stable: ArmProfile = field(default_factory=ArmProfile)
    spec: GuardSpec = field(default_factory=GuardSpec.default)
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # copied into the row


def run_task(task: Task) -> dict[str, Any]:
    """Run one task and summarise it."""
    started = time.perf_counter()
    results = run_rollouts(task.runs, task.spec, task.stable, task.canary, seed=task.seed, **task.options)
    summary = summarize(results)
    summary["not_rolled_back_rate"] = not_rolled_back(summary)
    return {"scenario": task.name, "target": task.target, **task.extra, **summary,
            "seconds": round(time.perf_counter() - started, 2)}


def run_tasks(tasks: Sequence[Task], jobs: int) -> list[dict[str, Any]]:
    """Every task's row, in the order given; ``jobs`` worker processes (1: in this one)."""
    started = time.perf_counter()

    def progress(done: int, row: dict[str, Any]) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {done}/{len(tasks)} {row['scenario']}: "
              f"rolled back {row['rolled_back_rate']:.1%}, promoted {row['promoted_rate']:.1%} "
              f"({row['seconds']:.0f} s)", file=sys.stderr, flush=True)

    if jobs <= 1:
        rows = []
        for i, task in enumerate(tasks):
            rows.append(run_task(task))
            progress(i + 1, rows[-1])
        return rows
    out: list[dict[str, Any] | None] = [None] * len(tasks)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_task, task): i for i, task in enumerate(tasks)}
        for done, future in enumerate(as_completed(futures), 1):
            out[futures[future]] = future.result()
            progress(done, future.result())
    return [row for row in out if row is not None]


def checked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with whether it meets its target (``ok``; targets in :data:`TARGETS`)."""
    out = []
    for row in rows:
        rate, ok = TARGETS[row["target"]]
        out.append({**row, "ok": ok(row[rate])})
    return out
