"""The demo's final summary: what each rollout did and why, how long everything took."""

from __future__ import annotations

from collections import Counter
from typing import Any

from examples.demo.live import latest_verdicts
from examples.demo.rollouts import RolloutOutcome


def _clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


def _phase(outcome: RolloutOutcome) -> str:
    return outcome.phase.replace("_", " ").upper()


def _ramp(outcome: RolloutOutcome) -> str:
    steps = [f"{percent:g}% for {seconds:.0f} s" for percent, seconds in outcome.stage_seconds]
    return " → ".join(steps)


def _fleet_line(variants_by_class: dict[str, dict[str, int]]) -> str:
    parts = []
    for device_class, variants in variants_by_class.items():
        count = sum(variants.values())
        parts.append(f"{device_class} ×{count} → {', '.join(sorted(map(str, variants)))}")
    return " · ".join(parts)


def summary_lines(result: Any, config: Any, setup_seconds: float, prometheus_url: str | None,
                  run_dir: str) -> list[str]:
    """The summary block.

    Args:
        result: :class:`examples.demo.run.LoopResult`.
        config: :class:`examples.demo.run.DemoConfig`.
        setup_seconds: set-up time (releases, server, publishing, Prometheus).
        prometheus_url: Prometheus' URL, or None.
        run_dir: this run's directory (logs).
    """
    fleet = config.fleet
    bad, good = result.bad, result.good
    lines = [
        "══ edgeship demo: summary " + "═" * 50,
        f"set-up   {setup_seconds:5.0f} s   releases, server (SQLite), publish v1 v2 v3, v1 stable"
        + (", Prometheus" if prometheus_url else ""),
        f"loop     {_clock(result.loop_seconds):>5}     fleet start → bad release rolled back → good release "
        f"at 100% (target: under 5:00)",
        f"fleet             {fleet.agents} real edge agents in {fleet.workers} worker processes, "
        f"{fleet.rate_per_second:g} inferences/s each on the eval set (with labels); "
        f"ready in {result.fleet_ready_seconds:.0f} s",
        f"                  {_fleet_line(result.variants_by_class)}",
    ]
    if bad is not None:
        lines += [
            f"bad v{bad.candidate}   rollout #{bad.id} {_phase(bad)} after {bad.seconds:.0f} s at "
            f"{bad.stage_seconds[-1][0]:g}% — {result.refused_devices} canary agents refused it on-device "
            "(golden check) and never served it",
            *(f"           reason: {reason}" for _, reason in bad.failing),
        ]
    if good is not None:
        lines.append(f"good v{good.candidate}  rollout #{good.id} {_phase(good)} after "
                     f"{good.seconds:.0f} s: {_ramp(good)} → 100%; every agent on v{good.candidate} "
                     f"{result.all_on_candidate_seconds:.0f} s later")
        for verdict in latest_verdicts(good.status):
            lines.append(f"           {verdict['outcome']:<5} {verdict['reason']}")
    versions = Counter(result.final_versions)
    lines.append("now      " + ", ".join(f"v{v}: {n} agents" for v, n in sorted(versions.items())))
    if prometheus_url:
        lines.append(f"prometheus {prometheus_url}  (/alerts: the rules; /graph: the queries in "
                     "monitoring/queries.py)")
    lines.append(f"logs     {run_dir}/server/server.log, fleet/worker-*.log, prometheus/prometheus.log")
    return lines
