"""The rollout benchmark's device tables (``benchmarks/rollout_stats.py`` prints them):

* fleets whose devices differ: each scenario run with the guards' per-device comparison (bounded
  weights, each device's baseline: ``Fleet()``) and with the pooled tests it replaced
  (``Fleet(per_device=False)``), side by side on the same seeds, and the same on identical
  devices (no worse than before);
* hostile devices: 40 of the ~1,000 canary devices of a 10,000-device fleet report every
  inference failed, or 10× slow, or perfect windows at the server's inference cap, or a
  history (baseline) of failures and then honest windows.

Each row is checked against its target (``rollout_tasks.TARGETS``); misses are marked.
"""

from __future__ import annotations

from typing import Any

from benchmarks.rollout_tasks import Task
from rollout_server.analysis.arm_profile import ArmProfile, with_latency_factor
from rollout_server.analysis.simulate import HOSTILE_SLOW_FACTOR, Fleet, hostile_flood_inferences

#: the hostile table's fleet: ~1,000 canary devices at the 10% stage, of which HOSTILE are hostile
HOSTILE_FLEET_DEVICES = 10_000
HOSTILE = 40
#: a rollout with hostile devices that holds, holds: the table stops it after this many windows
HOSTILE_MAX_WINDOWS = 24
#: the two methods of the fleets table: the per-device comparison (default) and the pooled tests
METHODS: dict[str, dict[str, Any]] = {"per device": {}, "pooled": {"per_device": False}}


def fleet_scenarios() -> list[tuple[str, ArmProfile, dict[str, float], str]]:
    """(name, canary, fleet options, target): the issue's dispersed fleets, then identical ones."""
    base = ArmProfile()
    clumpy, harder = {"error_dispersion": 1.0}, {"accuracy_dispersion": 1.0}
    mixed = {"latency_dispersion": 0.6}
    return [
        ("A/A, errors clumped on devices (disp. 1)", base, clumpy, "promoted >= 95%"),
        ("error rate 1% -> 2%, errors clumped (disp. 1)", ArmProfile(error_rate=0.02), clumpy,
         "rolled back >= 95%"),
        ("A/A, harder inputs on some devices (disp. 3)", base, {"accuracy_dispersion": 3.0},
         "promoted >= 95%"),
        ("accuracy 90% -> 85%, harder inputs (disp. 1)", ArmProfile(accuracy=0.85), harder,
         "rolled back >= 95%"),
        ("A/A, devices of mixed speeds (disp. 0.6)", base, mixed, "promoted >= 95%"),
        ("latency x1.5, mixed speeds", with_latency_factor(base, 1.5), mixed, "rolled back >= 95%"),
        ("latency x1.3, mixed speeds", with_latency_factor(base, 1.3), mixed, "never promoted"),
        ("A/A, identical devices", base, {}, "promoted >= 95%"),
        ("error rate 1% -> 2%, identical devices", ArmProfile(error_rate=0.02), {}, "rolled back >= 95%"),
        ("accuracy 90% -> 85%, identical devices", ArmProfile(accuracy=0.85), {}, "rolled back >= 95%"),
        ("latency x1.5, identical devices", with_latency_factor(base, 1.5), {}, "rolled back >= 95%"),
    ]


def fleet_tasks(runs: int, seed: int) -> list[Task]:
    """Every scenario of :func:`fleet_scenarios` with each method, on the same seeds."""
    tasks = []
    for i, (name, canary, options, target) in enumerate(fleet_scenarios()):
        for method, switch in METHODS.items():
            tasks.append(Task(f"{name} [{method}]", runs, seed * 100_000 + 700 + i, canary, target,
                              options={"fleet": Fleet(**options, **switch)},
                              extra={"case": name, "method": method}))
    return tasks


def print_fleets(rows: list[dict[str, Any]], runs: int) -> None:
    """Per-device comparison and pooled tests side by side, per scenario."""
    fleet = Fleet()
    print(f"\nFleets whose devices differ: default guards, {runs} rollouts per cell, "
          f"{fleet.devices:,} devices, baselines of {fleet.baseline_windows} windows; "
          "cells: rolled back / promoted / held; 'MISS' = misses its target")
    header = f"{'scenario':<48} {'per device (bounded, baseline)':>32} {'pooled tests (before)':>27}  target"
    print(header)
    print("-" * (len(header) + 12))
    by_case: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["method"]] = row
    for case, methods in by_case.items():
        cells = [_ends(methods[m], 32 if m == "per device" else 27) for m in METHODS]
        target = methods["per device"]["target"]
        miss = "" if methods["per device"]["ok"] else " MISS"
        print(f"{case:<48} {cells[0]} {cells[1]}  {target}{miss}")
    missed = [case for case, m in by_case.items() if not m["per device"]["ok"]]
    print(f"per device: {len(by_case) - len(missed)} of {len(by_case)} rows meet their target"
          + (f" (missed: {'; '.join(missed)})" if missed else ""))


