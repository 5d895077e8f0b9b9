"""The durable outbox: bounded, counts every dropped window, survives crashes, full disks and
corrupt files."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from edge_agent.outbox import MAX_DROPPED_PER_REPORT, Outbox, OutboxError

ROOT = Path(__file__).resolve().parents[2]


def report(report_id: str | None = None, padding: int = 0, **fields) -> dict:
    body = {"id": report_id or uuid.uuid4().hex, "model": "digits-cnn", "version": "1",
            "variant": "tflite-int8", "cohort": "stable", "inferences": 3, "dropped_windows": 0}
    if padding:
        body["note"] = "x" * padding
    body.update(fields)
    return body


@pytest.fixture
def outbox(tmp_path: Path):
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


def test_reports_wait_oldest_first_until_acked(outbox):
    outbox.add([report("a"), report("b")])
    outbox.add([report("c")])
    assert [r["id"] for r in outbox.take()] == ["a", "b", "c"]
    assert [r["id"] for r in outbox.take(limit=2)] == ["a", "b"]
    assert len(outbox) == 3  # take does not remove
    assert outbox.ack(["a", "c", "unknown"]) == 2
    assert [r["id"] for r in outbox.take()] == ["b"] and len(outbox) == 1
    assert outbox.take()[0] == report("b")  # the body round-trips


def test_the_outbox_files_are_private_to_the_agent_user(tmp_path):
    """Reports name the device and what it saw: the file and its WAL are 0600, also when an
    older agent left the file world-readable."""
    old = tmp_path / "old.db"
    old.touch(mode=0o644)
    old.chmod(0o644)
    for path in (tmp_path / "outbox.db", old):
        box = Outbox(path)
        try:
            box.add([report()])
            files = [path, path.with_name(path.name + "-wal")]
            assert all(f.exists() for f in files), files
            assert {f.stat().st_mode & 0o777 for f in files} == {0o600}
        finally:
            box.close()


def test_add_copies_the_callers_reports(outbox, tmp_path):
    mine = report("a")
    outbox.add([mine])
    assert mine == report("a")
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    assert reopened.take() == [report("a")]
    reopened.close()


def carried(box: Outbox) -> dict[str, int]:
    return {r["id"]: r["dropped_windows"] for r in box.take(limit=10**6)}


def accounted(box: Outbox) -> int:
    """Every dropped window is either carried by a queued report or pending."""
    return sum(carried(box).values()) + box.dropped_pending


def test_over_the_count_bound_the_oldest_go_and_the_next_report_carries_the_loss(tmp_path):
    box = Outbox(tmp_path / "o.db", max_reports=3)
    for name in "abcd":
        box.add([report(name)])
    assert carried(box) == {"b": 0, "c": 0, "d": 0} and box.dropped_pending == 1  # a
    box.add([report("e")])  # e carries a; b makes room and is pending
    assert carried(box) == {"c": 0, "d": 0, "e": 1} and box.dropped_pending == 1
    box.add([report("f"), report("g")])  # f carries b (g nothing); c, d make room
    assert carried(box) == {"e": 1, "f": 1, "g": 0} and box.dropped_pending == 2
    assert accounted(box) == 4


@pytest.mark.parametrize("max_reports, adds", [(1, 10), (3, 20), (5, 7)])
def test_no_dropped_window_goes_unaccounted(tmp_path, max_reports, adds):
    box = Outbox(tmp_path / "o.db", max_reports=max_reports)
    for i in range(adds):
        box.add([report(f"r{i}")])
    assert len(box) == max_reports and accounted(box) == adds - max_reports
    box.close()


def test_dropping_a_report_that_carried_losses_keeps_them_counted(tmp_path):
    box = Outbox(tmp_path / "o.db", max_reports=1)
    box.add([report("a")])
    box.add([report("b")])  # a dropped: 1 pending
    box.add([report("c")])  # c carries 1; b dropped: 1 pending
    assert box.take()[0]["dropped_windows"] == 1 and box.dropped_pending == 1
    box.add([report("d")])  # d carries 1; c dropped with the 1 it carried: 1 + 1
    assert box.take()[0]["dropped_windows"] == 1 and box.dropped_pending == 2
    box.close()


def test_a_batch_larger_than_the_bound_drops_its_own_oldest(tmp_path):
    box = Outbox(tmp_path / "o.db", max_reports=2)
    box.add([report(str(i)) for i in range(5)])
    assert [r["id"] for r in box.take()] == ["3", "4"]
    assert box.dropped_pending == 3
    box.close()


def test_the_byte_bound_counts_json_bytes(tmp_path):
    one = len(json.dumps(report("r0", padding=1000), separators=(",", ":")).encode())
    box = Outbox(tmp_path / "o.db", max_bytes=3 * one + 10)
    for i in range(5):
        box.add([report(f"r{i}", padding=1000)])
    assert list(carried(box)) == ["r2", "r3", "r4"] and accounted(box) == 2
    box.close()


def test_the_dropped_count_survives_a_restart(tmp_path):
    box = Outbox(tmp_path / "o.db", max_reports=1)
    for name in "abcd":
        box.add([report(name)])
    assert carried(box) == {"d": 1} and box.dropped_pending == 2  # c was dropped with the 1 it carried
    box.close()
    reopened = Outbox(tmp_path / "o.db", max_reports=1)
    assert reopened.dropped_pending == 2 and carried(reopened) == {"d": 1}
    reopened.ack(["d"])  # delivered, with its count
    reopened.add([report("e")])
    assert carried(reopened) == {"e": 2} and reopened.dropped_pending == 0
    reopened.close()


def test_no_report_carries_more_than_the_server_accepts(tmp_path):
    box = Outbox(tmp_path / "o.db", max_reports=1)
    box.add([report("a")])
    box.add([report("b", dropped_windows=MAX_DROPPED_PER_REPORT)])  # a dropped: 1
    box.add([report("c")])  # c carries 1; b dropped with its million
    assert box.dropped_pending == 1 + MAX_DROPPED_PER_REPORT
    box.close()
    box = Outbox(tmp_path / "o.db", max_reports=10)
    box.add([report("d"), report("e")])
    carried = {r["id"]: r["dropped_windows"] for r in box.take()}
    assert carried == {"c": 1, "d": MAX_DROPPED_PER_REPORT, "e": 1}
    assert box.dropped_pending == 0
    box.close()


@pytest.mark.parametrize("bad, fragment", [
    ([report("a"), report("a")], "repeat"),
    ([report("x" * 65)], "1 to 64"),
    ([{"model": "m"}], "id"),
    ([report("a", value=float("nan"))], "not JSON"),
    ([report("a", when=object())], "not JSON"),
    ([report("a", dropped_windows=-1)], "dropped_windows"),
])
def test_bad_reports_are_refused_and_nothing_is_stored_or_counted(tmp_path, bad, fragment):
    box = Outbox(tmp_path / "o.db", max_reports=1)
    box.add([report("first")])
    box.add([report("second")])  # first dropped: one pending
    with pytest.raises(ValueError, match=fragment):
        box.add(bad)
    assert [r["id"] for r in box.take()] == ["second"] and box.dropped_pending == 1
    box.close()


def test_an_id_already_queued_is_refused_without_touching_the_queue(outbox):
    outbox.add([report("a")])
    with pytest.raises(ValueError, match="already in the outbox"):
        outbox.add([report("b"), report("a")])
    assert [r["id"] for r in outbox.take()] == ["a"] and outbox.dropped_pending == 0


def fill_until_full(box: Outbox) -> tuple[int, OutboxError]:
    stored = 0
    for _ in range(200):
        try:
            box.add([report(padding=1500), report(padding=1500)])
        except OutboxError as err:
            return stored, err
        stored += 2
    raise AssertionError("the outbox never filled up")


def test_a_full_disk_is_an_outbox_error_and_the_outbox_recovers(tmp_path):
    path = tmp_path / "full.db"
    box = Outbox(path, max_page_count=12)
    box.note_dropped(4)
    stored, err = fill_until_full(box)
    message = str(err)
    assert str(path) in message and "database or disk is full" in message and "\n" not in message
    assert stored > 0 and len(box) == stored  # the failed batch left nothing behind ...
    assert box.dropped_pending == 0  # ... and did not consume the count the first report took
    assert carried(box)[box.take(1)[0]["id"]] == 4
    kept = [report("kept-1", padding=1500), report("kept-2", padding=1500)]
    with pytest.raises(OutboxError):
        box.add(kept)
    # the sender delivers: space is back, and the reports the caller kept store now
    assert box.ack([r["id"] for r in box.take(limit=6)]) == 6
    box.add(kept)
    assert list(carried(box))[-2:] == ["kept-1", "kept-2"] and box.dropped_pending == 0
    box.close()


def test_windows_given_up_are_carried_by_the_next_report(tmp_path):
    box = Outbox(tmp_path / "o.db")
    box.note_dropped(2)
    box.note_dropped(0)
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert box.dropped_pending == 2  # stored, survives a restart
    box.add([report("next"), report("after")])
    assert carried(box) == {"next": 2, "after": 0} and box.dropped_pending == 0
    with pytest.raises(ValueError):
        box.note_dropped(-1)
    box.close()


def test_a_locked_file_fails_writes_clearly_and_keeps_given_up_counts_in_memory(tmp_path):
    import sqlite3

    path = tmp_path / "o.db"
    box = Outbox(path, busy_timeout_seconds=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    with pytest.raises(OutboxError, match=r"cannot store 1 reports: database is locked"):
        box.add([report("a")])
    box.note_dropped(5)  # no error: kept in memory ...
    assert box.dropped_pending == 5
    other.execute("ROLLBACK")
    second = Outbox(path)
    assert second.dropped_pending == 0  # ... not in the file
    second.close()
    box.add([report("a")])  # the lock is gone: the retry stores, carrying the count
    assert carried(box) == {"a": 5} and box.dropped_pending == 0
    other.close()
    box.close()


def test_a_corrupt_file_is_moved_aside_and_a_fresh_outbox_starts(tmp_path, caplog):
    path = tmp_path / "outbox.db"
    garbage = bytes(range(256)) * 64
    path.write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="edge_agent.outbox"):
        box = Outbox(path)
    (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith("outbox.db.corrupt-")]
    assert moved.read_bytes() == garbage
    assert any("unusable" in r.getMessage() and moved.name in r.getMessage() for r in caplog.records)
    box.add([report("fresh")])
    assert [r["id"] for r in box.take()] == ["fresh"]
    box.close()
    # a second corruption on the same second does not overwrite the first one moved aside
    path.write_bytes(b"not sqlite either" * 100)
    Outbox(path).close()
    assert len([p for p in tmp_path.iterdir() if ".corrupt-" in p.name]) == 2


def test_a_file_from_an_unknown_schema_is_moved_aside(tmp_path):
    import sqlite3

    path = tmp_path / "outbox.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    box = Outbox(path)
    box.add([report("a")])
    assert len(box) == 1
    assert any(p.name.startswith("outbox.db.corrupt-") for p in tmp_path.iterdir())
    box.close()


def test_an_unopenable_path_is_an_outbox_error(tmp_path):
    with pytest.raises(OutboxError, match="cannot open"):
        Outbox(tmp_path / "missing-dir" / "outbox.db")


CRASH_MID_ADD = """
import os, sys
from pathlib import Path
from edge_agent.outbox import Outbox

