"""Rollout statistics benchmark: the guards and the state machine on simulated fleets.

    python -m benchmarks.rollout_stats [--runs 200] [--sweep-runs 100] [--fleet-runs 100]
                                       [--hostile-runs 40] [--seed 1] [--jobs 2]
                                       [--only main|sweep|fleets|hostile]

Prints five tables and writes them to ``benchmarks/results/rollout_stats.json``:

* main: false rollbacks with identical arms, detection of a 2× error rate and of latency
  regressions with the canary inferences it took, required-gain behaviour, pauses on a sample
  ratio mismatch when canary devices go silent, and the canary share of sticky bucketing over
  10,000 devices;
* sweep: the latency guard alone (p95 ≤ 1.2× stable, and a required 30% gain) over latency
  shapes × stable medians × canaries (identical, 1.2×, 1.3×, 1.5× slower, 40% faster, equal),
  each cell the rate its target is on, a ``!`` where it misses it;
* the issue's cases read with reports of schema 1 (the v1 histogram) and schema 2 (sketches);
* fleets whose devices differ (and identical ones): the per-device comparison against the
  pooled tests it replaced, side by side (``benchmarks/rollout_devices.py``);
* hostile devices: 40 of the ~1,000 canary devices of a 10,000-device fleet report every
  inference failed, or 10× slow, or perfect windows at the server's inference cap
  (``Fleet.hostile_devices``): whether a handful of devices decides the rollout (misses marked).

The simulated devices report schema 2 unless a row says otherwise. Simulator:
``rollout_server/analysis/simulate.py``; method: docs/rollout-analysis.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.rollout_devices import (
    HOSTILE,
    HOSTILE_FLEET_DEVICES,
    HOSTILE_MAX_WINDOWS,
    fleet_tasks,
    hostile_tasks,
    print_fleets,
    print_hostile,
)
from benchmarks.rollout_tasks import Task, checked, run_tasks
from rollout_server.analysis import Guard, GuardSpec, Metric, Mode
from rollout_server.analysis.arm_profile import (
    LATENCY_SHAPES,
    ArmProfile,
    with_latency_factor,
    with_latency_shape,
)
from rollout_server.analysis.simulate import HOSTILE_SLOW_FACTOR, SIM_STAGES, Fleet, hostile_flood_inferences
from rollout_server.bucketing import assign_cohort

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "rollout_stats.json"

#: the sweep's shapes (``simulate.LATENCY_SHAPES``) with their labels, and stable medians.
SWEEP_SHAPES: dict[str, str] = {
    "lognormal": "lognormal σ0.5",
    "two_modes": "two modes",
    "heavy_tail": "heavy tail",
    "throttled": "throttled tail",
    "tight": "tight σ0.05",
}
SWEEP_MEDIANS: tuple[float, ...] = (0.0001, 0.001, 0.01, 0.1, 1.0)
#: the latency guard alone, as the sweep and the issue's rows run it
LIMIT_SPEC = GuardSpec((Guard(Metric.LATENCY),))
GAIN_SPEC = GuardSpec((Guard(Metric.LATENCY), Guard(Metric.LATENCY, Mode.GAIN, threshold=0.3)))


@dataclass(frozen=True)
class Case:
    """One column of the sweep: the canary's latency factor, the spec, and which rate meets
    which target (``rate`` of a summary, ``ok`` on it)."""

    label: str
    factor: float
    spec: GuardSpec
    rate: str
    target: str
    ok: Callable[[float], bool]
    max_windows: int = 60


SWEEP_CASES: tuple[Case, ...] = (
    Case("A/A", 1.0, LIMIT_SPEC, "rolled_back_rate", "rolled back <= 1%", lambda r: r <= 0.01),
    Case("x1.2 (limit)", 1.2, LIMIT_SPEC, "not_rolled_back_rate", "not rolled back >= 95%",
         lambda r: r >= 0.95),
    Case("x1.3", 1.3, LIMIT_SPEC, "rolled_back_rate", "rolled back >= 95%", lambda r: r >= 0.95),
    Case("x1.5", 1.5, LIMIT_SPEC, "rolled_back_rate", "rolled back >= 95%", lambda r: r >= 0.95),
    Case("gain, 0.6x", 0.6, GAIN_SPEC, "promoted_rate", "promoted >= 95%", lambda r: r >= 0.95),
    Case("gain, equal", 1.0, GAIN_SPEC, "held_rate", "held 100%", lambda r: r >= 1.0, max_windows=30),
)


def canary_share(devices: int = 10_000, salt: str = "rollout-bench") -> dict[str, Any]:
    """Share of canary devices at 10% over ``devices`` ids, and stickiness over 10 → 50 → 100."""
    ids = [f"device-{i}" for i in range(devices)]
    cohorts = {p: {d for d in ids if assign_cohort(salt, d, p) == "canary"} for p in (10, 50, 100)}
    sticky = cohorts[10] <= cohorts[50] <= cohorts[100] and len(cohorts[100]) == devices
    share = len(cohorts[10]) / devices
    return {
        "scenario": "canary share at 10% of 10,000 devices",
        "target": "9-11%, sticky",
        "share_10": share,
        "share_50": len(cohorts[50]) / devices,
        "sticky": sticky,
        "ok": 0.09 <= share <= 0.11 and sticky,
    }


def main_tasks(runs: int, seed: int) -> list[Task]:
    """Every scenario of the main table (devices reporting schema 2)."""
    base = ArmProfile()
    gain_spec = GuardSpec.default().with_guards(Guard(Metric.LATENCY, Mode.GAIN, threshold=0.3))
    tasks = [
        Task("A/A identical arms", runs, seed, base, "rolled back <= 5%"),
        Task("error rate 1% -> 2%", runs, seed + 2, ArmProfile(error_rate=0.02), "rolled back >= 95%"),
        Task("error rate 1% -> 1.5%", runs // 2, seed + 3, ArmProfile(error_rate=0.015), "(reported)"),
        Task("accuracy 90% -> 88%", runs // 2, seed + 4, ArmProfile(accuracy=0.88), "(reported)"),
    ]
    for factor, target in ((1.1, "promoted"), (1.2, "(the limit)"), (1.3, "rolled back"),
                           (1.5, "rolled back >= 95%")):
        tasks.append(Task(f"latency p95 x{factor:g} (limit 1.2)", runs // 2, seed + int(10 * factor),
                          with_latency_factor(base, factor), target))
    tasks.append(Task("gain 30% required, canary 40% faster", runs // 4, seed + 30,
                      with_latency_factor(base, 0.6), "promoted", spec=gain_spec))
    tasks.append(Task("gain 30% required, canary equal", runs // 4, seed + 31, base, "held, never promoted",
                      spec=gain_spec, options={"max_windows": 30}))
    # the sample ratio check: canary devices that never report (the candidate crashes the app)
    tasks.append(Task("canary: 30% of its devices silent", runs // 2, seed + 50,
                      ArmProfile(silent_device_share=0.3), "paused >= 95%"))
    tasks.append(Task("canary: 5% of its devices silent", runs // 2, seed + 51,
                      ArmProfile(silent_device_share=0.05), "(reported)"))
    return tasks


def sweep_tasks(runs: int, seed: int) -> list[Task]:
    """The sweep: shape × stable median × case, the latency guard alone."""
    tasks = []
    for s, shape in enumerate(SWEEP_SHAPES):
        for m, median in enumerate(SWEEP_MEDIANS):
            stable = with_latency_shape(ArmProfile(), shape, median)
            for c, case in enumerate(SWEEP_CASES):
                tasks.append(Task(
                    f"{SWEEP_SHAPES[shape]}, {_ms(median)}: {case.label}", runs,
                    seed * 100_000 + 1_000 + 100 * s + 10 * m + c, with_latency_factor(stable, case.factor),
                    case.target, stable=stable, spec=case.spec, options={"max_windows": case.max_windows},
                    extra={"shape": shape, "median_seconds": median, "case": case.label}))
    return tasks


def issue_profiles() -> list[tuple[str, ArmProfile, ArmProfile]]:
    """The issue's cases: (label, stable, canary)."""
    def shaped(shape: str, stable_seconds: float, canary_seconds: float) -> tuple[ArmProfile, ArmProfile]:
        return (with_latency_shape(ArmProfile(), shape, stable_seconds),
                with_latency_shape(ArmProfile(), shape, canary_seconds))

    throttled = with_latency_shape(ArmProfile(), "throttled", 0.003)
    return [
        ("3 ms, 10% throttled at 9 ms -> 14 ms", throttled, replace(throttled, latency_slow_factor=14 / 3)),
        ("tight 3.1 ms -> 4.6 ms", *shaped("tight", 0.0031, 0.0046)),
        ("tight 5.5 ms -> 7.0 ms", *shaped("tight", 0.0055, 0.0070)),
        ("log-normal 0.3 ms -> 0.45 ms", *shaped("lognormal", 0.0003, 0.00045)),
    ]


