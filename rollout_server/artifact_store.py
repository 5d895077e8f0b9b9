"""Content-addressed artifact store: ``DATA_DIR/artifacts/<sha256[:2]>/<sha256>``.

A file only ever appears under its final name whole and checked: bytes are streamed into a
temporary file on the same file system while their sha256 and size are counted, checked
against what the caller expects, and then moved into place with :func:`os.replace` (atomic).
A crash mid-write leaves at most a ``.part`` temporary, never a half-written artifact.

Uploads of a whole release go through :meth:`ArtifactStore.staging`: every file is written and
checked first, and only when all of them (and the database rows) are good does
:meth:`Staging.commit` move them into the store; otherwise the staged files are deleted.

Example:
    >>> store = ArtifactStore("/tmp/edgeship/artifacts")
    >>> path = store.put_stream(open("model.onnx", "rb"), sha, size, max_bytes=2**31)
    >>> store.has(sha)
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from flask import Flask

SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")
CHUNK = 1024 * 1024
TMP_DIR = ".tmp"


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
        """True if the artifact is stored (False for anything that is not a digest)."""
        return is_sha256(sha256) and self.path_for(sha256).is_file()

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
        staging = Staging(self, Path(tempfile.mkdtemp(prefix="upload-", dir=tmp_root)))
        try:
            yield staging
        finally:
            shutil.rmtree(staging.directory, ignore_errors=True)

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


def app_store(app: Flask) -> ArtifactStore:
    """The app's store under ``DATA_DIR/artifacts`` (made once, kept in ``app.extensions``)."""
    store = app.extensions.get("edgeship.artifacts")
    if store is None:
        store = ArtifactStore(Path(app.config["DATA_DIR"]) / "artifacts")
        app.extensions["edgeship.artifacts"] = store
    return store
