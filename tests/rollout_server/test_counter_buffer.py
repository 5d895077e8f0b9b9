"""Counts kept in memory reach the counters rows once, even when a write fails first."""

from __future__ import annotations

from sqlalchemy import select

from rollout_server.counter_buffer import CounterBuffer
from rollout_server.db import session_scope
from rollout_server.models import AuditEntry, Counter
from tests.edge_agent.conftest import wait_until
from tests.rollout_server.conftest import BOTH_BACKENDS


@BOTH_BACKENDS
def test_a_failed_write_keeps_the_counts_and_entries_for_the_next(app):
    broken = {"on": True}

    def sessions():
        if broken["on"]:
            raise OSError("disk gone")
        return session_scope(app)

    buffer = CounterBuffer(sessions, interval_seconds=3600)
    buffer.add("auth_failures_operator_token", 3)
    buffer.add_audit({"actor": "system", "action": "rate_limited", "target": "client:x", "detail": {}})
    assert not buffer.flush() and buffer.has_audit()
    assert buffer.pending() == {"auth_failures_operator_token": 3}
    buffer.add("auth_failures_operator_token")
    broken["on"] = False
    assert buffer.flush() and buffer.pending() == {} and not buffer.has_audit()
    assert buffer.flush()  # nothing left: nothing written twice
    with session_scope(app) as session:
        assert session.get(Counter, "auth_failures_operator_token").value == 4
        assert session.scalars(select(AuditEntry.target).where(AuditEntry.action == "rate_limited")).all() \
            == ["client:x"]


def test_a_timer_writes_what_no_one_flushed(app):
    buffer = CounterBuffer(lambda: session_scope(app), interval_seconds=0.05)
    buffer.add("rate_limited_operator_auth_failures", 2)

    def written() -> bool:
        with session_scope(app) as session:
            return session.get(Counter, "rate_limited_operator_auth_failures").value == 2

    wait_until(written, timeout=10)
    assert buffer.pending() == {}
