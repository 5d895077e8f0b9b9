"""The on-device model store: blobs, current / last good, crash-safe state, garbage collection."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.store import STALE_PARTIAL_SECONDS, ModelStore


def make_entry(store: ModelStore, name: str, model: bytes | None = None) -> dict[str, Any]:
    """An entry like the agent's, with three distinct blobs put in the store.

    Make it just before promoting it: a promote collects every blob not referenced (or kept).
    """
    model = model if model is not None else f"model {name}".encode() * 100
    blobs = {"model": store.put_bytes(model), "golden": store.put_bytes(f"golden {name}".encode()),
             "manifest": store.put_bytes(json.dumps({"version": name}).encode())}
    return {"blobs": blobs, "release": {"version": name}}


def blob_names(store: ModelStore) -> set[str]:
    return {p.name for p in store.blobs_dir.iterdir()}


def referenced(*entries: dict[str, Any]) -> set[str]:
    return {sha for entry in entries for sha in entry["blobs"].values()}


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# -- blobs -----------------------------------------------------------------------------------------

def test_put_bytes_is_content_addressed_and_leaves_no_temp(tmp_path):
    store = ModelStore(tmp_path / "s")
    sha = store.put_bytes(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest() and store.put_bytes(b"hello") == sha
    assert store.blob_path(sha) == tmp_path / "s" / "blobs" / sha
    assert store.blob_path(sha).read_bytes() == b"hello"
    assert blob_names(store) == {sha}
    assert store.partial_path(sha) == tmp_path / "s" / "blobs" / f"{sha}.part"
    assert store.has_blob(sha) and store.has_blob(sha, 5) and not store.has_blob(sha, 6)
    assert store.verify_blob(sha)
    other = hashlib.sha256(b"other").hexdigest()
    assert not store.has_blob(other) and not store.verify_blob(other)


def test_a_corrupt_blob_is_found_by_verify_and_rewritten_by_put(tmp_path):
    store = ModelStore(tmp_path)
    sha = store.put_bytes(b"abcdef")
    flip_a_byte(store.blob_path(sha))
    assert store.has_blob(sha, 6) and not store.verify_blob(sha)  # the cheap check cannot tell
    store.put_bytes(b"abcdef")
    assert store.verify_blob(sha)


@pytest.mark.parametrize("bad", ["../state.json", "A" * 64, "a" * 63, "", "a" * 64 + ".part"])
def test_blob_names_must_be_digests(tmp_path, bad):
    with pytest.raises(ValueError, match="sha256"):
        ModelStore(tmp_path).blob_path(bad)


def test_disk_free_bytes(tmp_path):
    free = ModelStore(tmp_path).disk_free_bytes()
    assert isinstance(free, int) and 0 < free <= os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize


# -- promote and startup ----------------------------------------------------------------------------

def test_a_fresh_store_has_nothing_to_start(tmp_path):
    store = ModelStore(tmp_path)
    assert store.state() == (None, None) and store.startup() == []


def test_promote_twice_makes_the_first_last_good(tmp_path):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    assert store.state() == (a, None)
    b = make_entry(store, "b")
    store.promote(b)
    assert store.state() == (b, a)
    assert json.loads((tmp_path / "state.json.prev").read_text()) == {"current": a, "last_good": None}
    assert store.startup() == [b, a]


def test_promoting_the_same_model_again_keeps_last_good(tmp_path):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    b = make_entry(store, "b")
    store.promote(b)
    b_again = {**b, "release": {"version": "b", "note": "reassigned"}}
    store.promote(b_again)
    assert store.state() == (b_again, a)


def test_rolling_back_from_a_failed_model_does_not_keep_it_as_last_good(tmp_path):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    b = make_entry(store, "b")
    store.promote(b)
    store.promote(a, current_was_good=False)
    assert store.state() == (a, a)
    assert store.startup() == [a]  # once, not twice
    assert blob_names(store) == referenced(a)  # the failed model's blobs are collected


def test_startup_skips_a_corrupt_current_and_deletes_the_bad_blob(tmp_path, caplog):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    b = make_entry(store, "b")
    store.promote(b)
    flip_a_byte(store.blob_path(b["blobs"]["model"]))
    assert not store.usable(b) and store.usable(a)
    with caplog.at_level(logging.INFO, logger="edge_agent.store"):
        assert store.startup() == [a]
    assert not store.has_blob(b["blobs"]["model"])  # deleted, so it is downloaded again
    assert store.has_blob(b["blobs"]["golden"])  # the sound blobs of b stay
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(skipped) == 1 and "current" in skipped[0]
    assert f"model {b['blobs']['model'][:12]} corrupt" in skipped[0]
    assert any("last_good" in r.getMessage() and "verified" in r.getMessage() for r in caplog.records)
    assert store.state() == (b, a)  # startup reports; the agent decides what to promote


def test_startup_skips_an_entry_with_a_missing_blob(tmp_path, caplog):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    b = make_entry(store, "b")
    store.promote(b)
    store.blob_path(a["blobs"]["golden"]).unlink()
    with caplog.at_level(logging.WARNING, logger="edge_agent.store"):
        assert store.startup() == [b]
    assert "last_good" in caplog.text and "missing" in caplog.text


def test_a_corrupt_blob_shared_by_both_entries_leaves_nothing_to_start(tmp_path):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    b = {"blobs": {**make_entry(store, "b")["blobs"], "golden": a["blobs"]["golden"]}}
    store.promote(b)
    flip_a_byte(store.blob_path(a["blobs"]["golden"]))
    assert store.startup() == []
    assert not store.has_blob(a["blobs"]["golden"]) and store.has_blob(a["blobs"]["model"])


@pytest.mark.parametrize("entry", [
    {"release": {}},
    {"blobs": {"golden": "0" * 64}},
    {"blobs": {"model": "not a digest"}},
    {"blobs": {"model": "0" * 64}},  # well formed, but not in the store
])
def test_promote_refuses_malformed_or_absent_entries(tmp_path, entry):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    with pytest.raises(ValueError):
        store.promote(entry)
    assert store.state() == (a, None)


# -- a damaged state.json -----------------------------------------------------------------------------

@pytest.mark.parametrize("damage", [b"", b'{"current": {"blo', b"\xff\xfe", b'{"current": {"blobs": {}}}',
                                    b"[1, 2]"])
def test_a_corrupt_state_falls_back_to_prev_and_is_kept_aside(tmp_path, damage, caplog):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    b = make_entry(store, "b")
    store.promote(b)
    (tmp_path / "state.json").write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="edge_agent.store"):
        assert store.state() == (a, None)
    aside = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damage and "corrupt" in caplog.text
    assert json.loads((tmp_path / "state.json").read_text()) == {"current": a, "last_good": None}  # restored
    assert store.startup() == [a]


def test_a_corrupt_state_without_prev_starts_empty(tmp_path):
    store = ModelStore(tmp_path)
    store.promote(make_entry(store, "a"))  # first write: there is no older state to keep
    assert not (tmp_path / "state.json.prev").exists()
    (tmp_path / "state.json").write_text("{")
    assert store.state() == (None, None)
    assert not (tmp_path / "state.json").exists() and len(list(tmp_path.glob("state.json.corrupt-*"))) == 1
    assert store.state() == (None, None)  # stays calm on the next read too


def test_a_corrupt_state_never_overwrites_a_good_prev(tmp_path):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    b = make_entry(store, "b")
    store.promote(b)
    c = make_entry(store, "c")
    (tmp_path / "state.json").write_text("garbage")
    store.promote(c)  # reads state (falls back to prev: current a), then writes
    assert store.state() == (c, a)
    assert json.loads((tmp_path / "state.json.prev").read_text()) == {"current": a, "last_good": None}


# -- crashes in the middle of promote ---------------------------------------------------------------

def crash_on(target: str, torn: bool = False):
    """An ``os.replace`` that dies when renaming onto ``target`` (after a torn write, if asked)."""
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(dst).name == target:
            if torn:  # a filesystem that wrote half the new state before the power went
                Path(dst).write_bytes(Path(src).read_bytes()[:20])
            raise OSError("simulated crash")
        real_replace(src, dst)

    return replace


@pytest.mark.parametrize(("target", "torn"), [("state.json", False), ("state.json", True),
                                              ("state.json.prev", False)])
def test_a_crash_mid_promote_leaves_the_previous_state(tmp_path, monkeypatch, target, torn):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    b = make_entry(store, "b")
    store.promote(b)
    c = make_entry(store, "c")
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash_on(target, torn))
        with pytest.raises(OSError, match="simulated crash"):
            store.promote(c)
    # torn: state.json is garbage, and .prev (written first) holds exactly the state before
    assert store.state() == (b, a)
    assert store.startup() == [b, a]
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == int(torn)
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file did not linger


def test_a_crash_while_writing_the_temp_leaves_the_previous_state(tmp_path, monkeypatch):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    store.promote(a)
    b = make_entry(store, "b")
    store.promote(b)
    c = make_entry(store, "c")
    real_fsync = os.fsync

    def dying_fsync(fd: int) -> None:  # the temp got some bytes, then the process died
        if os.fstat(fd).st_size > 0:
            raise OSError("simulated crash")
        real_fsync(fd)

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", dying_fsync)
        with pytest.raises(OSError, match="simulated crash"):
            store.promote(c)
    assert store.state() == (b, a)
    # a left-behind torn temp (a real crash cannot clean up) is not mistaken for state
    (tmp_path / ".state.json.x1y2.tmp").write_text('{"current": nul')
    assert store.state() == (b, a)


# -- garbage collection -----------------------------------------------------------------------------

def test_gc_keeps_current_last_good_and_fresh_partials(tmp_path):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    stray = store.put_bytes(b"an unpromoted download")
    fresh_part = store.partial_path(hashlib.sha256(b"in flight").hexdigest())
    stale_part = store.partial_path(hashlib.sha256(b"abandoned").hexdigest())
    stale_temp = store.blobs_dir / ".deadbeef.abc.tmp"
    for path in (fresh_part, stale_part, stale_temp):
        path.write_bytes(b"partial")
    old = time.time() - STALE_PARTIAL_SECONDS - 60
    os.utime(stale_part, (old, old))
    os.utime(stale_temp, (old, old))
    (store.blobs_dir / "README").write_text("not a blob: left alone")

    store.promote(a)
    assert not store.has_blob(stray)
    b = make_entry(store, "b")
    store.promote(b)
    c = make_entry(store, "c")
    store.promote(c)
    assert store.state() == (c, b)
    assert blob_names(store) == referenced(b, c) | {fresh_part.name, "README"}
    assert not any(store.has_blob(sha) for sha in referenced(a) - referenced(b, c))
    assert store.collect_garbage() == []  # nothing left to do


def test_gc_removes_fresh_partials_only_once_they_are_stale(tmp_path):
    store = ModelStore(tmp_path)
    part = store.partial_path("1" * 64)
    part.write_bytes(b"x")
    assert store.collect_garbage() == []
    assert store.collect_garbage(now_seconds=time.time() + STALE_PARTIAL_SECONDS + 1) == [part.name]
    assert not part.exists()


def test_promote_keeps_blobs_it_is_asked_to_keep(tmp_path):
    store = ModelStore(tmp_path)
    a = make_entry(store, "a")
    shadow = make_entry(store, "shadow")  # downloaded and running as a shadow, never promoted
    store.promote(a, keep=referenced(shadow))
    assert blob_names(store) == referenced(a, shadow)
    store.collect_garbage()
    assert blob_names(store) == referenced(a)