def issue_tasks(runs: int, seed: int) -> list[Task]:
    """The issue's cases, each read with reports of schema 1 and of schema 2."""
    tasks = []
    for i, (label, stable, canary) in enumerate(issue_profiles()):
        true_ratio = canary.latency_quantile(0.95) / stable.latency_quantile(0.95)
        for schema in (1, 2):
            tasks.append(Task(f"{label}, schema {schema}", runs, seed * 100_000 + 500 + i, canary,
                              "rolled back (schema 2)", stable=stable, spec=LIMIT_SPEC,
                              options={"fleet": Fleet(report_schema=schema)},
                              extra={"case": label, "schema": schema, "true_ratio": true_ratio}))
    return tasks


def print_main(rows: list[dict[str, Any]]) -> None:
    """The main table on stdout."""
    header = (
        f"{'scenario':<52} {'rolled back':>11} {'promoted':>9} {'held':>6} {'paused':>6} {'median inf.':>11} "
        f"{'p90 inf.':>9}  target"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if "share_10" in row:
            print(
                f"{row['scenario']:<52} share {row['share_10']:.2%}, sticky across 10->50->100: "
                f"{row['sticky']}  target {row['target']}"
            )
            continue
        median = _count(row["median_canary_inferences_to_rollback"], 11)
        p90 = _count(row["p90_canary_inferences_to_rollback"], 9)
        print(
            f"{row['scenario']:<52} {row['rolled_back_rate']:>11.1%} {row['promoted_rate']:>9.1%} "
            f"{row['held_rate']:>6.1%} {row['paused_rate']:>6.1%} {median} {p90}  {row['target']}"
        )


def sweep_cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each sweep row with its case's rate and whether it meets the target (``value``, ``ok``)."""
    cases = {case.label: case for case in SWEEP_CASES}
    out = []
    for row in rows:
        case = cases[row["case"]]
        out.append({**row, "rate": case.rate, "value": row[case.rate], "ok": case.ok(row[case.rate])})
    return out


def print_sweep(cells: list[dict[str, Any]], runs: int) -> None:
    """The sweep as a table: rows shape × stable median, columns the cases."""
    width = 15
    print(f"\nLatency sweep: p95 limit 1.2x / required gain 30%, latency guard alone, {runs} rollouts "
          "per cell, schema 2; '!' = misses its target")
    header = f"{'shape, stable median':<27}" + "".join(f"{c.label:>{width}}" for c in SWEEP_CASES)
    print(header)
    print(f"{'(rate shown)':<27}" + "".join(f"{_short(c.target):>{width}}" for c in SWEEP_CASES))
    print("-" * len(header))
    by_row: dict[tuple[str, float], dict[str, dict[str, Any]]] = {}
    for cell in cells:
        by_row.setdefault((cell["shape"], cell["median_seconds"]), {})[cell["case"]] = cell
    for (shape, median), row in by_row.items():
        text = "".join(f"{_cell(row.get(c.label)):>{width}}" for c in SWEEP_CASES)
        print(f"{SWEEP_SHAPES[shape] + ', ' + _ms(median):<27}{text}".rstrip())
    missed = [c for c in cells if not c["ok"]]
    print(f"{len(cells) - len(missed)} of {len(cells)} cells meet their target"
          + (": missed " + "; ".join(f"{c['scenario']} {c['value']:.1%}" for c in missed) if missed else ""))


def print_issue(rows: list[dict[str, Any]]) -> None:
    """The issue's cases, schema 1 against schema 2."""
    print("\nThe issue's cases: p95 limit 1.2x, latency guard alone, default fleet")
    header = (f"{'stable -> canary':<40} {'true p95 ratio':>14} {'schema':>6} {'read ratio':>10} "
              f"{'rolled back':>11} {'promoted':>9} {'held':>6}")
    print(header)
    print("-" * len(header))
    for row in rows:
        read = row["median_latency_ratio"]
        print(f"{row['case']:<40} {row['true_ratio']:>14.2f} {row['schema']:>6} "
              f"{'-' if read is None else f'{read:.2f}':>10} {row['rolled_back_rate']:>11.1%} "
              f"{row['promoted_rate']:>9.1%} {row['held_rate']:>6.1%}")


def _cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    return f"{cell['value']:.1%}" + (" !" if not cell["ok"] else "  ")


def _short(target: str) -> str:
    short = target.replace("not rolled back", "not rb").replace("rolled back", "rb")
    return short.replace("promoted", "prom.")


def _ms(seconds: float) -> str:
    return f"{seconds:g} s" if seconds >= 1 else f"{1000 * seconds:g} ms"


def _count(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width},.0f}"


