"""What the simulator prints: one line per window, and the run's summary (also as JSON).

A window line reads (one line; wrapped here)::

    [  30.0s] devices 2000/2000  800 req/s  p99 15.5 ms  304s 100%  reports +2,000 (10,000)  errors 0
              lag 0.3s  rollout #3 running 1/3 canary 10% (devices 9.6%)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rollout_server.simulator.stats import KINDS, Snapshot, Totals, percentile_ms
from rollout_server.simulator.transport import NO_RESPONSE
from rollout_server.simulator.watch import RolloutStatus

if TYPE_CHECKING:
    from rollout_server.simulator.config import SimulationConfig
    from rollout_server.simulator.device import SimDevice
    from rollout_server.simulator.safety import Target


@dataclass(frozen=True)
class WindowLine:
    """One live line's numbers (kept for the summary's timeline).

    Attributes:
        elapsed_seconds: since the run started.
        devices_registered: devices with a credential.
        devices: fleet size.
        requests_per_second: device requests answered or not, over the window.
        p99_ms: 99th percentile request latency in the window (``None`` without requests).
        not_modified_share: share of assignment polls answered 304.
        reports_accepted: reports stored in the window.
        reports_accepted_total: since the start.
        failed_requests: no response, 5xx or an unexpected 4xx in the window.
        max_lag_seconds: how late the latest device was served.
        canary_device_share: share of assigned devices in the canary cohort.
        rollout: the watched rollout's status, if any.
    """

    elapsed_seconds: float
    devices_registered: int
    devices: int
    requests_per_second: float
    p99_ms: float | None
    not_modified_share: float | None
    reports_accepted: int
    reports_accepted_total: int
    failed_requests: int
    max_lag_seconds: float
    canary_device_share: float | None
    rollout: dict[str, Any] | None

    def text(self) -> str:
        """The line as printed."""
        p99 = "-" if self.p99_ms is None else f"{self.p99_ms:.1f} ms"
        fresh = "-" if self.not_modified_share is None else f"{100 * self.not_modified_share:.0f}%"
        line = (f"[{self.elapsed_seconds:6.1f}s] devices {self.devices_registered}/{self.devices}  "
                f"{self.requests_per_second:,.0f} req/s  p99 {p99}  304s {fresh}  "
                f"reports +{self.reports_accepted:,} ({self.reports_accepted_total:,})  "
                f"errors {self.failed_requests}  lag {self.max_lag_seconds:.1f}s")
        if self.rollout is not None:
            r = self.rollout
            share = ("" if self.canary_device_share is None
                     else f" (devices {100 * self.canary_device_share:.1f}%)")
            line += (f"  rollout #{r['id']} {r['phase']} {r['stage']}/{r['stages']} "
                     f"canary {r['canary_percent']:g}%{share}")
        return line


def failed(statuses: Counter) -> int:
    """Requests without a response, with a 5xx, or with a 4xx a device does not expect."""
    expected = {("register", 201), ("assignment", 200), ("assignment", 304), ("assignment", 404),
                ("assignment", 409), ("reports", 200)}
    return sum(n for (kind, status), n in statuses.items()
               if status == NO_RESPONSE or status >= 500
               or (status >= 400 and (kind, status) not in expected))


def cohorts(devices: Sequence[SimDevice]) -> Counter:
    """Devices per current cohort (``unassigned`` without an assignment)."""
    return Counter(d.assignment.cohort if d.assignment is not None else "unassigned" for d in devices)


def window_line(elapsed: float, window_seconds: float, snapshot: Snapshot, devices: Sequence[SimDevice],
                status: RolloutStatus | None, accepted_before: int = 0) -> WindowLine:
    """The numbers of one window."""
    polls = sum(n for (kind, _), n in snapshot.statuses.items() if kind == "assignment")
    not_modified = snapshot.statuses.get(("assignment", 304), 0)
    by_cohort = cohorts(devices)
    assigned = by_cohort["stable"] + by_cohort["canary"]
    return WindowLine(
        elapsed_seconds=elapsed,
        devices_registered=sum(d.device_id is not None for d in devices),
        devices=len(devices),
        requests_per_second=snapshot.requests / window_seconds if window_seconds > 0 else 0.0,
        p99_ms=percentile_ms(snapshot.all_latencies(), 99),
        not_modified_share=not_modified / polls if polls else None,
        reports_accepted=snapshot.reports_accepted,
        reports_accepted_total=accepted_before + snapshot.reports_accepted,
        failed_requests=failed(snapshot.statuses),
        max_lag_seconds=snapshot.max_lag_seconds,
        canary_device_share=by_cohort["canary"] / assigned if assigned else None,
        rollout=status.to_dict() if status is not None else None,
    )


def build_summary(config: SimulationConfig, target: Target, devices: Sequence[SimDevice], totals: Totals,
                  elapsed: float, stopped_because: str, status: RolloutStatus | None,
                  lines: Sequence[WindowLine]) -> dict[str, Any]:
    """The run as a JSON-ready dict: settings, devices, requests (rates and latency quantiles per
    kind), reports, traffic per cohort and version, the watched rollout and the timeline."""
    snap = totals.snapshot
    by_kind = {}
    for kind in KINDS:
        statuses = {str(status_): n for (k, status_), n in sorted(snap.statuses.items()) if k == kind}
        count = sum(statuses.values())
        latencies = totals.latencies(kind)
        by_kind[kind] = {"count": count, "per_second": count / elapsed if elapsed else 0.0,
                         "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99),
                         "statuses": statuses}
    everything = totals.latencies()
    traffic = []
    for (cohort, version), counts in sorted(snap.traffic.items()):
        inferences, labelled = counts["inferences"], counts["labelled"]
        traffic.append({"cohort": cohort, "version": version, "reports": counts["reports"],
                        "inferences": inferences, "errors": counts["errors"],
                        "error_rate": counts["errors"] / inferences if inferences else None,
                        "labelled": labelled, "correct": counts["correct"],
                        "accuracy": counts["correct"] / labelled if labelled else None})
    return {
        "server": target.url,
        "address": f"{target.address}:{target.port}",
        "stopped_because": stopped_because,
        "elapsed_seconds": round(elapsed, 3),
        "settings": {"devices": config.devices, "workers": config.workers,
                     "duration_seconds": config.duration_seconds, "window_seconds": config.window_seconds,
                     "time_scale": config.time_scale, "inferences_per_second": config.inferences_per_second,
                     "labelled_fraction": config.labelled_fraction, "classes": dict(config.classes),
                     "runtimes": {k: dict(v) for k, v in config.runtimes.items()}, "seed": config.seed,
                     "profiles": config.profiles.to_dict(), "model": config.model},
        "devices": {"planned": len(devices), "registered": sum(d.device_id is not None for d in devices),
                    "refused": sum(d.refused for d in devices), "by_cohort": dict(cohorts(devices)),
                    "by_class": dict(Counter(d.spec.device_class for d in devices))},
        "requests": {"total": snap.requests, "per_second": snap.requests / elapsed if elapsed else 0.0,
                     "p50_ms": percentile_ms(everything, 50), "p99_ms": percentile_ms(everything, 99),
                     "failed": failed(snap.statuses), "by_kind": by_kind},
        "reports": {"accepted": snap.reports_accepted, "duplicates": snap.reports_duplicate,
                    "rejected": snap.reports_rejected, "pending": sum(len(d.outbox) for d in devices)},
        "traffic": traffic,
        "max_lag_seconds": round(snap.max_lag_seconds, 3),
        "failures": dict(snap.failures),
        "rollout": status.to_dict() if status is not None else None,
        "timeline": [asdict(line) for line in lines],
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few lines of text."""
    req, rep, dev = summary["requests"], summary["reports"], summary["devices"]
    p50 = "-" if req["p50_ms"] is None else f"{req['p50_ms']:.1f}"
    p99 = "-" if req["p99_ms"] is None else f"{req['p99_ms']:.1f}"
    lines = [
        f"simulated {dev['registered']}/{dev['planned']} devices against {summary['server']} for "
        f"{summary['elapsed_seconds']:.1f} s (stopped: {summary['stopped_because']})",
        f"  requests {req['total']:,} ({req['per_second']:,.0f}/s), p50 {p50} ms, p99 {p99} ms, "
        f"failed {req['failed']:,}",
    ]
    for kind, k in req["by_kind"].items():
        statuses = ", ".join(f"{s}: {n:,}" for s, n in k["statuses"].items()) or "none"
        k99 = "-" if k["p99_ms"] is None else f"{k['p99_ms']:.1f} ms"
        lines.append(f"    {kind:<11} {k['count']:>9,} ({k['per_second']:,.0f}/s, p99 {k99})  {statuses}")
    lines.append(f"  reports accepted {rep['accepted']:,}, duplicates {rep['duplicates']:,}, "
                 f"rejected {rep['rejected']:,}, unsent {rep['pending']:,}; "
                 f"max lag {summary['max_lag_seconds']} s")
    for t in summary["traffic"]:
        rate = "-" if t["error_rate"] is None else f"{100 * t['error_rate']:.2f}%"
        accuracy = "-" if t["accuracy"] is None else f"{100 * t['accuracy']:.1f}%"
        lines.append(f"  {t['cohort']:<6} v{t['version']:<8} {t['inferences']:>11,} inferences, "
                     f"errors {rate}, accuracy {accuracy}")
    if summary["failures"]:
        lines.append(f"  device tick failures: {summary['failures']}")
    if summary["rollout"]:
        r = summary["rollout"]
        lines.append(f"  rollout #{r['id']}: {r['phase']}, stage {r['stage']}/{r['stages']}, "
                     f"canary {r['canary_percent']:g}%" + (f"; {r['reason']}" if r["reason"] else ""))
    return "\n".join(lines)
