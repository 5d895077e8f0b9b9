"""The server benchmark's result rows: one per scenario and backend, medians of repeated
runs, the issue's targets, and the table printed and pasted into docs/benchmarks-server.md."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

#: targets from issue 4 on the 2-core benchmark machine.
TARGETS = {"assignment_rps": 1000.0, "assignment_p99_ms": 50.0, "ingest_reports_per_s": 500.0,
           "ratio_to_bare": 0.5}


@dataclass
class Row:
    """One line of the table."""

    backend: str
    scenario: str
    requests_per_s: float
    reports_per_s: float | None
    p50_ms: float
    p99_ms: float
    non_2xx: int
    cpu_ms_per_request: float | None = None  # server processes only (not PostgreSQL, not wrk)
    ratio_to_bare: float | None = None
    cpu_ratio_to_bare: float | None = None  # bare CPU per request over edgeship's (steadier)
    busiest_worker_share: float | None = None  # of the workers' CPU (1 / workers when even)
    target_met: bool | None = None
    target_note: str = ""
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)  # each run when repeated (--repeat)


def median_row(runs: list[Row]) -> Row:
    """One row for repeated runs of a scenario: medians of the rates, latencies, CPU and paired
    ratios (each run's ratio is to the bare run right before it); counts summed. Every run is
    kept in ``runs``."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]

    def median_of(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    statuses: dict[int, int] = {}
    sockets: dict[str, int] = {}
    for run in runs:
        for status, n in run.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
        for kind, n in run.socket_errors.items():
            sockets[kind] = sockets.get(kind, 0) + n
    return Row(
        first.backend, first.scenario, statistics.median(r.requests_per_s for r in runs),
        median_of([r.reports_per_s for r in runs]), statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs), sum(r.non_2xx for r in runs),
        cpu_ms_per_request=median_of([r.cpu_ms_per_request for r in runs]),
        ratio_to_bare=median_of([r.ratio_to_bare for r in runs]),
        cpu_ratio_to_bare=median_of([r.cpu_ratio_to_bare for r in runs]),
        busiest_worker_share=median_of([r.busiest_worker_share for r in runs]),
        requests=sum(r.requests for r in runs), statuses=statuses, socket_errors=sockets,
        runs=[{name: getattr(r, name) for name in ("requests_per_s", "p99_ms", "cpu_ms_per_request",
                                                    "ratio_to_bare", "cpu_ratio_to_bare",
                                                    "busiest_worker_share")} for r in runs],
    )


def judge(row: Row) -> None:
    """Set the row's ``target_met`` and the reasons it missed."""
    misses = []
    if row.scenario.startswith("assignment"):
        if row.requests_per_s < TARGETS["assignment_rps"]:
            misses.append(f"req/s < {TARGETS['assignment_rps']:,.0f}")
        if row.p99_ms >= TARGETS["assignment_p99_ms"]:
            misses.append(f"p99 >= {TARGETS['assignment_p99_ms']:.0f} ms")
    elif (row.reports_per_s or 0) < TARGETS["ingest_reports_per_s"]:
        misses.append(f"reports/s < {TARGETS['ingest_reports_per_s']:,.0f}")
    if row.ratio_to_bare is not None and row.ratio_to_bare < TARGETS["ratio_to_bare"]:
        misses.append(f"ratio < {TARGETS['ratio_to_bare']}")
    if row.non_2xx:
        misses.append("errors")
    row.target_met = not misses
    row.target_note = ", ".join(misses)


def table(rows: list[Row]) -> str:
    """The result table as fixed-width text (also pasted into docs/benchmarks-server.md)."""
    head = ("backend", "scenario", "req/s", "reports/s", "p50 ms", "p99 ms", "non-2xx", "CPU ms/req",
            "busiest worker", "vs bare", "CPU vs bare", "target")
    lines = []
    for r in rows:
        target = "-" if r.target_met is None else ("yes" if r.target_met else f"NO ({r.target_note})")
        lines.append((r.backend, r.scenario, f"{r.requests_per_s:,.0f}",
                      "-" if r.reports_per_s is None else f"{r.reports_per_s:,.0f}", f"{r.p50_ms:.1f}",
                      f"{r.p99_ms:.1f}", str(r.non_2xx),
                      "-" if r.cpu_ms_per_request is None else f"{r.cpu_ms_per_request:.2f}",
                      "-" if r.busiest_worker_share is None else f"{100 * r.busiest_worker_share:.0f}%",
                      "-" if r.ratio_to_bare is None else f"{r.ratio_to_bare:.2f}",
                      "-" if r.cpu_ratio_to_bare is None else f"{r.cpu_ratio_to_bare:.2f}", target))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 or i == len(widths) - 1 else f"{{:>{w}}}"
                    for i, w in enumerate(widths))
    return "\n".join(fmt.format(*line).rstrip() for line in [head, *lines])
