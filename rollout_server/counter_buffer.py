"""Server-wide counters added to from process memory, written at most once per interval.

Some counters count what the server refuses cheaply (a 429 needs no database at all), so one
UPDATE per event would make each refusal cost a write and turn a flood into database load. A
:class:`CounterBuffer` adds in memory and writes the sums to the ``counters`` rows
(:mod:`rollout_server.counters`, shared by every worker and replica) in one transaction, with any
audit entries added meanwhile: when :meth:`flush` is called (a scrape of ``/metrics``, the end of
a request that added an audit entry), or ``interval_seconds`` after the first unwritten event,
from a timer thread. A failed write (the database busy or gone) keeps them for the next one;
nothing is counted twice.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter as Tally
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy.orm import Session

from rollout_server.counters import bump
from rollout_server.models import AuditEntry

log = logging.getLogger(__name__)
EXTENSION = "edgeship.counter_buffer"
#: audit entries kept for a later write while the database refuses them (the oldest go first).
MAX_PENDING_AUDIT = 256
#: the longest wait between retries of a failed write.
MAX_RETRY_SECONDS = 60.0


class CounterBuffer:
    """Counter increments and audit entries of one process, written in batches.

    Args:
        sessions: makes a session scope that commits (``lambda: session_scope(app)``).
        interval_seconds: the longest an event waits in memory before a timer writes it.
    """

    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]],
                 interval_seconds: float = 1.0) -> None:
        self._sessions = sessions
        self.interval_seconds = interval_seconds
        self._counts: Tally[str] = Tally()
        self._audit: list[dict] = []
        self._lock = threading.Lock()  # guards the pending sums and entries
        self._write_lock = threading.Lock()  # one write at a time, so a failed one is retried whole
        self._timer_pid: int | None = None  # the process whose timer is armed (none after a fork)

    def add(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name`` (a row :func:`rollout_server.counters.ensure_counters` made)."""
        with self._lock:
            self._counts[name] += by
        self._arm(self.interval_seconds)

    def add_audit(self, entry: dict) -> None:
        """Write an audit entry (``AuditEntry`` fields) with the next write."""
        with self._lock:
            self._audit.append(entry)
            del self._audit[:-MAX_PENDING_AUDIT]
        self._arm(self.interval_seconds)

    def has_audit(self) -> bool:
        """Whether audit entries wait to be written."""
        return bool(self._audit)

    def flush(self) -> bool:
        """Write the pending sums and audit entries now; False if the database refused them (they
        are kept and retried)."""
        with self._write_lock:
            with self._lock:
                counts, entries = dict(self._counts), list(self._audit)
                self._counts.clear()
                self._audit.clear()
            if not counts and not entries:
                return True
            try:
                with self._sessions() as session:
                    for name, by in counts.items():
                        bump(session, name, by)
                    session.add_all(AuditEntry(**entry) for entry in entries)
            except Exception as err:  # any database fault: keep the sums, retry later
                log.warning("could not write %d counter(s) and %d audit entr(y/ies); retrying: %s",
                            len(counts), len(entries), err)
                with self._lock:
                    self._counts.update(counts)
                    self._audit[:0] = entries
                    del self._audit[:-MAX_PENDING_AUDIT]
                return False
        return True

    def pending(self) -> dict[str, int]:
        """The sums not written yet."""
        with self._lock:
            return dict(self._counts)

    def _arm(self, delay: float) -> None:
        with self._lock:
            if self._timer_pid == os.getpid():
                return
            self._timer_pid = os.getpid()
        timer = threading.Timer(delay, self._on_timer, args=(delay,))
        timer.daemon = True
        timer.start()

    def _on_timer(self, delay: float) -> None:
        with self._lock:
            self._timer_pid = None
        if not self.flush():
            self._arm(min(MAX_RETRY_SECONDS, max(delay, self.interval_seconds) * 2))
