"""Token buckets by key: what the per-client limits count with (pure, time passed in)."""

from __future__ import annotations

import pytest

from rollout_server.buckets import BucketTable, retry_after_header


def test_take_allows_the_burst_then_says_when_the_next_token_comes():
    table = BucketTable(capacity=3, refill_per_second=0.5, max_keys=10)
    outcomes = [table.take("a", now=0.0) for _ in range(5)]
    assert [o.allowed for o in outcomes] == [True, True, True, False, False]
    assert outcomes[3].retry_after_seconds == pytest.approx(2.0)
    assert [o.started for o in outcomes] == [False, False, False, True, False]  # one episode
    assert table.take("b", now=0.0).allowed  # keys are independent
    assert table.take("a", now=2.0).allowed and not table.take("a", now=2.0).allowed


def test_an_episode_ends_only_when_the_bucket_is_full_again():
    table = BucketTable(capacity=2, refill_per_second=1.0, max_keys=10)
    [table.take("a", now=0.0) for _ in range(2)]
    assert table.take("a", now=0.0).started
    [table.take("a", now=1.0) for _ in range(1)]  # one token back, spent: still the same episode
    assert not table.take("a", now=1.0).started
    [table.take("a", now=3.0) for _ in range(2)]  # full at 3.0, then emptied: a new episode
    assert table.take("a", now=3.0).started


def test_the_failure_that_empties_the_bucket_locks_the_key_until_it_is_full():
    table = BucketTable(capacity=4, refill_per_second=4 / 60, max_keys=10)
    outcomes = [table.charge("a", now=float(i)) for i in range(4)]
    assert [o.started for o in outcomes] == [False, False, False, True]
    assert not outcomes[3].allowed
    until = 3.0 + outcomes[3].retry_after_seconds
    assert table.locked("a", now=10.0) == pytest.approx(until - 10.0)
    assert table.locked("a", now=until + 0.01) == 0.0 and table.locked("b", now=10.0) == 0.0
    assert table.charge("a", now=until + 0.01).allowed  # full again: three more failures allowed
    assert until - 3.0 <= 60.0  # never locked longer than the window


def test_charges_refill_with_time_so_a_slow_trickle_never_locks():
    table = BucketTable(capacity=3, refill_per_second=1 / 10, max_keys=10)
    assert all(table.charge("a", now=t * 10.0).allowed for t in range(100))


def test_a_clock_that_steps_back_refills_nothing():
    table = BucketTable(capacity=2, refill_per_second=1.0, max_keys=10)
    [table.take("a", now=100.0) for _ in range(2)]
    assert not table.take("a", now=50.0).allowed
    assert not table.take("a", now=100.5).allowed and table.take("a", now=101.0).allowed


def test_the_least_recently_used_keys_are_forgotten_past_the_cap():
    table = BucketTable(capacity=1, refill_per_second=0.001, max_keys=3)
    for key in "abc":
        table.take(key, now=0.0)
    table.take("a", now=0.0)  # a is used again: b is now the oldest
    table.take("d", now=0.0)
    assert len(table) == 3
    assert table.take("b", now=0.0).allowed  # forgotten, so a full bucket again
    assert not table.take("a", now=0.0).allowed


def test_bad_settings_and_retry_after_rounding():
    with pytest.raises(ValueError, match="capacity"):
        BucketTable(capacity=0, refill_per_second=1.0, max_keys=1)
    assert [retry_after_header(s) for s in (0.0, 0.2, 1.0, 1.01, 299.5)] == [1, 1, 1, 2, 300]
