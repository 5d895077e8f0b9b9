"""Per-device rows of a rollout's stage and of its baseline: everything the controller measures.

One ``GROUP BY`` per device gives each device's stage sums *and* its sketches (concatenated in
SQL), and every field of an arm (:func:`arm_fields`: its counts, the per-device spreads, the
latencies, the device table of :mod:`rollout_server.analysis.device_table`) is computed from
those rows. One statement, so one snapshot: on PostgreSQL (read committed) separate queries
would each see the reports committed meanwhile, and an arm's counts would disagree with its
table, which the guards then ignore.

A device's *baseline* (:func:`baseline_rows`) is its latest ``BASELINE_REPORTS`` reports of the
rollout's stable release in the ``BASELINE_SECONDS`` before the rollout was created: a sample of
how it behaved on the stable model, read along the index ``(device_id, window_end)`` for the
devices the stage shows, so its cost grows with those devices and not with the ``reports`` table.
It no longer changes once the rollout is running (but for late deliveries), so
:class:`BaselineCache` reads each device's once.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import numpy as np
from sqlalchemy import ColumnElement, Select, func, or_, select, true
from sqlalchemy.orm import Session, aliased

from edgeship.contract.latency import BUCKET_COUNT
from edgeship.contract.reports import ERROR_REASONS, INFERENCE_ERROR_REASONS, INSTALL_ERROR_REASONS
from edgeship.contract.sketch import SCHEMA as SKETCH_SCHEMA
from rollout_server.analysis.device_latency import DeviceLatencies, arm_latency
from rollout_server.analysis.device_table import DeviceTable
from rollout_server.models import Device, Report, Rollout

Arm = tuple[str, str]  # (cohort, device class)
_INFERENCE = [ERROR_REASONS.index(reason) for reason in INFERENCE_ERROR_REASONS]
_INSTALL = [ERROR_REASONS.index(reason) for reason in INSTALL_ERROR_REASONS]


class _Sketch(msgspec.Struct):
    buckets: list[tuple[int, int]]


#: a device's stored sketches, concatenated by the database with "," and read as one JSON array
_SKETCHES = msgspec.json.Decoder(list[_Sketch])


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device's sums over the stage; ``v1`` its schema-1 histograms summed, ``sketch`` its
    schema-2 sketches merged (bucket index → count)."""

    device_id: str
    inferences: int
    labelled: int
    correct: int
    shadow_samples: int
    shadow_agree: int
    reasons: tuple[int, ...]  # errors per ERROR_REASONS
    peak_rss: int | None
    load_seconds: float | None
    v1: tuple[int, ...]
    sketch: dict[int, int]

    @property
    def errors(self) -> int:
        """Inference errors only (install errors ran no inference)."""
        return sum(self.reasons[i] for i in _INFERENCE)

    @property
    def wrong(self) -> int:
        return self.labelled - self.correct


class Baseline(NamedTuple):
    """A device's sums on the stable release before the rollout; ``sketch`` merges only its
    schema-2 sketches (v1 histograms cannot be read at sketch resolution)."""

    inferences: int
    errors: int
    labelled: int
    wrong: int
    sketch: dict[int, int]


_NO_BASELINE = Baseline(0, 0, 0, 0, {})


def merged_sketches(concatenated: str | None) -> dict[int, int]:
    """A device's sketches (their stored JSON joined by ",") merged: bucket index → count."""
    if not concatenated:
        return {}
    merged = _merged_fast(concatenated)
    return merged if merged is not None else _merged_decoded(concatenated)


def _merged_decoded(concatenated: str) -> dict[int, int]:
    """:func:`merged_sketches` through the JSON decoder: any valid JSON form of sketches."""
    merged: dict[int, int] = {}
    for sketch in _SKETCHES.decode(f"[{concatenated}]"):
        for index, count in sketch.buckets:
            merged[index] = merged.get(index, 0) + count
    return merged


#: how :func:`rollout_server.report_rows.sketch_text` starts every stored sketch
_STORED = f'{{"schema":{SKETCH_SCHEMA},"buckets":'
_SEPARATORS = str.maketrans("[],}", "    ")
_NUMBER_CHARACTERS = str.maketrans("", "", "0123456789- ")


