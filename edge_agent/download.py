"""Resumable, verified artifact downloads over plain HTTP(S), stdlib only.

Bytes land in ``<dest>.part`` and become ``dest`` only once the size and the sha256 match, by an
atomic rename after fsync; a device that loses power or network mid-transfer resumes from the
partial with a ``Range`` request the next time.

Example:
    >>> path = fetch(f"{server}/v1/artifacts/{sha}", store.blob_path(sha), sha, size_bytes,
    ...              headers={"Authorization": f"Bearer {credential}"})

What to do about each error:

* :class:`TransferError`: network trouble, a timeout, the deadline, an HTTP 5xx, a certificate
  or pin that does not verify, a redirect refused; retry later, the partial is kept and the next
  call resumes from it.
* :class:`IntegrityError`: the server's bytes are not the artifact asked for (size or sha256);
  the partial is deleted. Report it rather than retrying in a tight loop.
* :class:`TooLarge`: the artifact exceeds ``max_bytes``; nothing was requested.
* :class:`DownloadError` itself: an HTTP 4xx (``status``, ``detail``) or a local problem such as
  a full disk (the partial is kept).

Requests go through a :class:`edge_agent.transport.Transport` (TLS verification and pinning, no
plain HTTP to other machines, redirects to another origin followed without ``Authorization``).
This module never imports anything beyond the standard library (and the agent's transport).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.transport import Transport, TransportRefused

log = logging.getLogger(__name__)

USER_AGENT = "edgeship-agent"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_BLOCK_BYTES = 1 << 20
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows would otherwise translate newlines


class DownloadError(Exception):
    """A download failed; ``status`` and ``detail`` are set for HTTP errors.

    Attributes:
        url: the URL that was fetched.
        status: the HTTP status, or None when no response was involved.
        detail: the server's JSON ``detail``, if it sent one.
    """

    def __init__(self, url: str, message: str, status: int | None = None, detail: str | None = None) -> None:
        super().__init__(f"{url}: {message}".replace("\n", " "))
        self.url = url
        self.status = status
        self.detail = detail


class IntegrityError(DownloadError):
    """The bytes are not the artifact asked for (size or sha256 mismatch); the artifact is refused."""


class TooLarge(DownloadError):
    """The artifact is larger than the caller allows; nothing was downloaded."""


class TransferError(DownloadError):
    """Network error, timeout, deadline or HTTP 5xx: retryable, and the partial is kept for resume."""


def partial_path(dest: Path) -> Path:
    """Where :func:`fetch` keeps the bytes received so far for ``dest``."""
    return dest.with_name(dest.name + ".part")


def file_sha256(path: Path, limit_bytes: int | None = None) -> str:
    """The sha256 (hex) of a file, or of its first ``limit_bytes`` bytes."""
    return _hash_file(path, limit_bytes).hexdigest()


def fsync_directory(directory: Path) -> None:
    """Make a rename or create inside ``directory`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself still happened
    finally:
        os.close(fd)


def fetch(url: str, dest: Path, sha256: str, size_bytes: int | None, headers: dict[str, str] | None = None,
          max_bytes: int = 512 * 2**20, timeout_seconds: float = 30.0, deadline_seconds: float = 600.0,
          chunk_bytes: int = 1 << 16, progress: Callable[[int, int], None] | None = None,
          transport: Transport | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial, and verify it.

    If ``dest`` already holds the right bytes, nothing is requested.

    Args:
        url: the artifact URL, e.g. ``https://server/v1/artifacts/<sha256>``.
        dest: final path; the partial is :func:`partial_path` of it, in the same directory.
        sha256: expected digest, 64 lowercase hex digits.
        size_bytes: expected size, or None when unknown: the server's announced size is then
            used, bounded by ``max_bytes``, and the sha256 alone vouches for the bytes.
        headers: extra request headers, e.g. ``Authorization``.
        max_bytes: refuse artifacts larger than this (before requesting, when the size is known).
        timeout_seconds: socket timeout for connecting and for each read.
        deadline_seconds: limit for the whole download (checked between reads, so it may be
            overrun by up to ``timeout_seconds``).
        chunk_bytes: largest read from the socket.
        progress: called as ``progress(received_bytes, total_bytes)`` after every chunk;
            ``total_bytes`` is 0 while unknown.
        transport: how to reach the server (the agent's, with its CA file and pins); default:
            the system CA store and the rules of :mod:`edge_agent.transport` for ``url``.

    Returns:
        ``dest``, complete, verified and durable.

    Raises:
        ValueError: ``sha256`` is not a digest or ``size_bytes`` is negative.
        TooLarge: the artifact is larger than ``max_bytes``.
        IntegrityError: the server's size or sha256 differ from those expected.
        TransferError: network error, timeout, deadline exceeded or HTTP 5xx.
        DownloadError: HTTP 4xx, or the disk is full.
    """
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    if size_bytes is not None and size_bytes < 0:
        raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
    if size_bytes is not None and size_bytes > max_bytes:
        raise TooLarge(url, f"artifact is {size_bytes} bytes, over the limit of {max_bytes}")
    if _verified(dest, sha256, size_bytes):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    transport = transport or Transport(url)
    job = _Job(url, partial_path(dest), sha256, size_bytes, max_bytes, time.monotonic() + deadline_seconds,
               chunk_bytes, progress)
    restarted = False
    while True:
        offset = _partial_bytes(job.partial)
        limit_bytes = max_bytes if size_bytes is None else size_bytes
        response = None
        if offset > limit_bytes:
            log.warning("%s holds %d bytes, more than the artifact's %d: discarding it",
                        job.partial, offset, limit_bytes)
        elif not (offset and offset == size_bytes):  # else complete already: nothing to ask for
            response = _open(transport, url, headers, offset, min(timeout_seconds, _remaining(job)))
            if response is None:
                log.info("%s: range bytes=%d- not satisfiable; checking the partial", url, offset)
        if response is None:  # complete, too long, or 416: the partial must verify as it is
            if offset and offset <= limit_bytes and _verified(job.partial, sha256, size_bytes):
                return _install(job.partial, dest)
            job.partial.unlink(missing_ok=True)
            if restarted:
                raise IntegrityError(url, "the partial neither verifies nor resumes, even after a restart")
            restarted = True
            continue
        with response:
            offset, total_bytes = _start_offset(job, response, offset)
            _receive(job, response, offset, total_bytes)
        return _install(job.partial, dest)


@dataclass(frozen=True)
class _Job:
    """One call's parameters, as the helpers below need them."""

    url: str
    partial: Path
    sha256: str
    size_bytes: int | None
    max_bytes: int
    deadline: float
    chunk_bytes: int
    progress: Callable[[int, int], None] | None


def _verified(path: Path, sha256: str, size_bytes: int | None) -> bool:
    """Whether ``path`` is a file of ``size_bytes`` (if known) whose contents hash to ``sha256``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    return (size_bytes is None or size == size_bytes) and file_sha256(path) == sha256


def _partial_bytes(partial: Path) -> int:
    try:
        return partial.stat().st_size
    except FileNotFoundError:
        return 0


def _remaining(job: _Job) -> float:
    remaining_seconds = job.deadline - time.monotonic()
    if remaining_seconds <= 0:
        raise TransferError(job.url, "download deadline exceeded (partial kept)")
    return remaining_seconds


def _open(transport: Transport, url: str, headers: dict[str, str] | None, offset: int,
          timeout_seconds: float) -> http.client.HTTPResponse | None:
    """The response to a GET from ``offset``; None for a 416. Errors become DownloadError subclasses."""
    request_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=request_headers)
    try:
        return transport.open(request, timeout=timeout_seconds)
    except urllib.error.HTTPError as err:
        with err:
            if err.code == 416:
                return None
            detail = _json_detail(err)
        message = f"HTTP {err.code} {err.reason}" + (f": {detail}" if detail else "")
        error = TransferError if err.code >= 500 else DownloadError
        raise error(url, message, status=err.code, detail=detail) from err
    except TransportRefused as err:
        raise TransferError(url, f"refused: {err.reason}") from err
    except urllib.error.URLError as err:
        raise TransferError(url, f"cannot connect: {err.reason}") from err
    except (OSError, http.client.HTTPException) as err:
        raise TransferError(url, f"request failed: {err!r}") from err


def _json_detail(err: urllib.error.HTTPError) -> str | None:
    """The ``detail`` of an ``{"error": ..., "detail": ...}`` body, if that is what came back."""
    try:
        body = json.loads(err.read(64 * 1024))
    except (OSError, ValueError, http.client.HTTPException):
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail) if detail is not None else None


def _start_offset(job: _Job, response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """``(where the body starts in the artifact, the artifact's size if known)``, headers checked."""
    status = response.status
    if status == 200:
        length = response.headers.get("Content-Length", "")
        start, total = 0, int(length) if length.isdigit() else None
        if offset:
            log.info("%s: server ignored Range bytes=%d-; restarting from 0", job.url, offset)
    elif status == 206:
        content_range = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.fullmatch(content_range.strip())
        if match is None:
            raise TransferError(job.url, f"206 with a malformed Content-Range {content_range!r}",
                                status=status)
        start, total = int(match[1]), None if match[3] == "*" else int(match[3])
    else:
        raise DownloadError(job.url, f"unexpected HTTP {status} {response.reason}", status=status)
    if total is not None and job.size_bytes is not None and total != job.size_bytes:
        job.partial.unlink(missing_ok=True)
        raise IntegrityError(job.url, f"server sends {total} bytes, expected {job.size_bytes}", status=status)
    if total is not None and total > job.max_bytes:
        job.partial.unlink(missing_ok=True)
        raise TooLarge(job.url, f"server sends {total} bytes, over the limit of {job.max_bytes}",
                       status=status)
    if start != (offset if status == 206 else 0):
        raise TransferError(job.url, f"asked for bytes={offset}-, server sent a range starting at {start}",
                            status=status)
    if start:
        log.info("%s: resuming at byte %d of %s", job.url, start, total or "?")
    return start, job.size_bytes if job.size_bytes is not None else total


def _receive(job: _Job, response: http.client.HTTPResponse, offset: int, total_bytes: int | None) -> None:
    """Stream the body into the partial (appending at ``offset``, or truncating when 0), then verify."""
    hasher = _hash_file(job.partial, offset) if offset else hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | _O_BINARY | (os.O_APPEND if offset else os.O_TRUNC)
    fd = os.open(job.partial, flags, 0o644)
    limit_bytes = job.max_bytes if total_bytes is None else total_bytes
    received_bytes = offset
    try:
        while True:
            if time.monotonic() > job.deadline:
                raise TransferError(job.url, f"download deadline exceeded after {received_bytes} of "
                                             f"{total_bytes or '?'} bytes (partial kept)")
            try:
                chunk = response.read1(job.chunk_bytes)
            except (OSError, http.client.HTTPException) as err:
                raise TransferError(job.url, f"transfer failed after {received_bytes} of "
                                             f"{total_bytes or '?'} bytes: {err!r} (partial kept)") from err
            if not chunk:
                break
            if received_bytes + len(chunk) > limit_bytes:
                _discard(fd, job.partial)
                fd = -1
                if total_bytes is None:
                    raise TooLarge(job.url, f"server sent more than the limit of {job.max_bytes} bytes")
                raise IntegrityError(job.url, f"server sent more than the expected {total_bytes} bytes")
            _write_all(job.url, fd, chunk)
            hasher.update(chunk)
            received_bytes += len(chunk)
            if job.progress is not None:
                job.progress(received_bytes, total_bytes or 0)
        if total_bytes is not None and received_bytes < total_bytes:
            raise TransferError(job.url, f"connection closed after {received_bytes} of {total_bytes} bytes "
                                         "(partial kept)")
        if hasher.hexdigest() != job.sha256:
            _discard(fd, job.partial)
            fd = -1
            raise IntegrityError(job.url, f"sha256 mismatch: got {hasher.hexdigest()}, expected {job.sha256}")
        os.fsync(fd)
    finally:
        if fd >= 0:
            os.close(fd)


def _write_all(url: str, fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DownloadError(url, "disk full while writing the download (partial kept)") from err
        raise DownloadError(url, f"cannot write the download: {err}") from err


def _discard(fd: int, partial: Path) -> None:
    os.close(fd)
    partial.unlink(missing_ok=True)


def _install(partial: Path, dest: Path) -> Path:
    """Atomically move the verified partial to ``dest`` and make the rename durable."""
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, dest)
    fsync_directory(dest.parent)
    return dest


def _hash_file(path: Path, limit_bytes: int | None = None) -> hashlib._Hash:
    hasher = hashlib.sha256()
    left = limit_bytes
    with open(path, "rb") as file:
        while left is None or left > 0:
            block = file.read(_HASH_BLOCK_BYTES if left is None else min(left, _HASH_BLOCK_BYTES))
            if not block:
                break
            hasher.update(block)
            if left is not None:
                left -= len(block)
    return hasher