def main(argv: list[str] | None = None) -> int:
    """Run, print, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200,
                        help="rollouts per main scenario (some rows run 1/2 or 1/4 of it)")
    parser.add_argument("--sweep-runs", type=int, default=100,
                        help="rollouts per cell of the latency sweep and per row of the issue's cases")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--fleet-runs", type=int, default=100,
                        help="rollouts per cell of the fleets table (per-device vs pooled)")
    parser.add_argument("--hostile-runs", type=int, default=40,
                        help="rollouts per row of the hostile devices' table (10,000-device fleets)")
    parser.add_argument("--only", choices=("main", "sweep", "fleets", "hostile"),
                        help="run only the main table, only the sweep and the issue's cases, only the "
                        "fleets table or only the hostile devices' table")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    main_list = main_tasks(args.runs, args.seed) if args.only in (None, "main") else []
    sweep_list = sweep_tasks(args.sweep_runs, args.seed) if args.only in (None, "sweep") else []
    issue_list = issue_tasks(args.sweep_runs, args.seed) if args.only in (None, "sweep") else []
    fleet_list = fleet_tasks(args.fleet_runs, args.seed) if args.only in (None, "fleets") else []
    hostile_list = hostile_tasks(args.hostile_runs, args.seed) if args.only in (None, "hostile") else []
    groups = [main_list, issue_list, fleet_list, hostile_list, sweep_list]
    rows = run_tasks([task for group in groups for task in group], args.jobs)
    parts, start = [], 0
    for group in groups:
        parts.append(rows[start:start + len(group)])
        start += len(group)
    main_rows, issue_rows, fleet_rows, hostile_rows, sweep_rows = parts
    fleet_rows, hostile_rows, cells = checked(fleet_rows), checked(hostile_rows), sweep_cells(sweep_rows)
    if main_list:
        main_rows.append(canary_share())
        print_main(main_rows)
    if issue_rows:
        print_issue(issue_rows)
    if fleet_rows:
        print_fleets(fleet_rows, args.fleet_runs)
    if hostile_rows:
        print_hostile(hostile_rows, args.hostile_runs)
    if cells:
        print_sweep(cells, args.sweep_runs)
    fleet = Fleet()
    setup = {
        "fleet": {
            "devices": fleet.devices,
            "classes": dict(fleet.classes),
            "inferences_per_device_window": fleet.inferences_per_window,
            "labelled_fraction": fleet.labelled_fraction,
            "window_seconds": fleet.window_seconds,
            "report_schema": fleet.report_schema,
            "baseline_windows": fleet.baseline_windows,
        },
        "stable": vars(ArmProfile()),
        "stages": [s.to_dict() for s in SIM_STAGES],
        "guards": GuardSpec.default().to_dict(),
        "sweep": {
            "shapes": {name: LATENCY_SHAPES[name] for name in SWEEP_SHAPES},
            "stable_medians_seconds": list(SWEEP_MEDIANS),
            "cases": [{"label": c.label, "canary_latency_factor": c.factor, "guards": c.spec.to_dict(),
                       "target": c.target, "max_windows": c.max_windows} for c in SWEEP_CASES],
        },
        "hostile": {
            "devices": HOSTILE_FLEET_DEVICES,
            "hostile_canary_devices": HOSTILE,
            "slow_factor": HOSTILE_SLOW_FACTOR,
            "flood_inferences_per_window": hostile_flood_inferences(Fleet()),
            "max_windows": HOSTILE_MAX_WINDOWS,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "runs": args.runs,
                "sweep_runs": args.sweep_runs,
                "fleet_runs": args.fleet_runs,
                "hostile_runs": args.hostile_runs,
                "seed": args.seed,
                "jobs": args.jobs,
                "only": args.only,
                "host": platform.node(),
                "seconds": round(time.perf_counter() - started, 1),
                "setup": setup,
                "rows": main_rows,
                "issue_cases": issue_rows,
                "fleets": fleet_rows,
                "hostile": hostile_rows,
                "sweep": cells,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
