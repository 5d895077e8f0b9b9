"""Content-addressed artifact store: ``DATA_DIR/artifacts/<sha256[:2]>/<sha256>``.

A file only ever appears under its final name whole and checked: bytes are streamed into a
temporary file on the same file system while their sha256 and size are counted, checked
against what the caller expects, and then moved into place with :func:`os.replace` (atomic).
A crash mid-write leaves at most a ``.part`` temporary, never a half-written artifact.

Uploads of a whole release go through :meth:`ArtifactStore.staging`: every file is written and
checked first, and only when all of them (and the database rows) are good does
:meth:`Staging.commit` move them into the store; otherwise the staged files are deleted.

A crash (kill -9, power loss) skips that deletion. Each staging directory is therefore held by
an ``flock`` on its ``.lock`` file while in use (the kernel drops it when the process dies), and
:meth:`ArtifactStore.clean_leftovers`, run at every start, deletes the ones nobody holds, and
``.part`` temporaries older than :data:`STALE_SECONDS`, without touching another worker's or
replica's upload in progress.

Faults of the file system (read-only, full, the directory replaced) surface as OSError, which
the API answers with 503 ``storage_unavailable`` (:mod:`rollout_server.errors`).

Example:
    >>> store = ArtifactStore("/tmp/edgeship/artifacts")
    >>> path = store.put_stream(open("model.onnx", "rb"), sha, size, max_bytes=2**31)
    >>> store.has(sha)
    True
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from flask import Flask

SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")
CHUNK = 1024 * 1024
TMP_DIR = ".tmp"
LOCK_FILE = ".lock"
#: a leftover nobody can be shown to hold (no lock file, a ``.part``) is deleted this old.
STALE_SECONDS = 3600


class StoreError(ValueError):
    """A stream that does not match what was expected (sha256, size, limit).

    Attributes:
        reason: ``digest_mismatch``, ``size_mismatch`` or ``too_large``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_sha256(value: object) -> bool:
    """True for 64 lowercase hex digits (the only names the store knows)."""
    return isinstance(value, str) and bool(SHA256_HEX.match(value))