def _merged_fast(concatenated: str) -> dict[int, int] | None:
    """:func:`merged_sketches` of sketches stored as the server writes them, read as one run of integers
    by numpy (~3x faster than the JSON decoder and a loop); None for anything else."""
    sketches = concatenated.count(_STORED)
    numbers_text = concatenated.replace(_STORED, "").translate(_SEPARATORS)
    pairs = concatenated.count("[") - sketches  # each sketch: its list of buckets, and each bucket
    if not sketches or pairs <= 0 or numbers_text.translate(_NUMBER_CHARACTERS):
        return None
    numbers = np.fromstring(numbers_text, dtype=np.int64, sep=" ")
    if numbers.size != 2 * pairs:  # a token that is no integer stops the parse early
        return None
    indexes, counts = numbers[0::2], numbers[1::2]
    low = int(indexes.min())
    offsets = indexes - low
    summed = np.zeros(int(indexes.max()) - low + 1, dtype=np.int64)
    np.add.at(summed, offsets, counts)  # exact integers
    present = np.flatnonzero(np.bincount(offsets))
    return dict(zip((present + low).tolist(), summed[present].tolist(), strict=True))


def _sum(column: Any) -> Any:
    return func.coalesce(func.sum(column), 0)


def stage_devices(session: Session, in_stage: Sequence[ColumnElement[bool]]) -> dict[Arm, list[DeviceRow]]:
    """Each device's stage rows per (cohort, device class), ordered by device id: one statement."""
    rows = session.execute(
        select(Report.cohort, Report.device_class, Report.device_id,
               *(_sum(getattr(Report, name)) for name in
                 ("inferences", "labelled", "correct", "shadow_samples", "shadow_agree")),
               func.max(Report.peak_rss_bytes), func.max(Report.load_seconds),
               *(_sum(getattr(Report, f"err_{reason}")) for reason in ERROR_REASONS),
               # schema-2 reports leave lat_* at 0, so these sum the schema-1 histograms
               *(_sum(getattr(Report, f"lat_{i}")) for i in range(BUCKET_COUNT)),
               func.aggregate_strings(Report.latency_sketch, ","))
        .where(*in_stage)
        .group_by(Report.cohort, Report.device_class, Report.device_id)
        .order_by(Report.cohort, Report.device_class, Report.device_id))
    arms: dict[Arm, list[DeviceRow]] = {}
    reasons = len(ERROR_REASONS)
    for cohort, device_class, device_id, n, lab, correct, shadow, agree, rss, load, *rest in rows:
        arms.setdefault((cohort, device_class), []).append(DeviceRow(
            device_id, int(n), int(lab), int(correct), int(shadow), int(agree),
            tuple(int(v) for v in rest[:reasons]), rss, load,
            tuple(int(v) for v in rest[reasons:reasons + BUCKET_COUNT]), merged_sketches(rest[-1])))
    return arms


#: how many device ids one baseline statement reads (bounds its IN list)
BASELINE_CHUNK = 500


def baseline_rows(session: Session, rollout: Rollout, seconds: float, devices: Iterable[str], *,
                  reports: int = 120, chunk: int = BASELINE_CHUNK) -> dict[str, Baseline]:
    """Per device of ``devices``, its latest ``reports`` reports of the rollout's model on its
    stable release (the baseline) with ``window_end`` in ``[created_at - seconds, created_at]``
    (newest first by ``window_end``, then by id), summed; devices without any are left out.
    One statement per ``chunk`` devices (:func:`baseline_statement`)."""
    ids = sorted(set(devices))
    dialect = session.get_bind().dialect.name
    found: dict[str, Baseline] = {}
    for first in range(0, len(ids), chunk):
        statement = baseline_statement(dialect, rollout, seconds, ids[first:first + chunk], reports)
        found.update((device, Baseline(int(n), int(x), int(lab), int(w), merged_sketches(sketches)))
                     for device, n, x, lab, w, sketches in session.execute(statement))
    return found


