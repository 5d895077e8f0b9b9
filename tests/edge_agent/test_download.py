"""Resumable, verified downloads against real local HTTP servers (a plain one and the rollout server)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edge_agent import download
from edge_agent.download import (
    DownloadError,
    IntegrityError,
    TooLarge,
    TransferError,
    fetch,
    partial_path,
)
from tests.skip_policy import dev_venv_only

ROOT = Path(__file__).resolve().parents[2]
BLOB = random.Random(0).randbytes(200_000)
SHA = hashlib.sha256(BLOB).hexdigest()


class Artifact:
    """What the test server serves and how it misbehaves; ``requests`` logs every request."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.sha256 = hashlib.sha256(blob).hexdigest()
        self.url = ""
        self.requests: list[dict[str, Any]] = []
        self.ignore_range = False
        self.cut_after_bytes: int | None = None  # close mid-body, on the next request only
        self.throttle: tuple[int, float] | None = None  # (bytes per write, seconds between writes)
        self.stall_seconds = 0.0  # after the headers, before the body
        self.extra = b""  # bytes appended to the body
        self.content_length: str | None = None  # override the header; "" leaves it out
        self.error: tuple[int, dict] | None = None
        self.stopping = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        art: Artifact = self.server.artifact  # type: ignore[attr-defined]
        record = {"range": self.headers.get("Range"), "authorization": self.headers.get("Authorization"),
                  "status": None, "sent_bytes": 0}
        art.requests.append(record)
        if art.error:
            status, body = art.error
            return self.reply(record, status, json.dumps(body).encode(), {"Content-Type": "application/json"})
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", record["range"] or "")
        if match and not art.ignore_range:
            start = int(match[1])
            if start >= len(art.blob):
                return self.reply(record, 416, b"{}", {"Content-Range": f"bytes */{len(art.blob)}"})
        payload = (art.blob + art.extra)[start:]
        headers = {"Content-Length": str(len(payload))}
        if match and not art.ignore_range:
            headers["Content-Range"] = f"bytes {start}-{len(art.blob) - 1}/{len(art.blob)}"
        if art.content_length is not None:
            headers["Content-Length"] = art.content_length
        if art.cut_after_bytes is not None:
            payload, art.cut_after_bytes = payload[:art.cut_after_bytes], None
        self.reply(record, 206 if "Content-Range" in headers else 200, payload, headers)

    def reply(self, record: dict, status: int, payload: bytes, headers: dict[str, str]) -> None:
        art: Artifact = self.server.artifact  # type: ignore[attr-defined]
        record["status"] = status
        self.send_response(status)
        for key, value in headers.items():
            if value:
                self.send_header(key, value)
        self.end_headers()
        if art.stall_seconds:
            art.stopping.wait(art.stall_seconds)
        try:
            while payload and not art.stopping.is_set():
                piece_bytes, pause_seconds = art.throttle or (1 << 16, 0.0)
                self.wfile.write(payload[:piece_bytes])
                record["sent_bytes"] += len(payload[:piece_bytes])
                payload = payload[piece_bytes:]
                if pause_seconds:
                    time.sleep(pause_seconds)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (or was killed): that is the point of some tests


@pytest.fixture
def serve() -> Iterator:
    started: list[tuple[ThreadingHTTPServer, threading.Thread, Artifact]] = []

    def start(blob: bytes = BLOB) -> Artifact:
        art = Artifact(blob)
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.artifact = art  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        art.url = f"http://127.0.0.1:{server.server_port}/v1/artifacts/{art.sha256}"
        started.append((server, thread, art))
        return art

    yield start
    for server, thread, art in started:
        art.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- the happy paths -----------------------------------------------------------------------------

def test_full_download_is_verified_and_renamed_into_place(serve, tmp_path):
    art = serve()
    seen: list[tuple[int, int]] = []
    dest = tmp_path / "blobs" / SHA
    got = fetch(art.url, dest, SHA, len(BLOB), headers={"Authorization": "Bearer secret"},
                chunk_bytes=8192, progress=lambda done, total: seen.append((done, total)))
    assert got == dest and dest.read_bytes() == BLOB
    assert leftovers(dest.parent) == [SHA]  # no partial, no temp
    assert [(r["range"], r["authorization"], r["status"]) for r in art.requests] == [
        (None, "Bearer secret", 200)]
    assert seen[-1] == (len(BLOB), len(BLOB)) and len(seen) > 1
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_an_existing_verified_dest_needs_no_request(serve, tmp_path):
    art = serve()
    (tmp_path / "m").write_bytes(BLOB)
    assert fetch(art.url, tmp_path / "m", SHA, len(BLOB)) == tmp_path / "m"
    assert art.requests == []


