"""Report rows: the ``reports`` columns a report fills, and the fast path from a plain JSON
batch to rows (decoded and checked in one msgspec pass)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from edgeship.contract.latency import BUCKET_COUNT
from edgeship.contract.reports import ERROR_REASONS, MAX_BATCH, MAX_LOAD_SECONDS, TEMPERATURE_RANGE
from edgeship.contract.sketch import MAX_BUCKETS, MAX_INDEX, MIN_INDEX, SCHEMA, LatencySketch
from rollout_server.hot_cache import DeviceSnapshot
from rollout_server.validation import utc_time

#: the ``reports`` columns a report fills, in the order of the rows ``POST /v1/reports`` builds
#: (``id`` is the database's, ``received_at`` the writer's); ``report_id`` first.
COLUMNS: tuple[str, ...] = (
    "report_id", "device_id", "model_id", "release_id", "variant_id", "rollout_id", "cohort",
    "device_class", "window_start", "window_end", "inferences", "labelled", "correct", "shadow_samples",
    "shadow_agree", "peak_rss_bytes", "dropped_windows", "latency_sum_seconds",
    *(f"err_{reason}" for reason in ERROR_REASONS), *(f"lat_{i}" for i in range(BUCKET_COUNT)),
    "latency_sketch", "load_seconds", "cpu_temp_celsius", "throttled",
)
#: the ``lat_*`` columns of a schema-2 report: it sends a sketch, stored in ``latency_sketch``.
NO_V1_LATENCY: tuple[int, ...] = (0,) * BUCKET_COUNT


def sketch_text(sketch: LatencySketch) -> str:
    """How ``reports.latency_sketch`` stores a sketch: its wire form as compact JSON."""
    return msgspec.json.encode(sketch.to_wire()).decode()


_MAX_COUNT = 10**12
_Count = Annotated[int, msgspec.Meta(ge=0, le=_MAX_COUNT)]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Celsius = Annotated[float, msgspec.Meta(ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1])]


class _PlainSketch(msgspec.Struct, forbid_unknown_fields=True):
    schema: Literal[SCHEMA]  # type: ignore[valid-type]
    buckets: Annotated[list[tuple[Annotated[int, msgspec.Meta(ge=MIN_INDEX, le=MAX_INDEX)], _Count]],
                       msgspec.Meta(max_length=MAX_BUCKETS)]


class _PlainReport(msgspec.Struct):
    """A report every field of which is plainly fine (the fast path's type and range checks).

    Unknown fields are ignored, as :func:`rollout_server.api.reports._report` ignores them; cross-field
    checks and the lookups of model, release and rollout are :func:`fast_rows`'s.
    """

    id: _Id
    model: str
    version: str
    variant: _Id
    cohort: Literal["stable", "canary"]
    window_start: str
    window_end: str
    inferences: _Count
    schema: Literal[1, 2] = 1
    latency_counts: Annotated[list[_Count], msgspec.Meta(min_length=BUCKET_COUNT,
                                                         max_length=BUCKET_COUNT)] | None = None
    latency: _PlainSketch | None = None
    rollout_id: Annotated[int, msgspec.Meta(ge=0, lt=2**31)] | None = None
    errors: dict[str, _Count | None] | None = None
    latency_sum_seconds: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = None
    labelled: _Count | None = None
    correct: _Count | None = None
    shadow_samples: _Count | None = None
    shadow_agree: _Count | None = None
    peak_rss_bytes: _Count | None = None
    dropped_windows: Annotated[int, msgspec.Meta(ge=0, le=10**6)] | None = None
    load_seconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_LOAD_SECONDS)] | None = None
    cpu_temp_celsius: _Celsius | None = None
    throttled: bool | None = None


class _PlainBatch(msgspec.Struct):
    reports: Annotated[list[_PlainReport], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


_DECODE_PLAIN = msgspec.json.Decoder(_PlainBatch).decode
_REASONS = frozenset(ERROR_REASONS)


def fast_rows(body: bytes, device: DeviceSnapshot, known: dict) -> list[tuple[Any, ...]] | None:
    """The rows the field-by-field checks (``rollout_server.api.reports._parse``) would build
    from a batch whose every report is plainly fine and whose models, releases and rollouts this
    process found before; None otherwise (then each report goes through those checks, which
    name what is wrong).

    The JSON is decoded and type- and range-checked in one C pass (msgspec) into
    :class:`_PlainReport`; what is left is Python's. It accepts a subset of what the checks
    accept and builds the same values (tests check both agree, and that it refuses every kind
    of bad field the checks refuse).
    """
    try:
        reports = _DECODE_PLAIN(body).reports
    except msgspec.DecodeError:  # malformed JSON, or a field of a wrong type or out of range
        return None
    rows = []
    times: dict[str, Any] = {}  # a batch's windows mostly share their bounds: parse each once
    for r in reports:
        model_id = known.get(("model", r.model))  # keys of found ids passed the full checks
        release_id = known.get(("release", model_id, r.version))
        if model_id is None or release_id is None:
            return None
        rollout_id = r.rollout_id
        if rollout_id is not None and known.get(("rollout", rollout_id)) is None:
            return None
        start, end = times.get(r.window_start), times.get(r.window_end)
        try:
            if start is None:
                start = times[r.window_start] = utc_time(r.window_start)
            if end is None:
                end = times[r.window_end] = utc_time(r.window_end)
        except ValueError:
            return None
        inferences = r.inferences
        if end < start:
            return None
        if r.schema == 1:
            latency, sketch = r.latency_counts, None
            if latency is None or r.latency is not None or sum(latency) > inferences:
                return None
        else:
            if r.latency is None or r.latency_counts is not None:
                return None
            counts = dict(r.latency.buckets)
            if len(counts) != len(r.latency.buckets) or sum(counts.values()) > inferences:
                return None
            latency, sketch = NO_V1_LATENCY, sketch_text(LatencySketch(counts))
        errors = r.errors
        if errors is None:
            error_counts = [0] * len(ERROR_REASONS)
        elif not _REASONS.issuperset(errors):
            return None
        else:
            error_counts = [errors.get(reason) or 0 for reason in ERROR_REASONS]
        labelled, correct = r.labelled or 0, r.correct or 0
        shadow, agree = r.shadow_samples or 0, r.shadow_agree or 0
        if correct > labelled or agree > shadow:
            return None
        rows.append((r.id, device.id, model_id, release_id, r.variant, rollout_id, r.cohort,
                     device.device_class, start, end, inferences, labelled, correct, shadow, agree,
                     r.peak_rss_bytes or None, r.dropped_windows or 0, float(r.latency_sum_seconds or 0.0),
                     *error_counts, *latency, sketch,
                     None if r.load_seconds is None else float(r.load_seconds),
                     None if r.cpu_temp_celsius is None else float(r.cpu_temp_celsius), r.throttled))
    return rows