def baseline_statement(dialect: str, rollout: Rollout, seconds: float, devices: Sequence[str],
                       reports: int) -> Select:
    """The baselines of ``devices`` (see :func:`baseline_rows`), each device's latest reports read
    backwards along ``ix_reports_device_id_window_end`` and no further: a ``LATERAL`` subquery
    with ``LIMIT`` per device on PostgreSQL; on SQLite (no ``LATERAL``) each device's
    ``reports``-th latest report, found once per device (a materialized CTE), then its reports
    searched from that one's ``window_end`` on. (``ROW_NUMBER()`` would read each device's every
    report in the window.)"""
    end = rollout.created_at
    start = end - dt.timedelta(seconds=seconds)

    def baseline(report: Any) -> tuple[ColumnElement[bool], ...]:
        return (report.device_id == Device.id, report.model_id == rollout.model_id,
                report.release_id == rollout.baseline_id, report.window_end >= start,
                report.window_end <= end)

    def newest_first(report: Any) -> tuple[ColumnElement[Any], ...]:
        return report.window_end.desc(), report.id.desc()

    def values(report: Any) -> tuple[ColumnElement[Any], ...]:
        errors = sum(getattr(report, f"err_{reason}") for reason in INFERENCE_ERROR_REASONS)
        return (report.inferences, errors, report.labelled, report.labelled - report.correct,
                report.latency_sketch)

    def summed(*columns: Any) -> tuple[ColumnElement[Any], ...]:
        *counts, sketches = columns
        return *(_sum(column) for column in counts), func.aggregate_strings(sketches, ",")

    if dialect == "postgresql":
        latest = (select(*(column.label(f"c{i}") for i, column in enumerate(values(Report))))
                  .where(*baseline(Report)).order_by(*newest_first(Report)).limit(reports).lateral("latest"))
        return (select(Device.id, *summed(*latest.c)).join(latest, true()).where(Device.id.in_(devices))
                .group_by(Device.id))
    latest = aliased(Report, name="latest")
    last_id = (select(latest.id).where(*baseline(latest)).order_by(*newest_first(latest))
               .limit(1).offset(reports - 1).scalar_subquery())
    last = aliased(Report, name="last_report")
    cut = (select(Device.id, last.id.label("last_id"), last.window_end.label("last_end"))
           .outerjoin(last, last.id == last_id).where(Device.id.in_(devices))
           .cte("cut").prefix_with("MATERIALIZED"))
    return (
        select(Report.device_id, *summed(*values(Report)))
        .select_from(cut)
        .join(Report, Report.device_id == cut.c.id)
        .where(*baseline(Report)[1:],
               # from the last one on (a device with fewer: its whole window)
               Report.window_end >= func.coalesce(cut.c.last_end, start),
               or_(cut.c.last_id.is_(None), Report.window_end > cut.c.last_end, Report.id >= cut.c.last_id))
        .group_by(Report.device_id))


class BaselineCache:
    """Baselines per rollout for at most ``size`` rollouts, read device by device as the stage
    shows them (:meth:`rows`): each device once. Thread-safe; one per app (each worker process
    has its own). ``seconds <= 0`` turns baselines off.

    A device's baseline is a sample of its behaviour on the stable release (its latest
    ``reports`` reports before the rollout), not the whole record: once read it is kept, and
    pre-rollout reports delivered later are ignored. A device found without any is looked for
    again at most every ``retry`` seconds, for an agent that delivers its backlog late.
    ``reader`` is :func:`baseline_rows` (tests count its calls).
    """

    def __init__(self, seconds: float, *, reports: int = 120, size: int = 8, retry: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic,
                 reader: Callable[..., dict[str, Baseline]] | None = None) -> None:
        if reports < 1:
            raise ValueError(f"a baseline needs at least one report per device, not {reports}")
        self.seconds, self.reports, self.size, self.retry = float(seconds), int(reports), size, retry
        self._clock, self._reader = clock, reader
        self._lock = threading.Lock()
        #: rollout id -> (its devices' baselines, never modified once stored; when each device
        #: found without one was last looked for)
        self._kept: OrderedDict[int, tuple[dict[str, Baseline], dict[str, float]]] = OrderedDict()

    def rows(self, session: Session, rollout: Rollout,
             devices: Iterable[str]) -> Mapping[str, Baseline] | None:
        """The baselines of ``rollout``'s ``devices`` (and of any read before; shared: do not
        modify), reading those not read yet (:func:`baseline_rows`); None when turned off."""
        if self.seconds <= 0:
            return None
        now = self._clock()
        with self._lock:
            known, empty = self._kept.get(rollout.id, ({}, {}))
            if rollout.id in self._kept:
                self._kept.move_to_end(rollout.id)
            missing = [d for d in dict.fromkeys(devices)
                       if d not in known and now - empty.get(d, -math.inf) >= self.retry]
        if not missing:
            return known
        reader = self._reader or baseline_rows  # looked up now: tests replace it
        read = reader(session, rollout, self.seconds, missing, reports=self.reports)  # outside the lock: I/O
        with self._lock:  # another thread may have stored more, or evicted the rollout, meanwhile
            found, empty = self._kept.pop(rollout.id, ({}, {}))
            found = {**known, **found, **read}  # a new dict: callers may still hold the old one
            for device in missing:
                if device in read:
                    empty.pop(device, None)
                else:
                    empty[device] = now
            self._kept[rollout.id] = (found, empty)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return found