def test_a_complete_partial_is_installed_without_a_request(serve, tmp_path):
    art = serve()
    partial_path(tmp_path / "m").write_bytes(BLOB)  # killed between the last write and the rename
    fetch(art.url, tmp_path / "m", SHA, len(BLOB))
    assert (tmp_path / "m").read_bytes() == BLOB and art.requests == []
    assert leftovers(tmp_path) == ["m"]


# -- resume --------------------------------------------------------------------------------------

def test_resume_after_the_connection_drops_mid_body(serve, tmp_path):
    art = serve()
    art.cut_after_bytes = 70_000
    dest = tmp_path / "m"
    with pytest.raises(TransferError, match="connection closed after 70000 of 200000 bytes"):
        fetch(art.url, dest, SHA, len(BLOB))
    assert not dest.exists() and partial_path(dest).read_bytes() == BLOB[:70_000]

    fetch(art.url, dest, SHA, len(BLOB))
    assert dest.read_bytes() == BLOB and not partial_path(dest).exists()
    assert [(r["range"], r["status"]) for r in art.requests] == [(None, 200), ("bytes=70000-", 206)]
    assert art.requests[1]["sent_bytes"] == len(BLOB) - 70_000  # only the remainder travelled


def test_server_ignoring_range_restarts_from_zero(serve, tmp_path):
    art = serve()
    art.ignore_range = True
    partial_path(tmp_path / "m").write_bytes(b"x" * 50_000)  # wrong bytes: must not survive
    fetch(art.url, tmp_path / "m", SHA, len(BLOB))
    assert (tmp_path / "m").read_bytes() == BLOB
    assert [(r["range"], r["status"], r["sent_bytes"]) for r in art.requests] == [
        ("bytes=50000-", 200, len(BLOB))]


def test_a_corrupt_partial_is_caught_by_the_final_hash_and_deleted(serve, tmp_path):
    art = serve()
    partial_path(tmp_path / "m").write_bytes(b"x" + BLOB[1:50_000])
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        fetch(art.url, tmp_path / "m", SHA, len(BLOB))
    assert leftovers(tmp_path) == []
    assert art.requests[0]["range"] == "bytes=50000-"


def test_unsatisfiable_range_restarts_once_then_refuses(serve, tmp_path):
    art = serve()
    claimed = len(BLOB) + 10  # the manifest says bigger than what the server has
    partial_path(tmp_path / "m").write_bytes(BLOB + b"\0" * 5)
    with pytest.raises(IntegrityError, match=f"server sends {len(BLOB)} bytes, expected {claimed}"):
        fetch(art.url, tmp_path / "m", SHA, claimed)
    assert [(r["range"], r["status"]) for r in art.requests] == [
        (f"bytes={len(BLOB) + 5}-", 416), (None, 200)]
    assert leftovers(tmp_path) == []


def test_a_partial_longer_than_the_artifact_is_discarded(serve, tmp_path):
    art = serve()
    partial_path(tmp_path / "m").write_bytes(BLOB + b"junk")
    fetch(art.url, tmp_path / "m", SHA, len(BLOB))
    assert (tmp_path / "m").read_bytes() == BLOB
    assert [r["range"] for r in art.requests] == [None]


# -- size unknown (size_bytes=None): the server's announced size, bounded by max_bytes ----------------

def test_unknown_size_downloads_and_resumes(serve, tmp_path):
    art = serve()
    art.cut_after_bytes = 30_000
    with pytest.raises(TransferError, match="after 30000 of 200000 bytes"):
        fetch(art.url, tmp_path / "g", SHA, None)
    totals: list[int] = []
    fetch(art.url, tmp_path / "g", SHA, None, progress=lambda _, total: totals.append(total))
    assert (tmp_path / "g").read_bytes() == BLOB and set(totals) == {len(BLOB)}
    assert [r["range"] for r in art.requests] == [None, "bytes=30000-"]