def _ends(row: dict[str, Any], width: int) -> str:
    text = f"{row['rolled_back_rate']:.0%} / {row['promoted_rate']:.0%} / {row['held_rate']:.0%}"
    return f"{text + ('' if row['ok'] else ' !'):>{width}}"


def hostile_tasks(runs: int, seed: int) -> list[Task]:
    """A/A and bad releases on a 10,000-device fleet, without and with 40 hostile canary devices."""
    base = ArmProfile()

    def fleet(mode: str | None) -> dict[str, Any]:
        hostile = {"hostile_devices": HOSTILE, "hostile_mode": mode} if mode else {}
        return {"fleet": Fleet(devices=HOSTILE_FLEET_DEVICES, **hostile), "max_windows": HOSTILE_MAX_WINDOWS}

    rows = (
        ("A/A, no hostile devices (control)", base, None, "rolled back <= 5%"),
        (f"A/A + {HOSTILE} 'errors' (every inference failed)", base, "errors", "rolled back <= 5%"),
        (f"A/A + {HOSTILE} 'slow' (latencies x{HOSTILE_SLOW_FACTOR:g})", base, "slow", "rolled back <= 5%"),
        ("error rate 1% -> 3%, no hostile devices (control)", ArmProfile(error_rate=0.03), None,
         "rolled back >= 95%"),
        (f"error rate 1% -> 3% + {HOSTILE} 'clean_flood'", ArmProfile(error_rate=0.03), "clean_flood",
         "never promoted"),
        ("latency p95 x1.5, no hostile devices (control)", with_latency_factor(base, 1.5), None,
         "rolled back >= 95%"),
        (f"latency p95 x1.5 + {HOSTILE} 'clean_flood'", with_latency_factor(base, 1.5), "clean_flood",
         "never promoted"),
        (f"error rate 1% -> 3% + {HOSTILE} 'poisoned_baseline'", ArmProfile(error_rate=0.03),
         "poisoned_baseline", "never promoted"),
        (f"latency p95 x1.5 + {HOSTILE} 'poisoned_baseline'", with_latency_factor(base, 1.5),
         "poisoned_baseline", "never promoted"),
    )
    return [Task(name, runs, seed * 100_000 + 900 + i, canary, target, options=fleet(mode),
                 extra={"hostile_mode": mode, "hostile_devices": HOSTILE if mode else 0})
            for i, (name, canary, mode, target) in enumerate(rows)]


def print_hostile(rows: list[dict[str, Any]], runs: int) -> None:
    """The hostile devices' table."""
    canary = HOSTILE_FLEET_DEVICES // 10
    print(f"\nHostile canary devices: {HOSTILE_FLEET_DEVICES:,} devices (~{canary:,} canary at 10%), "
          f"{HOSTILE} hostile canary devices, default guards, {runs} rollouts per row, at most "
          f"{HOSTILE_MAX_WINDOWS} windows; 'clean_flood' reports {hostile_flood_inferences(Fleet()):,} "
          "inferences a window (the cap); 'MISS' = misses its target")
    header = (f"{'scenario':<52} {'rolled back':>11} {'promoted':>9} {'held':>6} {'paused':>6} "
              f"{'windows':>7}  target")
    print(header)
    print("-" * (len(header) + 8))
    for row in rows:
        line = (f"{row['scenario']:<52} {row['rolled_back_rate']:>11.1%} {row['promoted_rate']:>9.1%} "
                f"{row['held_rate']:>6.1%} {row['paused_rate']:>6.1%} {row['median_windows']:>7.0f}  "
                f"{row['target']:<18}{'' if row['ok'] else ' MISS'}")
        print(line.rstrip())
    missed = [row["scenario"] for row in rows if not row["ok"]]
    print(f"{len(rows) - len(missed)} of {len(rows)} rows meet their target")