class ArtifactStore:
    """Files named by their sha256 under ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Where the file with this digest lives (whether or not it exists).

        Raises:
            ValueError: ``sha256`` is not 64 lowercase hex digits (no path can be built from it).
        """
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        """True if the artifact is stored (False for anything that is not a digest).

        Raises:
            FileNotFoundError: the store's directory itself is gone (or not a directory): a
                storage fault, not a missing artifact (a device told 404 gives the release up).
        """
        if not is_sha256(sha256):
            return False
        if self.path_for(sha256).is_file():
            return True
        if not self.root.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the artifact store's directory is missing", str(self.root))
        return False

    def put_stream(self, stream: BinaryIO, expected_sha256: str, expected_size: int | None,
                   max_bytes: int) -> Path:
        """Store ``stream`` under ``expected_sha256`` if its bytes match.

        Args:
            stream: a binary file object, read to its end in chunks.
            expected_sha256: the digest the bytes must have.
            expected_size: the byte count they must have, or None to skip that check.
            max_bytes: refuse (and stop reading) beyond this many bytes.

        Returns:
            The stored file's path.

        Raises:
            StoreError: digest or size mismatch, or more than ``max_bytes``; nothing is stored.
        """
        final = self.path_for(expected_sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = write_checked(stream, final.parent, expected_sha256, expected_size, max_bytes)
        os.replace(temp, final)
        return final

    @contextlib.contextmanager
    def staging(self) -> Iterator[Staging]:
        """A scratch area for one upload; whatever is not committed is deleted on exit."""
        tmp_root = self.root / TMP_DIR
        tmp_root.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="upload-", dir=tmp_root))
        lock = _hold(directory / LOCK_FILE)
        try:
            yield Staging(self, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            lock.close()

    def clean_leftovers(self, stale_seconds: float = STALE_SECONDS) -> int:
        """Delete what crashed uploads left: staging directories no process holds, and
        temporaries older than ``stale_seconds``. Returns how many entries were deleted."""
        removed = 0
        now = time.time()
        tmp_root = self.root / TMP_DIR
        for entry in tmp_root.iterdir() if tmp_root.is_dir() else ():
            if entry.is_dir() and not entry.is_symlink():
                try:
                    lock = _hold(entry / LOCK_FILE, create=False, wait=False)
                except BlockingIOError:  # an upload in progress in another process
                    continue
                except FileNotFoundError:  # made by a crash before its lock, or by an old version
                    lock = None
                    if now - entry.stat().st_mtime < stale_seconds:
                        continue
                shutil.rmtree(entry, ignore_errors=True)
                if lock is not None:
                    lock.close()
                removed += 1
            elif now - entry.lstat().st_mtime >= stale_seconds:
                entry.unlink(missing_ok=True)
                removed += 1
        parts = [*self.root.glob(".*.part"), *self.root.glob("[0-9a-f][0-9a-f]/.*.part")]
        for part in parts:  # put_stream's temporaries, /readyz's probes
            if now - part.lstat().st_mtime >= stale_seconds:
                part.unlink(missing_ok=True)
                removed += 1
        return removed

    def count_files(self) -> int:
        """How many files the store holds, temporaries included (tests: nothing half-stored)."""
        return sum(1 for p in self.root.rglob("*") if p.is_file())


class Staging:
    """Checked files waiting to enter the store together (see :meth:`ArtifactStore.staging`)."""

    def __init__(self, store: ArtifactStore, directory: Path) -> None:
        self.store = store
        self.directory = directory
        self.staged: dict[str, Path] = {}

    def add(self, stream: BinaryIO, expected_sha256: str, expected_size: int | None,
            max_bytes: int) -> None:
        """Write and check one file (see :meth:`ArtifactStore.put_stream` for the checks)."""
        if not is_sha256(expected_sha256):
            raise ValueError(f"not a sha256 hex digest: {expected_sha256!r}")
        temp = write_checked(stream, self.directory, expected_sha256, expected_size, max_bytes)
        if expected_sha256 in self.staged:
            temp.unlink()
        else:
            self.staged[expected_sha256] = temp

    def new_digests(self) -> list[str]:
        """Staged digests the store does not hold yet."""
        return [sha for sha in self.staged if not self.store.has(sha)]

    def commit(self) -> list[str]:
        """Move every staged file into the store (atomic per file); returns the new digests."""
        added = []
        for sha, temp in self.staged.items():
            final = self.store.path_for(sha)
            if final.is_file():
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, final)
            added.append(sha)
        self.staged.clear()
        return added


def write_checked(stream: BinaryIO, directory: Path, expected_sha256: str, expected_size: int | None,
                  max_bytes: int) -> Path:
    """Copy ``stream`` to a new temporary file in ``directory`` and check it.

    Returns:
        The temporary file (the caller moves it into place).

    Raises:
        StoreError: the bytes do not match; the temporary file is already deleted.
    """
    fd, name = tempfile.mkstemp(prefix=".", suffix=".part", dir=directory)
    temp = Path(name)
    try:
        digest, size = _copy_hashing(stream, fd, max_bytes)
        if expected_size is not None and size != expected_size:
            raise StoreError("size_mismatch", f"has {size} bytes, the manifest says {expected_size}")
        if digest != expected_sha256:
            raise StoreError("digest_mismatch",
                             f"sha256 is {digest}, the manifest says {expected_sha256}")
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _copy_hashing(stream: BinaryIO, fd: int, max_bytes: int) -> tuple[str, int]:
    """Write ``stream`` to ``fd`` (closing it, after fsync); return its sha256 and size."""
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise StoreError("too_large", f"is larger than the limit of {max_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def _hold(path: Path, create: bool = True, wait: bool = True):
    """``path`` opened and ``flock``-ed exclusively (released when the file is closed or the
    process dies). Raises BlockingIOError if ``wait`` is False and another process holds it."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    handle = os.fdopen(fd, "r+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        handle.close()
        raise
    return handle


def app_store(app: Flask) -> ArtifactStore:
    """The app's store under ``DATA_DIR/artifacts`` (made once, kept in ``app.extensions``)."""
    store = app.extensions.get("edgeship.artifacts")
    if store is None:
        store = ArtifactStore(Path(app.config["DATA_DIR"]) / "artifacts")
        app.extensions["edgeship.artifacts"] = store
    return store