def test_unknown_size_with_a_complete_partial_is_verified_on_416(serve, tmp_path):
    art = serve()
    partial_path(tmp_path / "g").write_bytes(BLOB)
    fetch(art.url, tmp_path / "g", SHA, None)
    assert (tmp_path / "g").read_bytes() == BLOB and leftovers(tmp_path) == ["g"]
    assert [(r["range"], r["status"]) for r in art.requests] == [(f"bytes={len(BLOB)}-", 416)]


@pytest.mark.parametrize(("content_length", "message"), [
    (None, "server sends 200000 bytes, over the limit of 100000"),  # announced: refused unread
    ("", "server sent more than the limit of 100000 bytes"),  # not announced: stopped at the limit
])
def test_unknown_size_over_the_limit_is_too_large(serve, tmp_path, content_length, message):
    art = serve()
    art.content_length = content_length
    with pytest.raises(TooLarge, match=message):
        fetch(art.url, tmp_path / "g", SHA, None, max_bytes=100_000)
    assert leftovers(tmp_path) == []


# -- refusals ------------------------------------------------------------------------------------

def test_sha_mismatch_leaves_neither_dest_nor_partial(serve, tmp_path):
    art = serve()
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(IntegrityError) as caught:
        fetch(art.url, tmp_path / "m", wrong, len(BLOB))
    assert art.url in str(caught.value) and wrong in str(caught.value)
    assert leftovers(tmp_path) == []


def test_too_large_is_refused_before_any_request(serve, tmp_path):
    art = serve()
    with pytest.raises(TooLarge, match=f"{len(BLOB)} bytes, over the limit of 1000"):
        fetch(art.url, tmp_path / "m", SHA, len(BLOB), max_bytes=1000)
    assert art.requests == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize(("content_length", "message"), [
    (None, "server sends 200010 bytes, expected 200000"),  # declared up front: refused unread
    ("", "server sent more than the expected 200000 bytes"),  # no length: caught while streaming
])
def test_a_server_sending_more_than_expected_is_refused(serve, tmp_path, content_length, message):
    art = serve()
    art.extra, art.content_length = b"0123456789", content_length
    with pytest.raises(IntegrityError, match=message):
        fetch(art.url, tmp_path / "m", SHA, len(BLOB))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("status", "error_type"), [(404, DownloadError), (401, DownloadError),
                                                    (503, TransferError)])
def test_http_errors_carry_status_and_detail(serve, tmp_path, status, error_type):
    art = serve()
    art.error = (status, {"error": "not_found", "detail": "no artifact\nabc"})
    with pytest.raises(DownloadError) as caught:
        fetch(art.url, tmp_path / "m", SHA, len(BLOB))
    error = caught.value
    assert type(error) is error_type
    assert (error.status, error.detail, error.url) == (status, "no artifact\nabc", art.url)
    assert str(error).startswith(f"{art.url}: HTTP {status} ") and str(error).endswith(": no artifact abc")
    assert "\n" not in str(error)


# -- time limits, dead peers, full disks ----------------------------------------------------------

def test_deadline_exceeded_keeps_the_partial(serve, tmp_path):
    art = serve()
    art.throttle = (2048, 0.2)  # ~10 KB/s: 200 KB would take 20 s
    started = time.monotonic()
    with pytest.raises(TransferError, match="deadline exceeded"):
        fetch(art.url, tmp_path / "m", SHA, len(BLOB), deadline_seconds=1.0, timeout_seconds=2.0)
    # overrun by one read timeout at most: far below the 20 s of the whole file, whatever the load
    assert time.monotonic() - started < 10.0
    kept = partial_path(tmp_path / "m").read_bytes()
    assert 0 < len(kept) < len(BLOB) and kept == BLOB[:len(kept)]
    assert not (tmp_path / "m").exists()


def test_a_silent_server_times_out(serve, tmp_path):
    art = serve()
    art.stall_seconds = 60  # released when the test ends
    started = time.monotonic()
    with pytest.raises(TransferError, match="timed out"):
        fetch(art.url, tmp_path / "m", SHA, len(BLOB), timeout_seconds=0.3)
    assert time.monotonic() - started < 20.0  # gave up on its read timeout, not when the server spoke