box = Outbox(Path(sys.argv[1]), max_reports=2)
def crash(self):  # the process dies after the inserts, before the commit
    os._exit(3)
Outbox._make_room = crash
box.add([{"id": "lost-1", "dropped_windows": 0}, {"id": "lost-2", "dropped_windows": 0}])
"""


def test_a_crash_inside_add_leaves_no_partial_state(tmp_path):
    path = tmp_path / "o.db"
    box = Outbox(path, max_reports=2)
    for name in "abc":
        box.add([report(name)])
    before = (box.take(), box.dropped_pending)
    box.close()
    proc = subprocess.run([sys.executable, "-c", CRASH_MID_ADD, str(path)], cwd=ROOT, timeout=60)
    assert proc.returncode == 3  # it did die mid-transaction
    reopened = Outbox(path, max_reports=2)
    assert (reopened.take(), reopened.dropped_pending) == before
    assert before[1] == 1  # the crashed add had consumed this count; it is still pending
    reopened.close()


def test_one_thread_adds_while_another_sends(outbox):
    added = [f"r{i}" for i in range(300)]
    delivered: list[str] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            for i in range(0, len(added), 3):
                outbox.add([report(name) for name in added[i:i + 3]])
        except BaseException as err:
            errors.append(err)
        finally:
            done.set()

    def sender() -> None:
        try:
            while not done.is_set() or len(outbox):
                batch = outbox.take(limit=7)
                outbox.ack(r["id"] for r in batch)
                delivered.extend(r["id"] for r in batch)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=loop), threading.Thread(target=sender)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert delivered == added and len(outbox) == 0


def test_a_closed_outbox_says_so(tmp_path):
    box = Outbox(tmp_path / "o.db")
    box.close()
    with pytest.raises(OutboxError):
        box.add([report()])
    with pytest.raises(OutboxError):
        box.take()
