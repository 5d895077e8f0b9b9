"""The live view: per-cohort rates computed from the server's ``/metrics``, redrawn while it runs.

Every tick reads the server's ``/metrics`` (fleet totals per model, variant, cohort and device
class, computed from its database) and keeps a short history; the view shows the difference
over the last ``window_seconds`` per cohort: inferences per second, inference error rate,
load/golden-check failures, p95 latency (from the merged histogram buckets, at most 10% apart
from 100 µs to 10 s, as Prometheus' ``histogram_quantile`` interpolates), the mean (from the
histogram's ``_sum``) and accuracy on labelled samples. The rollout line comes
from the rollouts API, the agent counts (and, with phones, what each kind runs) from the
fleet's own status files.

On a terminal the block is redrawn in place; otherwise (a pipe, a log, a test) it is printed
every ``print_every_seconds``. Events (a rollback, a new stage) are printed above it for good.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from edgeship.contract.latency import METRIC_BUCKETS_SECONDS, quantile
from monitoring.queries import INFERENCE_ERROR_REASONS, LOAD_FAILURE_REASONS

COHORTS = ("stable", "canary")
INFERENCE_ERRORS = frozenset(INFERENCE_ERROR_REASONS.split("|"))
LOAD_FAILURES = frozenset(LOAD_FAILURE_REASONS.split("|"))
_BOUNDS = [*map(str, METRIC_BUCKETS_SECONDS), "+Inf"]


@dataclass
class CohortTotals:
    """Cumulative counters of one cohort of one model, summed over variants and device classes."""

    inferences: float = 0.0
    errors: float = 0.0
    load_failures: float = 0.0
    labelled: float = 0.0
    correct: float = 0.0
    latency_sum_seconds: float = 0.0
    cumulative_buckets: list[float] = field(default_factory=lambda: [0.0] * len(_BOUNDS))

    def minus(self, older: CohortTotals) -> CohortTotals:
        """The increase since ``older``."""
        return CohortTotals(
            self.inferences - older.inferences, self.errors - older.errors,
            self.load_failures - older.load_failures, self.labelled - older.labelled,
            self.correct - older.correct, self.latency_sum_seconds - older.latency_sum_seconds,
            [a - b for a, b in zip(self.cumulative_buckets, older.cumulative_buckets, strict=True)])


def parse_metrics(text: str, model: str) -> dict[str, CohortTotals]:
    """Per-cohort totals of ``model`` from the server's ``/metrics`` text."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {cohort: CohortTotals() for cohort in COHORTS}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or labels.get("cohort") not in totals:
                continue
            cohort = totals[labels["cohort"]]
            name, value = sample.name, sample.value
            if name == "edgeship_inferences_total":
                cohort.inferences += value
            elif name == "edgeship_inference_errors_total":
                if labels.get("reason") in INFERENCE_ERRORS:
                    cohort.errors += value
                elif labels.get("reason") in LOAD_FAILURES:
                    cohort.load_failures += value
            elif name == "edgeship_eval_samples_total":
                cohort.labelled += value
            elif name == "edgeship_eval_correct_total":
                cohort.correct += value
            elif name == "edgeship_inference_latency_seconds_sum":
                cohort.latency_sum_seconds += value
            elif name == "edgeship_inference_latency_seconds_bucket" and labels.get("le") in _BOUNDS:
                cohort.cumulative_buckets[_BOUNDS.index(labels["le"])] += value
    return totals


@dataclass(frozen=True)
class CohortRates:
    """One cohort over a window; ``None`` where there were no samples."""

    inferences_per_second: float
    error_rate: float | None
    load_failures: int
    p95_seconds: float | None
    mean_seconds: float | None
    accuracy: float | None


def rates(delta: CohortTotals, seconds: float) -> CohortRates:
    """Rates of one cohort from its increase over ``seconds``."""
    cumulative = delta.cumulative_buckets
    counts = [max(0, round(c - (cumulative[i - 1] if i else 0.0))) for i, c in enumerate(cumulative)]
    return CohortRates(
        inferences_per_second=delta.inferences / seconds if seconds > 0 else 0.0,
        error_rate=delta.errors / delta.inferences if delta.inferences > 0 else None,
        load_failures=round(delta.load_failures),
        p95_seconds=quantile(counts, 0.95, METRIC_BUCKETS_SECONDS) if sum(counts) > 0 else None,
        mean_seconds=delta.latency_sum_seconds / sum(counts) if sum(counts) > 0 else None,
        accuracy=delta.correct / delta.labelled if delta.labelled > 0 else None,
    )


class MetricsHistory:
    """Recent ``/metrics`` totals; :meth:`window` compares the newest with one ``seconds`` older."""

    def __init__(self, keep_seconds: float = 120.0) -> None:
        self.keep_seconds = keep_seconds
        self.samples: deque[tuple[float, dict[str, CohortTotals]]] = deque()

    def add(self, at: float, totals: dict[str, CohortTotals]) -> None:
        self.samples.append((at, totals))
        while self.samples and at - self.samples[0][0] > self.keep_seconds:
            self.samples.popleft()

    def window(self, seconds: float) -> tuple[float, dict[str, CohortRates]] | None:
        """``(actual seconds, rates per cohort)`` over about the last ``seconds`` (None: too few samples)."""
        if len(self.samples) < 2:
            return None
        newest_at, newest = self.samples[-1]
        older_at, older = self.samples[0]
        for at, totals in reversed(self.samples):
            if newest_at - at >= seconds:
                older_at, older = at, totals
                break
        span = newest_at - older_at
        if span <= 0:
            return None
        return span, {c: rates(newest[c].minus(older[c]), span) for c in COHORTS}


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{1000 * value:.3f} ms"


