"""The demo's final summary: what each rollout did and why, how long everything took.

Per kind of agent (Python agents, SDK phones) and device class it shows what the agents ran
at the rollback and at the promotion, arm by arm, from the agents' own status rows.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from examples.demo.fleet import PYTHON, SDK, fleet_text
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


def _kinds(present: set[str]) -> list[str]:
    """The kinds present, Python agents first."""
    return [k for k in (PYTHON, SDK) if k in present] + sorted(present - {PYTHON, SDK})


def _fleet_lines(variants_by_class: dict[tuple[str, str], dict[str, int]], indent: str) -> list[str]:
    """One line per kind: ``sdk     android ×10 → onnx-fp32 · ios ×10 → onnx-fp32``."""
    lines = []
    for kind in _kinds({kind for kind, _ in variants_by_class}):
        parts = [f"{device_class} ×{sum(variants.values())} → {', '.join(sorted(map(str, variants)))}"
                 for (k, device_class), variants in variants_by_class.items() if k == kind]
        lines.append(f"{indent}{kind:<8}{' · '.join(parts)}")
    return lines


def arms_lines(arms: Counter, head: str, indent: str) -> list[str]:
    """What each kind and class runs per arm, one line per kind, e.g.
    ``sdk     android: canary v2 ×5, stable v1 ×5 · ios: canary v2 ×4, stable v1 ×6``.

    Args:
        arms: ``Counter((kind, device class, cohort, version))`` (:meth:`FleetSnapshot.arms`).
        head: the first line's label (``at the promotion``); the next lines are indented under it.
        indent: where the label starts.
    """
    lines = []
    for kind in _kinds({key[0] for key in arms}):
        classes: dict[str, Counter] = {}
        for (k, device_class, cohort, version), n in arms.items():
            if k == kind:
                what = f"{cohort} v{version}" if version is not None else "no model yet"
                classes.setdefault(device_class, Counter())[what] += n
        text = " · ".join(f"{c}: {', '.join(f'{what} ×{n}' for what, n in sorted(runs.items()))}"
                          for c, runs in sorted(classes.items()))
        label = head if not lines else ""
        lines.append(f"{indent}{label:<17}{kind:<8}{text}")
    return lines


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
    indent = " " * 11
    lines = [
        "══ edgeship demo: summary " + "═" * 50,
        f"set-up   {setup_seconds:5.0f} s   releases, server (SQLite), publish v1 v2 v3, v1 stable"
        + (", Prometheus" if prometheus_url else ""),
        f"loop     {_clock(result.loop_seconds):>5}     fleet start → bad release rolled back → good release "
        f"at 100% (target: under 5:00)",
        f"fleet             {fleet.agents} real edge agents: "
        f"{fleet_text(result.agents_by_kind, result.workers_by_kind)}; "
        f"{fleet.rate_per_second:g} inferences/s each on the eval set (with labels); "
        f"ready in {result.fleet_ready_seconds:.0f} s",
        *_fleet_lines(result.variants_by_class, " " * 18),
    ]
    if SDK not in result.agents_by_kind:
        lines.append(" " * 18 + "no SDK phones this run (no Node.js or sdk/js/node_modules, or --phones 0)")
    if bad is not None:
        lines += [
            f"bad v{bad.candidate}   rollout #{bad.id} {_phase(bad)} after {bad.seconds:.0f} s at "
            f"{bad.stage_seconds[-1][0]:g}% — {result.refused_devices} canary agents refused it on-device "
            "(golden check) and never served it",
            *(f"{indent}reason: {reason}" for _, reason in bad.failing),
        ]
        if result.refused_by_class:
            lines.append(f"{indent}refused on-device, per class (canary devices): " + " · ".join(
                f"{c} {failed}/{canary}" for c, (failed, canary) in result.refused_by_class.items()))
        lines += arms_lines(result.at_rollback, "at the rollback", indent)
    if good is not None:
        lines.append(f"good v{good.candidate}  rollout #{good.id} {_phase(good)} after "
                     f"{good.seconds:.0f} s: {_ramp(good)} → 100%; every agent on v{good.candidate} "
                     f"{result.all_on_candidate_seconds:.0f} s later")
        for verdict in latest_verdicts(good.status):
            lines.append(f"{indent}{verdict['outcome']:<5} {verdict['reason']}")
        lines += arms_lines(result.at_promotion, "at the promotion", indent)
    kinds_of_version: dict[str, Counter] = {}
    for (kind, _, _, version), n in result.at_end.items():
        kinds_of_version.setdefault(str(version), Counter())[kind] += n
    now = []
    for version, n in sorted(Counter(result.final_versions).items()):
        kinds = kinds_of_version.get(version, Counter())
        split = f" ({', '.join(f'{k} {kinds[k]}' for k in _kinds(set(kinds)))})" if kinds else ""
        now.append(f"v{version}: {n} agents{split}")
    lines.append("now      " + ", ".join(now))
    if prometheus_url:
        lines.append(f"prometheus {prometheus_url}  (/alerts: the rules; /graph: the queries in "
                     "monitoring/queries.py)")
    lines.append(f"logs     {run_dir}/server/server.log, fleet/worker-*.log, prometheus/prometheus.log")
    return lines
