"""What a report may claim about itself, checked against the server's own records.

A report names its rollout, cohort and version, the window it covers and how many inferences
it holds, and the controller groups reports by those. A device is not trusted to say them
right: the rollout's target must admit the device (its attributes, as the server holds them), a
canary claim must match the server's bucketing of that device in that rollout, the
version must be one of that rollout's two releases (the candidate only for the canary), the
window must lie within [now - REPORT_MAX_AGE_SECONDS, now + REPORT_CLOCK_SKEW_SECONDS], and
the counts must be physically possible for the window's length. A report that claims
otherwise is refused (422, the reason in ``error``) and counted by reason in ``/metrics``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollout_server.assignment import DeviceFacts, cohort_for, in_target
from rollout_server.errors import ApiError
from rollout_server.hot_cache import RolloutRecord
from rollout_server.report_rows import COLUMNS

_AT = {name: COLUMNS.index(name) for name in (
    "model_id", "release_id", "rollout_id", "cohort", "window_start", "window_end", "inferences")}
_ERRORS = [COLUMNS.index(name) for name in COLUMNS if name.startswith("err_")]


class ReportRefused(ApiError):
    """A report whose claims the server's records contradict; ``error`` is one of
    :data:`~rollout_server.counters.REPORT_REFUSALS`."""

    status = 422


@dataclass(frozen=True)
class ReportLimits:
    """The bounds of a plausible report (server settings of the same names)."""

    max_age_seconds: float
    clock_skew_seconds: float
    max_inferences_per_second: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ReportLimits:
        return cls(float(config["REPORT_MAX_AGE_SECONDS"]), float(config["REPORT_CLOCK_SKEW_SECONDS"]),
                   float(config["MAX_INFERENCES_PER_SECOND"]))


def check_rows(rows: Sequence[tuple[Any, ...]], device: DeviceFacts, now: dt.datetime, limits: ReportLimits,
               rollout: Callable[[int], RolloutRecord | None]) -> None:
    """Refuse the batch if any report claims what the server's records contradict.

    Args:
        rows: the batch as ``reports`` rows (``report_rows.COLUMNS``), already type-checked.
        device: the authenticated device that sent them.
        now: the server's time (UTC).
        limits: how old, how far ahead and how busy a window may be.
        rollout: the server's record of a rollout by id (None if there is none).

    Raises:
        ReportRefused: the first report that fails, named by its index and reason.
    """
    earliest = now - dt.timedelta(seconds=limits.max_age_seconds)
    latest = now + dt.timedelta(seconds=limits.clock_skew_seconds)
    for index, row in enumerate(rows):
        try:
            _check_window(row, earliest, latest, limits.max_inferences_per_second)
            rollout_id = row[_AT["rollout_id"]]
            if rollout_id is not None:
                _check_attribution(row, device, rollout(rollout_id))
        except ReportRefused as refused:
            raise ReportRefused(f"reports[{index}]: {refused.detail}", error=refused.error) from None


def _check_window(row: tuple[Any, ...], earliest: dt.datetime, latest: dt.datetime, max_rate: float) -> None:
    start, end = _utc(row[_AT["window_start"]]), _utc(row[_AT["window_end"]])
    if start < earliest or end > latest:
        raise ReportRefused(f"window {start.isoformat()} to {end.isoformat()} is outside the accepted range "
                            f"{earliest.isoformat()} to {latest.isoformat()}", error="window_out_of_range")
    seconds = max((end - start).total_seconds(), 1.0)
    events = row[_AT["inferences"]] + sum(row[i] for i in _ERRORS)
    if events > seconds * max_rate:
        raise ReportRefused(f"{events} inferences and errors in {seconds:g} s exceed "
                            f"{max_rate:g} per second", error="count_over_cap")


def _check_attribution(row: tuple[Any, ...], device: DeviceFacts, record: RolloutRecord | None) -> None:
    if record is None or record.model_id != row[_AT["model_id"]]:
        raise ReportRefused("its rollout_id names no rollout of its model", error="not_in_rollout")
    if not in_target(device, record):  # its reports count in neither arm (targeting.py)
        raise ReportRefused(f"rollout {record.id}'s target does not admit this device",
                            error="not_in_rollout")
    release_id, cohort = row[_AT["release_id"]], row[_AT["cohort"]]
    if release_id not in (record.candidate_id, record.baseline_id):
        raise ReportRefused(f"its version is neither the candidate nor the baseline of rollout {record.id}",
                            error="not_in_rollout")
    assigned = cohort_for(device, record)
    if release_id == record.candidate_id and (cohort != "canary" or assigned != "canary"):
        raise ReportRefused(f"rollout {record.id} never assigned this device its candidate",
                            error="cohort_mismatch")
    if release_id == record.baseline_id and cohort != "stable":
        raise ReportRefused(f"the baseline of rollout {record.id} runs as 'stable', not {cohort!r}",
                            error="cohort_mismatch")


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite-bound rows carry naive UTC times; compare like with like
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