def latest_verdicts(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdicts of the newest analysis window of a rollout status (one per guard)."""
    verdicts = status.get("verdicts") or []
    if not verdicts:
        return []
    newest = verdicts[0]["window_end"]
    return [v for v in verdicts if v["window_end"] == newest][::-1]


def render(elapsed_seconds: float, rollout: dict[str, Any] | None, window: tuple[float, dict] | None,
           fleet: Any | None, verdicts: list[dict[str, Any]], alerts: list[str] | None) -> list[str]:
    """The live block's lines.

    Args:
        elapsed_seconds: time since the loop started.
        rollout: the rollout summary (``GET /v1/rollouts``), or None before the first one.
        window: :meth:`MetricsHistory.window`.
        fleet: :class:`examples.demo.fleet.FleetSnapshot` or None.
        verdicts: the newest window's verdicts of the rollout.
        alerts: names of the firing Prometheus alerts (None: Prometheus not running).
    """
    minutes, seconds = divmod(int(elapsed_seconds), 60)
    if rollout is None:
        head = "no rollout yet"
    else:
        head = (f"rollout #{rollout['id']} {rollout['model']} "
                f"v{rollout['baseline']} → v{rollout['candidate']} · {rollout['phase']}"
                f" · stage {rollout['stage']}/{rollout['stages']}"
                f" · canary share {rollout['canary_percent']:g}%")
    lines = [f"── {minutes}:{seconds:02d} ── {head} ──"]
    span = f"last {window[0]:.0f} s" if window else "waiting for two /metrics samples"
    lines.append(f"  {'cohort':<8}{'agents':>7}{'on cand.':>9}{'inf/s':>8}{'error rate':>12}"
                 f"{'p95 latency':>13}{'mean':>11}{'accuracy':>10}{'load/golden fail':>18}"
                 f"   ({span}, from /metrics)")
    for cohort in COHORTS:
        agents = on_candidate = "–"
        if fleet is not None:
            agents = str(fleet.count("cohort")[cohort])
            if rollout is not None:
                on_candidate = str(fleet.count("version", {"cohort": cohort})[rollout["candidate"]])
        r = window[1][cohort] if window else None
        lines.append(
            f"  {cohort:<8}{agents:>7}{on_candidate:>9}"
            f"{(f'{r.inferences_per_second:.1f}' if r else '–'):>8}{_pct(r.error_rate if r else None, 2):>12}"
            f"{_ms(r.p95_seconds if r else None):>13}{_ms(r.mean_seconds if r else None):>11}"
            f"{_pct(r.accuracy if r else None):>10}"
            f"{(str(r.load_failures) if r else '–'):>18}")
    if fleet is not None:
        versions = ", ".join(f"v{v} ×{n}" for v, n in sorted(fleet.count("version").items(), key=str) if v)
        lines.append(f"  fleet: {fleet.started}/{fleet.planned} agents started; "
                     f"running {versions or 'nothing yet'}")
        kinds = sorted({a.get("kind", "python") for a in fleet.agents}, key=lambda k: (k != "python", k))
        if len(kinds) > 1:  # Python agents and SDK phones: what each kind runs, per cohort
            lines.append("  by kind: " + " · ".join(f"{kind} {_runs(fleet, kind)}" for kind in kinds))
    if verdicts:
        lines.append("  guards: " + " · ".join(f"{v['guard']} {v['outcome']}" for v in verdicts))
    if alerts is not None:
        lines.append(f"  Prometheus alerts firing: {', '.join(alerts) or 'none'}")
    return lines


def _runs(fleet: Any, kind: str) -> str:
    """``canary v2 ×2, stable v1 ×18`` for the agents of one kind."""
    counts: dict[str, int] = {}
    for agent in fleet.agents:
        if agent.get("kind", "python") == kind and agent.get("version") is not None:
            what = f"{agent.get('cohort')} v{agent['version']}"
            counts[what] = counts.get(what, 0) + 1
    return ", ".join(f"{what} ×{n}" for what, n in sorted(counts.items())) or "nothing yet"


class LiveView:
    """Draws the block: in place on a terminal, every ``print_every_seconds`` otherwise.

    Args:
        out: where to write (default: stdout).
        tty: redraw in place (default: whether ``out`` is a terminal).
        print_every_seconds: how often a non-terminal gets the block.
    """

    def __init__(self, out: TextIO | None = None, tty: bool | None = None,
                 print_every_seconds: float = 10.0) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.print_every_seconds = print_every_seconds
        self._drawn = 0
        self._lines: list[str] = []
        self._printed_at = float("-inf")  # the first block prints at once, however long the host is up

    def show(self, lines: list[str], force: bool = False) -> None:
        """Replace the block with ``lines``."""
        self._lines = lines
        if self.tty:
            self._erase()
            self._draw()
        elif force or time.monotonic() - self._printed_at >= self.print_every_seconds:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
            self._printed_at = time.monotonic()

    def event(self, text: str) -> None:
        """Print ``text`` for good, above the block."""
        if self.tty:
            self._erase()
        self.out.write(text + "\n")
        if self.tty:
            self._draw()
        self.out.flush()

    def close(self) -> None:
        """Leave the last block on screen."""
        self._drawn = 0

    def _erase(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        if self._lines:
            self.out.write("\n".join(self._lines) + "\n")
            self._drawn = len(self._lines)
        self.out.flush()
