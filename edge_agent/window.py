"""Window aggregates: what the agent counts between two reports, one window per model key.

The agent loop records every inference, error, labelled sample and shadow comparison into a
:class:`WindowSet`; every report interval it calls :meth:`WindowSet.close`, which returns one
report per non-empty window in the wire format ``POST /v1/reports`` accepts, and starts fresh
windows::

    windows = WindowSet()
    key = WindowKey("digits", "1.2.0", "int8-tflite", rollout_id=7, cohort="canary")
    windows.record_inference(key, latency_seconds=0.004)
    windows.record_error(key, "timeout")
    reports = windows.close()  # -> outbox

Only the standard library and ``edgeship.contract``: this runs on the device.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from math import ceil, log2
from typing import Any

from edgeship.contract.reports import COHORTS, ERROR_REASONS, REPORT_SCHEMA, counts_as_inference
from edgeship.contract.sketch import INDEX_SCALE, MAX_SECONDS, MIN_SECONDS, LatencySketch


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes, 0 when the platform does not say.

    On Linux this is ``VmHWM`` from ``/proc/self/status`` (``ru_maxrss`` survives ``execve`` and
    could report a parent's peak); elsewhere ``ru_maxrss``, which macOS gives in bytes and other
    Unixes in KiB.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource  # Unix only
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass(frozen=True)
class WindowKey:
    """What one window (and so one report) is about: the model the device ran, as assigned.

    Raises:
        ValueError: ``cohort`` is not ``"stable"`` or ``"canary"``, or ``rollout_id`` is negative.
    """

    model: str
    version: str
    variant: str
    rollout_id: int | None
    cohort: str

    def __post_init__(self) -> None:
        if self.cohort not in COHORTS:
            raise ValueError(f"cohort must be one of {list(COHORTS)}, got {self.cohort!r}")
        if self.rollout_id is not None and (isinstance(self.rollout_id, bool) or self.rollout_id < 0):
            raise ValueError(f"rollout_id must be a non-negative integer or None, got {self.rollout_id!r}")


@dataclass
class Window:
    """Counts for one key since the window opened. Not thread-safe: :class:`WindowSet` locks.

    Attributes:
        opened_at: unix seconds when the window opened.
        shadow_distance_samples: shadow comparisons that measured a distance (a failed candidate
            run measures none); the mean distance is ``shadow_distance_sum`` over this.
        shadow_distance_sum: sum of the measured shadow output distances (kept locally: the server
            has no field for it).
        shadow_distance_max: the largest measured shadow output distance, 0.0 when none.
    """

    opened_at: float
    inferences: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_REASONS, 0))
    latency: LatencySketch = field(default_factory=LatencySketch)
    latency_sum_seconds: float = 0.0
    labelled: int = 0
    correct: int = 0
    shadow_samples: int = 0
    shadow_agree: int = 0
    shadow_distance_samples: int = 0
    shadow_distance_sum: float = 0.0
    shadow_distance_max: float = 0.0

    def record_inference(self, latency_seconds: float) -> None:
        """Count one successful inference that took ``latency_seconds``.

        Raises:
            ValueError: the latency is negative or not finite.
        """
        self._count_inference(_non_negative("latency_seconds", latency_seconds))

    def _count_inference(self, latency_seconds: float) -> None:
        # unchecked: callers pass a float they checked (WindowSet's hot path checks only once)
        self.inferences += 1
        if MIN_SECONDS < latency_seconds < MAX_SECONDS:  # LatencySketch.add inlined: every predict
            index = ceil(log2(latency_seconds) * INDEX_SCALE)
            counts = self.latency.counts
            counts[index] = counts.get(index, 0) + 1
        else:
            self.latency.add(latency_seconds)
        self.latency_sum_seconds += latency_seconds

    def record_error(self, reason: str) -> None:
        """Count one error; a per-inference reason also counts one inference (no latency sample).

        Raises:
            ValueError: ``reason`` is not one of :data:`ERROR_REASONS`.
        """
        if counts_as_inference(reason):
            self.inferences += 1
        self.errors[reason] += 1

    def record_labelled(self, correct: bool) -> None:
        """Count one labelled (or golden) sample and whether the model got it right."""
        self.labelled += 1
        self.correct += bool(correct)

    def record_shadow(self, agree: bool, distance: float | None) -> None:
        """Count one shadow comparison: whether candidate and live model agreed, and how far apart
        their outputs were.

        Args:
            agree: the candidate agreed with the live model.
            distance: the output distance; None or ``math.inf`` when there is none to measure
                (the candidate failed): the comparison counts, the distance statistics do not.

        Raises:
            ValueError: ``distance`` is negative or NaN.
        """
        distance = shadow_distance(distance)
        self.shadow_samples += 1
        self.shadow_agree += bool(agree)
        if distance is not None:
            self.shadow_distance_samples += 1
            self.shadow_distance_sum += distance
            self.shadow_distance_max = max(self.shadow_distance_max, distance)

    @property
    def is_empty(self) -> bool:
        """True when nothing was recorded (such a window is not reported)."""
        return not (self.inferences or self.labelled or self.shadow_samples or any(self.errors.values()))

    def to_report(self, key: WindowKey, closed_at: float, peak_rss: int, report_id: str) -> dict[str, Any]:
        """This window as one report of ``POST /v1/reports``.

        Args:
            key: what the window is about.
            closed_at: unix seconds the window ends (never before it opened).
            peak_rss: the process' peak RSS in bytes (0 when unknown; the server stores none).
            report_id: the report's unique id (1 to 64 characters).

        Returns:
            The report; ``dropped_windows`` is 0 here, the outbox sets it when it stores it.
        """
        return {
            "id": report_id,
            "model": key.model,
            "version": key.version,
            "variant": key.variant,
            "rollout_id": key.rollout_id,
            "cohort": key.cohort,
            "window_start": iso_utc(self.opened_at),
            "window_end": iso_utc(max(closed_at, self.opened_at)),
            "inferences": self.inferences,
            "errors": dict(self.errors),
            "schema": REPORT_SCHEMA,
            "latency": self.latency.to_wire(),
            "latency_sum_seconds": self.latency_sum_seconds,
            "labelled": self.labelled,
            "correct": self.correct,
            "shadow_samples": self.shadow_samples,
            "shadow_agree": self.shadow_agree,
            "peak_rss_bytes": peak_rss,
            "dropped_windows": 0,
        }


def iso_utc(unix_seconds: float) -> str:
    """``unix_seconds`` as the ISO 8601 UTC time the server parses (microsecond precision)."""
    return dt.datetime.fromtimestamp(unix_seconds, tz=dt.timezone.utc).isoformat(timespec="microseconds")


class WindowSet:
    """The open windows, one per :class:`WindowKey`, safe to record into from several threads.

    A key's window opens at its first record, or at the previous close if the key had data
    then (so a busy key's windows are back to back); keys with nothing recorded are forgotten.

    Args:
        clock: unix seconds now; tests pass a fake.
        rss_reader: the process' peak RSS in bytes, read once per close.
        health_reader: report fields about the device's state (``edge_agent.health``), read
            once per close and put in every report of it; none by default.
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 rss_reader: Callable[[], int] = peak_rss_bytes,
                 health_reader: Callable[[], dict[str, Any]] = dict) -> None:
        self._clock = clock
        self._rss_reader = rss_reader
        self._health_reader = health_reader
        self._lock = threading.Lock()
        self._windows: dict[WindowKey, Window] = {}
        # The window recorded into last, and its key: the agent records every inference under one
        # key object, so an identity check skips hashing the key (a frozen dataclass hashes its
        # five fields on every lookup). Always None or self._windows[_last_key].
        self._last_key: WindowKey | None = None
        self._last_window: Window | None = None

    def _window(self, key: WindowKey) -> Window:
        # callers hold the lock
        if key is self._last_key:
            return self._last_window  # type: ignore[return-value]
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = Window(opened_at=self._clock())
        self._last_key, self._last_window = key, window
        return window

    def record_inference(self, key: WindowKey, latency_seconds: float) -> None:
        """See :meth:`Window.record_inference`.

        Called on every ``predict``: a plain finite float >= 0 (what ``perf_counter`` deltas are)
        skips the general check, and the latency is checked before a window opens for nothing.
        """
        if not (type(latency_seconds) is float and 0.0 <= latency_seconds < math.inf):
            latency_seconds = _non_negative("latency_seconds", latency_seconds)
        with self._lock:
            self._window(key)._count_inference(latency_seconds)

    def record_error(self, key: WindowKey, reason: str) -> None:
        """See :meth:`Window.record_error`."""
        counts_as_inference(reason)  # raises on an unknown reason before a window opens
        with self._lock:
            self._window(key).record_error(reason)

    def record_labelled(self, key: WindowKey, correct: bool) -> None:
        """See :meth:`Window.record_labelled`."""
        with self._lock:
            self._window(key).record_labelled(correct)

    def record_shadow(self, key: WindowKey, agree: bool, distance: float | None) -> None:
        """See :meth:`Window.record_shadow`."""
        shadow_distance(distance)
        with self._lock:
            self._window(key).record_shadow(agree, distance)

    def snapshot(self) -> dict[WindowKey, Window]:
        """Copies of the open windows (for local metrics or debugging); recording goes on."""
        with self._lock:
            return copy.deepcopy(self._windows)

    def close(self, now: float | None = None) -> list[dict[str, Any]]:
        """End every open window and start fresh ones.

        Args:
            now: unix seconds the windows end at; the clock when None.

        Returns:
            One report dict per non-empty window (``id`` a fresh uuid4 hex), ready for the outbox.
        """
        peak_rss = self._rss_reader()
        health = self._health_reader()
        with self._lock:
            closed_at = self._clock() if now is None else now
            closed, self._windows = self._windows, {}
            self._last_key = self._last_window = None
            reports = []
            for key, window in closed.items():
                if window.is_empty:
                    continue
                reports.append({**window.to_report(key, closed_at, peak_rss, uuid.uuid4().hex), **health})
                self._windows[key] = Window(opened_at=closed_at)
        return reports



def shadow_distance(distance: float | None) -> float | None:
    """A shadow output distance as a plain float; None when there is none (None or +inf).

    Raises:
        ValueError: the distance is negative, NaN or not a number.
    """
    if distance is None or distance == math.inf:
        return None
    return _non_negative("distance", distance)


def _non_negative(name: str, value: float) -> float:
    """``value`` as a plain float (numpy scalars are not JSON), checked finite and >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number