def test_connection_refused_is_a_transfer_error(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransferError, match="cannot connect"):
        fetch(f"http://127.0.0.1:{port}/v1/artifacts/x", tmp_path / "m", SHA, len(BLOB), timeout_seconds=2)
    assert leftovers(tmp_path) == []


def test_disk_full_keeps_the_partial_and_a_later_fetch_resumes(serve, tmp_path, monkeypatch):
    art = serve()
    real_write = os.write
    writes = []

    def filling_write(fd: int, data: Any) -> int:
        if writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        writes.append(len(data))
        return real_write(fd, data)

    with monkeypatch.context() as patch:
        patch.setattr(download.os, "write", filling_write)
        with pytest.raises(DownloadError, match="disk full") as caught:
            fetch(art.url, tmp_path / "m", SHA, len(BLOB), chunk_bytes=4096)
    assert not isinstance(caught.value, (TransferError, IntegrityError))
    assert partial_path(tmp_path / "m").read_bytes() == BLOB[:writes[0]]

    fetch(art.url, tmp_path / "m", SHA, len(BLOB))
    assert (tmp_path / "m").read_bytes() == BLOB
    assert art.requests[-1]["range"] == f"bytes={writes[0]}-"


def test_sigkill_mid_download_then_a_fresh_fetch_resumes(serve, tmp_path):
    """Acceptance: kill -9 the downloading process; the next fetch continues from the partial."""
    blob = random.Random(1).randbytes(1_000_000)
    art = serve(blob)
    art.throttle = (4096, 0.02)  # ~200 KB/s: the whole file would take ~5 s
    dest = tmp_path / "m"
    script = ("import sys; from pathlib import Path; from edge_agent.download import fetch; "
              "fetch(sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), chunk_bytes=4096)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script, art.url, str(dest), art.sha256, str(len(blob))],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        give_up = time.monotonic() + 30
        while (not partial_path(dest).exists() or partial_path(dest).stat().st_size < 32_768):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < give_up, "the download never got going"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    killed_at = partial_path(dest).stat().st_size
    assert 0 < killed_at < len(blob) and not dest.exists()
    assert partial_path(dest).read_bytes() == blob[:killed_at]

    art.throttle = None
    fetch(art.url, dest, art.sha256, len(blob))
    assert dest.read_bytes() == blob and not partial_path(dest).exists()
    assert [r["range"] for r in art.requests] == [None, f"bytes={killed_at}-"]
    assert art.requests[-1]["status"] == 206 and art.requests[-1]["sent_bytes"] == len(blob) - killed_at


# -- against the real rollout server ----------------------------------------------------------------

@pytest.fixture
def rollout_server(tmp_path) -> Iterator[tuple[str, Any]]:
    dev_venv_only("flask")
    from werkzeug.serving import make_server

    from rollout_server.app import create_app
    from rollout_server.artifact_store import app_store

    app = create_app({"DATA_DIR": str(tmp_path / "server"), "CONTROLLER_ENABLED": False})
    app_store(app).put_stream(io.BytesIO(BLOB), SHA, len(BLOB), max_bytes=1 << 20)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_resume_and_auth_against_the_rollout_server(rollout_server, tmp_path):
    from rollout_server.auth import create_token
    from rollout_server.db import session_scope

    base, app = rollout_server
    with session_scope(app) as session:
        token = create_token(session, "agent-test", "viewer")
    url = f"{base}/v1/artifacts/{SHA}"
    with pytest.raises(DownloadError) as caught:
        fetch(url, tmp_path / "m", SHA, len(BLOB), headers={"Authorization": "Bearer nope"})
    assert caught.value.status == 401 and caught.value.detail

    partial_path(tmp_path / "m").write_bytes(BLOB[:123_456])
    seen: list[int] = []
    fetch(url, tmp_path / "m", SHA, len(BLOB), headers={"Authorization": f"Bearer {token}"},
          progress=lambda done, _: seen.append(done))
    assert (tmp_path / "m").read_bytes() == BLOB
    assert seen[0] > 123_456  # the first progress report already counts the resumed prefix
