"""``edgeship rollout start``'s workflow options (approval gates, schedule, dry-run guards) and the
status lines they add; :mod:`rollout_server.cli` wires them in. No Flask or SQLAlchemy here.

Usage::

    edgeship rollout start digits-cnn 2 --approve-before 50,100 \\
        --window "mon-fri 09:00-17:00 Europe/Berlin" --start-at 2026-12-08T09:00:00+01:00 \\
        --dry-run-guard latency
    edgeship rollout approve 7 --reason "dashboards look fine"
"""

from __future__ import annotations

import argparse
from typing import Any

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def add_start_args(start: argparse.ArgumentParser) -> None:
    """The workflow options of ``rollout start``."""
    start.add_argument("--approve-before", default=None, metavar="PERCENTS",
                       help="wait for `edgeship rollout approve` before these stages start, e.g. 50,100 "
                            "(100: before promotion)")
    start.add_argument("--start-at", default=None, metavar="ISO_TIME",
                       help="stay pending until then, e.g. 2026-12-08T09:00:00+01:00 (no offset: UTC)")
    start.add_argument("--window", action="append", default=[], metavar="'DAYS HH:MM-HH:MM [TZ]'",
                       help="start, advance, ask for approval and promote only inside it, e.g. "
                            "'mon-fri 09:00-17:00 Europe/Berlin' (repeatable; rollbacks happen any time)")
    start.add_argument("--dry-run-guard", action="append", default=[], metavar="NAME",
                       help="evaluate and show this guard (of --guards or the defaults) but never act on it "
                            "(repeatable)")


def start_fields(args: argparse.Namespace, guards: dict[str, Any] | None) -> dict[str, Any]:
    """The body fields the options give (``guards`` included when a guard is made dry-run).

    Raises:
        ValueError: an option that cannot be read, naming it.
    """
    body: dict[str, Any] = {}
    if args.approve_before:
        try:
            body["approve_before"] = [float(p) for p in args.approve_before.split(",")]
        except ValueError:
            raise ValueError(f"--approve-before {args.approve_before!r}: comma-separated percents") from None
    if args.start_at:
        body["start_at"] = args.start_at
    if args.window:
        body["windows"] = [parse_window(text) for text in args.window]
    if args.dry_run_guard:
        body["guards"] = with_dry_run(guards, args.dry_run_guard, shadow=args.shadow)
    return body


def parse_window(text: str) -> dict[str, Any]:
    """``"mon-fri 09:00-17:00 Europe/Berlin"`` → the API's window object (the server checks the
    times and the zone); days as a range or a comma list, ``daily`` for every day, zone default UTC."""
    parts = text.split()
    if len(parts) not in (2, 3) or parts[1].count("-") != 1:
        raise ValueError(f"--window {text!r}: 'DAYS HH:MM-HH:MM [TZ]', "
                         "e.g. 'mon-fri 09:00-17:00 Europe/Berlin'")
    opens, closes = parts[1].split("-")
    window: dict[str, Any] = {"days": _days(parts[0], text), "from": opens, "to": closes}
    if len(parts) == 3:
        window["tz"] = parts[2]
    return window


def _days(spec: str, text: str) -> list[str]:
    if spec == "daily":
        return list(DAYS)
    days: list[str] = []
    for item in spec.lower().split(","):
        first, _, last = item.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"--window {text!r}: days like mon-fri, sat,sun or daily")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.extend(DAYS[i % 7] for i in range(a, (b if b >= a else b + 7) + 1))
    return list(dict.fromkeys(days))


def with_dry_run(guards: dict[str, Any] | None, names: list[str], *, shadow: bool) -> dict[str, Any]:
    """``guards`` (a guard spec; None: the defaults) with the named guards marked ``dry_run``."""
    from rollout_server.analysis.spec import GuardSpec

    spec = dict(guards) if guards is not None else {}
    items = spec.get("guards")
    if items is None:
        items = GuardSpec.default(shadow=bool(spec.get("shadow", shadow))).to_dict()["guards"]
    known = {item.get("name") or _default_name(item) for item in items if isinstance(item, dict)}
    missing = sorted(set(names) - known)
    if missing:
        raise ValueError(f"--dry-run-guard {', '.join(missing)}: no such guard "
                         f"(guards: {', '.join(sorted(known))})")
    spec["guards"] = [{**item, "dry_run": True} if isinstance(item, dict) and
                      (item.get("name") or _default_name(item)) in names else item for item in items]
    return spec


def _default_name(item: dict[str, Any]) -> str:
    return str(item.get("metric")) + ("_gain" if item.get("mode") == "gain" else "")


def status_lines(status: dict[str, Any]) -> list[str]:
    """What ``rollout status`` adds: the awaited approval, why the schedule holds it, its windows."""
    lines = []
    approval = status.get("approval")
    if approval:
        lines.append(f"  awaiting approval to {approval['action']}: edgeship rollout approve {status['id']}")
    if status.get("hold_reason"):
        lines.append(f"  on hold: {status['hold_reason']}")
    schedule = (status.get("spec") or {}).get("schedule") or {}
    for w in schedule.get("windows") or []:
        lines.append(f"  window: {','.join(w['days'])} {w['from']}-{w['to']} {w['tz']}")
    gates = (status.get("state") or {}).get("approve_before")
    if gates:
        lines.append(f"  approval before: {', '.join(f'{p:g}%' for p in gates)}")
    return lines
