"""The JSON file every benchmark writes beside its table: when, on what machine, under what load.

Ratios are paired within one run, but a reader comparing two files still needs to know the
machine and how busy it was before and after; one writer keeps those fields the same everywhere.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any


def machine(load_before: tuple[float, float, float], **extra: Any) -> dict[str, Any]:
    """CPUs, platform, Python, ``extra`` (tool versions) and the load average before and now."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            **extra, "load_average_before": load_before, "load_average_after": os.getloadavg()}


def write_results(out: Path, table: str, load_before: tuple[float, float, float],
                  machine_extra: dict[str, Any] | None = None, **fields: Any) -> None:
    """Write ``{"generated_at", "machine", **fields, "table"}`` to ``out`` (parents created)."""
    result = {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(load_before, **(machine_extra or {})),
        **fields,
        "table": table.splitlines(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def load_before_run(log: Callable[[str], None], paired: str) -> tuple[float, float, float]:
    """The load average now, warning through ``log`` when other processes already keep half the
    CPUs busy; ``paired`` says what the benchmark pairs so that load falls on both sides alike."""
    load = os.getloadavg()
    if load[0] > 0.5 * (os.cpu_count() or 1):
        log(f"warning: load average {load[0]:.1f} on {os.cpu_count()} CPUs; {paired}, absolute times are not")
    return load