def _matrix(sketches: Sequence[Mapping[int, int]]) -> DeviceLatencies:
    """One row per device, empty ones included (``DeviceLatencies.from_sketches`` drops them)."""
    indexes = [i for sketch in sketches for i, c in sketch.items() if c]
    low = min(indexes, default=0)
    counts = np.zeros((len(sketches), max(indexes, default=low - 1) - low + 1), dtype=np.int64)
    for row, sketch in enumerate(sketches):
        for index, count in sketch.items():
            if count:
                counts[row, index - low] = count
    return DeviceLatencies(low, counts)


def device_table(devices: Sequence[DeviceRow], baseline: Mapping[str, Baseline] | None) -> DeviceTable:
    """The arm's :class:`DeviceTable`, rows in ``devices``' order; baseline zeros for a device
    without one, no baseline columns when ``baseline`` is None. Its ``latency`` is None when a
    device has schema-1 latencies (not known at sketch resolution)."""
    columns: dict[str, list[int]] = {
        "inferences": [d.inferences for d in devices], "errors": [d.errors for d in devices],
        "labelled": [d.labelled for d in devices], "wrong": [d.wrong for d in devices]}
    latency = None if any(any(d.v1) for d in devices) else _matrix([d.sketch for d in devices])
    base_latency = None
    if baseline is not None:
        base = [baseline.get(d.device_id, _NO_BASELINE) for d in devices]
        for i, name in enumerate(("base_inferences", "base_errors", "base_labelled", "base_wrong")):
            columns[name] = [b[i] for b in base]
        base_latency = _matrix([b.sketch for b in base])
    return DeviceTable.from_rows(latency=latency, base_latency=base_latency, **columns)


def stage_tables(session: Session, in_stage: Sequence[ColumnElement[bool]],
                 baseline: Mapping[str, Baseline] | None = None) -> dict[Arm, DeviceTable]:
    """The device table of every (cohort, device class) of the stage."""
    return {arm: device_table(devices, baseline) for arm, devices in stage_devices(session, in_stage).items()}


#: the per-device sums behind the design effects (:class:`ArmWindow`'s spread fields)
_ERROR_SPREAD = ("error_devices", "device_errors_sq", "device_errors_inferences", "device_inferences_sq")
_WRONG_SPREAD = ("labelled_devices", "device_wrong_sq", "device_wrong_labelled", "device_labelled_sq")


def _squares(events: Sequence[int], trials: Sequence[int]) -> tuple[int, int, int, int]:
    """Devices with trials, the sums of events², events × trials and trials² (exact integers)."""
    return (sum(1 for n in trials if n > 0), sum(x * x for x in events),
            sum(x * n for x, n in zip(events, trials, strict=True)), sum(n * n for n in trials))


def arm_fields(devices: Sequence[DeviceRow], baseline: Mapping[str, Baseline] | None) -> dict[str, Any]:
    """:class:`~rollout_server.analysis.window.ArmWindow`'s fields for one cohort and class."""
    errors = {reason: sum(d.reasons[i] for d in devices) for i, reason in enumerate(ERROR_REASONS)}
    spread = dict(zip(_ERROR_SPREAD, _squares([d.errors for d in devices], [d.inferences for d in devices]),
                      strict=True))
    spread.update(zip(_WRONG_SPREAD, _squares([d.wrong for d in devices], [d.labelled for d in devices]),
                      strict=True))
    return {
        "inferences": sum(d.inferences for d in devices), "errors": errors,
        "labelled_samples": sum(d.labelled for d in devices),
        "labelled_correct": sum(d.correct for d in devices),
        "shadow_samples": sum(d.shadow_samples for d in devices),
        "shadow_agreements": sum(d.shadow_agree for d in devices),
        "devices_reporting": len(devices),
        "devices_load_failed": sum(1 for d in devices if any(d.reasons[i] for i in _INSTALL)),
        **spread,
        **arm_latency([(d.v1, d.sketch) for d in devices]),
        "device_peak_rss": tuple(float(d.peak_rss) for d in devices if d.peak_rss),
        "device_load_seconds": tuple(float(d.load_seconds) for d in devices if d.load_seconds is not None),
        "device_table": device_table(devices, baseline),
    }
