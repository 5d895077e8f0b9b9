"""Rollout statistics benchmark: the guards and the state machine on simulated fleets.

    python -m benchmarks.rollout_stats [--runs 200] [--seed 1]

Prints one table (false rollbacks with identical arms, detection of a 2× error rate and of
latency regressions with the canary inferences it took, required-gain behaviour, pauses on a
sample ratio mismatch when canary devices go silent, and the canary share of sticky bucketing
over 10,000 devices) and writes it to
``benchmarks/results/rollout_stats.json``. Simulator: ``rollout_server/analysis/simulate.py``;
method: docs/rollout-analysis.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from rollout_server.analysis import Guard, GuardSpec, Metric, Mode
from rollout_server.analysis.simulate import (
    SIM_STAGES,
    ArmProfile,
    Fleet,
    run_rollouts,
    summarize,
    with_latency_factor,
)
from rollout_server.bucketing import assign_cohort

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "rollout_stats.json"


def scenario(
    name: str, runs: int, seed: int, canary: ArmProfile, target: str, **kwargs: Any
) -> dict[str, Any]:
    """Run ``runs`` seeded rollouts of one scenario and summarise them."""
    spec = kwargs.pop("spec", GuardSpec.default())
    started = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {runs} rollouts ...", file=sys.stderr, flush=True)
    summary = summarize(run_rollouts(runs, spec, ArmProfile(), canary, seed=seed, **kwargs))
    seconds = round(time.perf_counter() - started, 2)
    print(f"    rolled back {summary['rolled_back_rate']:.1%}, promoted {summary['promoted_rate']:.1%} "
          f"({seconds:.0f} s)", file=sys.stderr, flush=True)
    return {"scenario": name, "target": target, **summary, "seconds": seconds}


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


def run(runs: int, seed: int) -> list[dict[str, Any]]:
    """Every scenario of the table."""
    base = ArmProfile()
    gain_spec = GuardSpec.default().with_guards(Guard(Metric.LATENCY, Mode.GAIN, threshold=0.3))
    rows = [
        scenario("A/A identical arms", runs, seed, base, "rolled back <= 5%"),
        scenario(
            "A/A, clumpy fleet (per-device error dispersion 1)",
            runs,
            seed + 1,
            base,
            "rolled back <= 5%",
            fleet=Fleet(error_dispersion=1.0),
        ),
        scenario(
            "A/A, very clumpy fleet (dispersion 3)",
            runs,
            seed + 5,
            base,
            "rolled back <= 5%",
            fleet=Fleet(error_dispersion=3.0),
        ),
        scenario("error rate 1% -> 2%", runs, seed + 2, ArmProfile(error_rate=0.02), "rolled back >= 95%"),
        scenario(
            "error rate 1% -> 2%, clumpy fleet (dispersion 1)",
            runs // 2,
            seed + 6,
            ArmProfile(error_rate=0.02),
            "never promoted",
            fleet=Fleet(error_dispersion=1.0),
        ),
        scenario("error rate 1% -> 1.5%", runs // 2, seed + 3, ArmProfile(error_rate=0.015), "(reported)"),
        scenario("accuracy 90% -> 88%", runs // 2, seed + 4, ArmProfile(accuracy=0.88), "(reported)"),
    ]
    # some devices see harder inputs than others, whichever model runs (Gamma-dispersed shares of
    # wrong predictions): identical arms, then a small and a clear drop
    for i, (name, count, accuracy, dispersion, target) in enumerate((
        ("A/A, harder inputs on some devices (acc. disp. 3)", runs, 0.9, 3.0, "rolled back <= 5%"),
        ("accuracy 90% -> 88%, accuracy dispersion 1", runs // 2, 0.88, 1.0, "(reported)"),
        ("accuracy 90% -> 85%, accuracy dispersion 1", runs // 2, 0.85, 1.0, "never promoted"),
    )):
        rows.append(scenario(name, count, seed + 7 + i, ArmProfile(accuracy=accuracy), target,
                             fleet=Fleet(accuracy_dispersion=dispersion)))
    for factor, target in (
        (1.1, "promoted"),
        (1.2, "(the limit)"),
        (1.3, "rolled back"),
        (1.5, "rolled back >= 95%"),
    ):
        rows.append(
            scenario(
                f"latency p95 x{factor:g} (limit 1.2)",
                runs // 2,
                seed + int(10 * factor),
                with_latency_factor(base, factor),
                target,
            )
        )
    # some devices are slower than others whichever model runs (log-normal factor, sigma 0.6)
    mixed_speeds = Fleet(latency_dispersion=0.6)
    rows.append(scenario("A/A, devices of mixed speeds (latency disp. 0.6)", runs, seed + 40, base,
                         "rolled back <= 5%", fleet=mixed_speeds))
    rows.append(scenario("latency p95 x1.5, latency dispersion 0.6", runs // 2, seed + 41,
                         with_latency_factor(base, 1.5), "never promoted", fleet=mixed_speeds))
    # on such a fleet the canary's devices may be faster than stable's by chance: a limit that
    # passes on its point estimate lets some of a 1.3x regression through; pass_alpha holds more
    shown = GuardSpec.default().with_options(Metric.LATENCY, pass_alpha=0.2)
    rows.append(scenario("latency p95 x1.3, latency dispersion 0.6", runs // 2, seed + 42,
                         with_latency_factor(base, 1.3), "(reported: point estimate)", fleet=mixed_speeds))
    rows.append(scenario("latency p95 x1.3, latency disp. 0.6, pass_alpha 0.2", runs // 2, seed + 42,
                         with_latency_factor(base, 1.3), "(reported: fewer promoted)", spec=shown,
                         fleet=mixed_speeds))
    rows.append(scenario("A/A, latency dispersion 0.6, pass_alpha 0.2", runs // 2, seed + 43, base,
                         "rolled back <= 5%", spec=shown, fleet=mixed_speeds))
    rows.append(
        scenario(
            "gain 30% required, canary 40% faster",
            runs // 4,
            seed + 30,
            with_latency_factor(base, 0.6),
            "promoted",
            spec=gain_spec,
        )
    )
    rows.append(
        scenario(
            "gain 30% required, canary equal",
            runs // 4,
            seed + 31,
            base,
            "held, never promoted",
            spec=gain_spec,
            max_windows=30,
        )
    )
    # the sample ratio check: canary devices that never report (the candidate crashes the app)
    rows.append(scenario("canary: 30% of its devices silent", runs // 2, seed + 50,
                         ArmProfile(silent_device_share=0.3), "paused >= 95%"))
    rows.append(scenario("canary: 5% of its devices silent", runs // 2, seed + 51,
                         ArmProfile(silent_device_share=0.05), "(reported)"))
    rows.append(canary_share())
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """The table on stdout."""
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


def _count(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width},.0f}"


def main(argv: list[str] | None = None) -> int:
    """Run, print, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="rollouts per main scenario")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(args.runs, args.seed)
    print_table(rows)
    fleet = Fleet()
    setup = {
        "fleet": {
            "devices": fleet.devices,
            "classes": dict(fleet.classes),
            "inferences_per_device_window": fleet.inferences_per_window,
            "labelled_fraction": fleet.labelled_fraction,
            "window_seconds": fleet.window_seconds,
        },
        "stable": vars(ArmProfile()),
        "stages": [s.to_dict() for s in SIM_STAGES],
        "guards": GuardSpec.default().to_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "runs": args.runs,
                "seed": args.seed,
                "host": platform.node(),
                "seconds": round(time.perf_counter() - started, 1),
                "setup": setup,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
