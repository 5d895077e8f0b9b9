"""Progress lines for long steps (export, calibration, validation) on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
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
