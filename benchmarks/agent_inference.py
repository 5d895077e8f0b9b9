"""Inference through the agent next to a bare runtime loop, and where the agent's per-call time goes.

:func:`paired_latencies` times ``Agent.predict`` and ``open_runner(...).run`` on the same file
and the same inputs in alternating blocks (agent-bare, then bare-agent, ...), so drift of a
shared machine (other processes, CPU frequency) hits both sides alike. :func:`overhead_breakdown`
times ``predict`` on a no-op runtime and each of its pieces alone, in nanoseconds per call.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import threading
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.model import LoadedModel
from edge_agent.window import WindowKey
from edgeship.runtimes import Runner, open_runner

#: a block of calls on one side lasts about this long: short, so both blocks of a pair see the
#: same machine load, long enough to keep each side's caches warm.
BLOCK_SECONDS = 0.02
MIN_PAIRS = 4


@dataclass
class PairedResult:
    """Per-call latencies (seconds) of both sides, and how they were taken."""

    agent: list[float]
    bare: list[float]
    block_pairs: int
    calls_per_block: int
    pair_ratios: list[float]  # agent p50 / bare p50 of each pair of blocks

    def summary(self) -> dict[str, Any]:
        a50, b50 = _quantile(self.agent, 0.5), _quantile(self.bare, 0.5)
        quartiles = statistics.quantiles(self.pair_ratios, n=4) if len(self.pair_ratios) > 1 else [0, 0, 0]
        return {
            "calls_per_side": len(self.agent), "block_pairs": self.block_pairs,
            "calls_per_block": self.calls_per_block,
            "agent_p50_ms": 1e3 * a50, "agent_p95_ms": 1e3 * _quantile(self.agent, 0.95),
            "bare_p50_ms": 1e3 * b50, "bare_p95_ms": 1e3 * _quantile(self.bare, 0.95),
            "p50_ratio": a50 / b50, "overhead_p50_us": 1e6 * (a50 - b50),
            "pair_ratio_median": statistics.median(self.pair_ratios),
            "pair_ratio_quartiles": [round(q, 4) for q in quartiles],
        }


def bare_runner(model: LoadedModel, path: Path, threads: int | None) -> Runner:
    """The agent's model file opened again, exactly as :func:`edge_agent.model.load_model` opens it."""
    variant = model.release.variant
    return open_runner(path, variant["format"], model.input_names, io=variant.get("io"), threads=threads,
                       output_names=model.output_names)


def input_feeds(eval_npz: Path, input_name: str, count: int = 256) -> list[dict[str, np.ndarray]]:
    """``count`` single-sample batches from the eval set, keyed by the model's input name."""
    with np.load(eval_npz) as npz:
        images = np.ascontiguousarray(npz["image"][:count], dtype=np.float32)
    return [{input_name: images[i : i + 1]} for i in range(len(images))]


def _timed_block(call: Callable[[dict[str, np.ndarray]], Any], feeds: Sequence[dict[str, np.ndarray]],
                 start: int, calls: int, out: list[float]) -> None:
    clock = time.perf_counter
    count = len(feeds)
    for i in range(start, start + calls):
        feed = feeds[i % count]
        began = clock()
        call(feed)
        out.append(clock() - began)


def paired_latencies(agent: Agent, bare: Runner, feeds: Sequence[dict[str, np.ndarray]],
                     seconds: float) -> PairedResult:
    """``agent.predict`` and ``bare.run`` in alternating blocks for about ``seconds`` in all.

    Both sides get the same feeds in the same order; each block starts where the other side's
    block of that pair started. The calls per block are set so a block lasts ~20 ms; blocks go on
    until ``seconds`` of wall time have passed (at least 4 pairs).
    """
    warm: list[float] = []
    _timed_block(bare.run, feeds, 0, 50, warm)
    _timed_block(agent.predict, feeds, 0, 50, warm)
    per_call = max(statistics.median(warm), 1e-6)
    calls = int(min(max(BLOCK_SECONDS / per_call, 5), 5000))
    agent_times: list[float] = []
    bare_times: list[float] = []
    ratios = []
    pair = 0
    deadline = time.monotonic() + seconds  # wall time: on a busy machine each block takes longer
    while pair < MIN_PAIRS or time.monotonic() < deadline:
        start = pair * calls
        block_a: list[float] = []
        block_b: list[float] = []
        gc.collect()
        order = ((agent.predict, block_a), (bare.run, block_b))
        for call, out in order if pair % 2 == 0 else order[::-1]:
            _timed_block(call, feeds, start, calls, out)
        agent_times += block_a
        bare_times += block_b
        ratios.append(statistics.median(block_a) / statistics.median(block_b))
        pair += 1
    return PairedResult(agent_times, bare_times, pair, calls, ratios)


def _quantile(values: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q))


# -- where the time goes ---------------------------------------------------------------------

class NoopRunner:
    """A runtime that answers instantly with fixed outputs: what is left is the agent's cost."""

    runtime = "noop"
    version = "0"

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self._outputs = outputs

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._outputs


def overhead_breakdown(model: LoadedModel, config: AgentConfig, feed: dict[str, np.ndarray], label: int,
                       number: int = 2_000, rounds: int = 60) -> dict[str, float]:
    """Nanoseconds per call of ``predict`` on a no-op runtime and of each piece of it alone.

    A throwaway agent (never started: no thread, no server traffic; its state under
    ``config.state_dir``) runs a copy of ``model`` whose runtime answers at once. The pieces are
    timed in interleaved rounds (the minimum per piece counts, as ``timeit`` advises).
    """
    outputs = model.run(feed)
    stub = dataclasses.replace(model, runner=NoopRunner(outputs), _lock=threading.Lock())
    agent = Agent(config, device={"device_class": "bench"})
    key = WindowKey(model.release.model, model.version, model.variant_id, None, "stable")
    agent._swap(stub, key)  # a benchmark-only agent, never started
    lock = threading.Lock()
    windows = agent.windows
    shadow = agent.shadow
    clock = time.perf_counter
    names = {
        "runtime call alone (no-op runner.run)": "runner.run(feed)",
        "LoadedModel.run (frame + model lock)": "stub.run(feed)",
        "threading.Lock with-block": "with lock: pass",
        "time.perf_counter() x2": "clock(); clock()",
        "WindowSet.record_inference": "windows.record_inference(key, 1.2e-05)",
        "label handling, 1 row (_record_labels)": "agent._record_labels(key, outputs[0], label)",
        "shadow check (none loaded)": "shadow.model is not None",
        "predict(feed)": "agent.predict(feed)",
        "predict(feed, label=...)": "agent.predict(feed, label=label)",
    }
    scope = {"runner": stub.runner, "stub": stub, "lock": lock, "clock": clock, "windows": windows,
             "key": key, "agent": agent, "outputs": outputs, "label": label, "shadow": shadow, "feed": feed}
    timers = {name: timeit.Timer(stmt, globals=scope) for name, stmt in names.items()}
    best = dict.fromkeys(names, float("inf"))
    try:
        for _ in range(rounds):
            for name, timer in timers.items():
                best[name] = min(best[name], timer.timeit(number) / number * 1e9)
    finally:
        agent.outbox.close()
    best["agent overhead (predict - runtime call)"] = best["predict(feed)"] - best[
        "runtime call alone (no-op runner.run)"]
    return best
