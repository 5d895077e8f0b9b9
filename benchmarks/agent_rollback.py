"""Time from a rollback decision on the server to the device running the stable model.

One agent (check-in interval C) runs the stable v1. Each round starts a rollout of v2 at 99.99%
(stages ``[{"percent": 99.99}, {"percent": 100}]``), waits until the agent runs v2 as canary,
waits a random fraction of C (so the abort lands anywhere in the check-in cycle, not always right
after one), then aborts the rollout (``POST /v1/rollouts/<id>/abort``) and times how long until
``agent.current.version == "1"``. The agent's assignment requests are timestamped, so the time
splits into waiting for the next check-in and the check-in plus swap itself. v1's files stay in
the model store as last good, so rolling back needs no download (checked each round).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.agent import Agent

POLL_SECONDS = 0.002


@dataclass
class RollbackResult:
    """Seconds per round, and the check-in interval they are measured in."""

    interval_seconds: float
    total: list[float] = field(default_factory=list)  # abort answered -> agent runs v1
    waiting: list[float] = field(default_factory=list)  # abort answered -> the check-in that saw it
    applying: list[float] = field(default_factory=list)  # that check-in sent -> agent runs v1
    v1_on_disk: list[bool] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        c = self.interval_seconds
        return {
            "rounds": len(self.total), "check_interval_seconds": c,
            "median_intervals": statistics.median(self.total) / c, "max_intervals": max(self.total) / c,
            "median_seconds": statistics.median(self.total), "max_seconds": max(self.total),
            "waiting_for_check_in_median_seconds": statistics.median(self.waiting),
            "check_in_and_swap_median_seconds": statistics.median(self.applying),
            "check_in_and_swap_max_seconds": max(self.applying),
            "download_needed": not all(self.v1_on_disk),
            "rounds_seconds": [round(t, 4) for t in self.total],
        }


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` every 2 ms; the monotonic time it first held.

    Raises:
        TimeoutError: it did not hold within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if condition():
            return now
        if now > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_SECONDS)


def runs(agent: Agent, version: str) -> bool:
    model = agent.current
    return model is not None and model.version == version


def timestamp_check_ins(agent: Agent) -> list[float]:
    """Record when each of the agent's assignment requests starts (wraps this agent's client)."""
    starts: list[float] = []
    assignment = agent.api.assignment

    def timed(*args: Any, **kwargs: Any) -> Any:
        starts.append(time.monotonic())
        return assignment(*args, **kwargs)

    agent.api.assignment = timed  # type: ignore[method-assign]
    return starts


def measure_rollbacks(agent: Agent, api: Callable[..., Any], model: str, rounds: int, seed: int = 0,
                      progress: Callable[[str], None] = print) -> RollbackResult:
    """``rounds`` rollouts of v2, each aborted while the agent runs it; see the module docstring.

    Args:
        agent: a started agent running v1 of ``model``.
        api: an admin JSON request to the server (``ServerProcess.api``).
    """
    interval = agent.config.check_interval_seconds
    result = RollbackResult(interval)
    starts = timestamp_check_ins(agent)
    phase = random.Random(seed)
    wait_for(lambda: runs(agent, "1"), 60, "v1 installed")
    v1_sha = agent.current.release.sha256  # type: ignore[union-attr]
    for round_index in range(rounds):
        rollout = api("POST", "/v1/rollouts", {
            "model": model, "candidate_version": "2", "stages": [{"percent": 99.99}, {"percent": 100}]})
        wait_for(lambda: runs(agent, "2"), 60, "canary v2 installed")
        if agent.status()["cohort"] != "canary":
            raise RuntimeError(f"v2 runs but not as canary: {agent.status()}")
        time.sleep(phase.uniform(0, interval))
        result.v1_on_disk.append(agent.store.has_blob(v1_sha))
        api("POST", f"/v1/rollouts/{rollout['id']}/abort", {"reason": "benchmark"})
        decided = time.monotonic()
        back = wait_for(lambda: runs(agent, "1"), 10 * interval + 30, "back on v1")
        # the check-in that brought v1: the last one sent before v1 ran (it may have left just
        # before the abort was answered, and still been answered after it)
        check_in = max([s for s in starts if s <= back], default=decided)
        result.total.append(back - decided)
        result.waiting.append(max(check_in - decided, 0.0))
        result.applying.append(back - check_in)
        progress(f"  rollback {round_index + 1}/{rounds}: back on v1 after {back - decided:.3f} s "
                 f"({(back - decided) / interval:.2f} intervals; waited {result.waiting[-1]:.3f} s for "
                 f"the check-in, {back - check_in:.3f} s check-in + swap)")
    return result
