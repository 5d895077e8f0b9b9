"""Progress lines for long steps (export, calibration, validation) on stderr, and per variant
with an estimate of the time left (:class:`VariantClock`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """Prints ``[elapsed] message`` lines; ``quiet=True`` silences it (tests, library use).

    Example:
        >>> progress = Progress()
        >>> for batch in progress.iterate(batches, "calibrating onnx-int8-static"):
        ...     feed(batch)
    """

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:6.1f}s] {message}", file=self.stream, flush=True)

    def iterate(self, items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
        """Yield ``items`` while printing the count done about every 25%."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        marks = {max(1, round(total * q / 4)) for q in (1, 2, 3, 4)} if total else set()
        for done, item in enumerate(items, start=1):
            yield item
            if done in marks:
                self.say(f"{label}: {done}/{total}")


class VariantClock:
    """Per-variant progress with an estimate of what is left.

    ``start`` prints ``[3/12] onnx-int8-static: started``; ``finish`` prints the outcome, the
    seconds it took and ``about N s left``: the median seconds of the variants done so far
    times the variants still to do (tuned variants take longer; their budget is
    ``[tuning] max_seconds``).

    Args:
        progress: where the lines go.
        total: variants to run.
        clock: seconds source (injected in tests).
    """

    def __init__(self, progress: Progress, total: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.progress, self.total, self.clock = progress, total, clock
        self.durations: list[float] = []
        self._current: tuple[str, float] | None = None

    def start(self, variant_id: str) -> None:
        self._current = (variant_id, self.clock())
        self.progress.say(f"[{len(self.durations) + 1}/{self.total}] {variant_id}: started")

    def finish(self, status: str) -> float:
        """Record the current variant's end; returns the seconds it took."""
        assert self._current is not None, "finish() without start()"
        variant_id, started = self._current
        seconds = self.clock() - started
        self.durations.append(seconds)
        self._current = None
        left = self.seconds_left()
        remaining = self.total - len(self.durations)
        tail = f"; about {left:.0f} s left ({remaining} to go)" if remaining else ""
        self.progress.say(f"[{len(self.durations)}/{self.total}] {variant_id}: {status} in "
                          f"{seconds:.1f} s{tail}")
        return seconds

    def seconds_left(self) -> float:
        if not self.durations:
            return 0.0
        ordered = sorted(self.durations)
        median = ordered[len(ordered) // 2]
        return median * (self.total - len(self.durations))
