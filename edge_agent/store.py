"""The on-device model store: content-addressed blobs plus which entry is current and last good.

Layout under ``root``::

    blobs/<sha256>          model artifacts, golden sets, manifests (content-addressed)
    blobs/<sha256>.part     an in-flight download (see :mod:`edge_agent.download`)
    state.json              {"current": <entry> | null, "last_good": <entry> | null}
    state.json.prev         the state before the last write, the fallback if state.json is corrupt

An *entry* is a JSON dict the agent defines; the store only reads its ``"blobs"`` mapping of
role to sha256, which must name at least the ``"model"``, e.g.
``{"blobs": {"model": sha, "golden": sha, "manifest": sha}, "version": "3", ...}``.

Example:
    >>> store = ModelStore(Path("/var/lib/edgeship"))
    >>> for entry in store.startup():          # current, then last good, each verified
    ...     if load_and_check(entry):
    ...         break
    >>> fetch(url, store.blob_path(sha), sha, size_bytes)   # download new blobs into the store
    >>> store.promote(new_entry)               # new current; the old one becomes last good

Every write is temp file + fsync + ``os.replace`` + directory fsync, so a crash or power loss at
any point leaves either the old or the new state readable. The store is meant for one agent
process; it takes no locks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from edge_agent.download import file_sha256, fsync_directory, partial_path

log = logging.getLogger(__name__)

Entry = dict[str, Any]

#: in-flight ``*.part`` downloads and temp files younger than this survive garbage collection.
STALE_PARTIAL_SECONDS = 24 * 3600

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEMP_SUFFIX = ".tmp"


class ModelStore:
    """Blobs on disk and the current / last-good entries, with crash-safe writes.

    Args:
        root: the store's directory (created if missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.state_path = self.root / "state.json"
        self.prev_state_path = self.root / "state.json.prev"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)

    # -- blobs ------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists).

        Raises:
            ValueError: ``sha256`` is not 64 lowercase hex digits.
        """
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ValueError(f"a blob is named by its sha256 (64 lowercase hex digits), got {sha256!r}")
        return self.blobs_dir / sha256

    def partial_path(self, sha256: str) -> Path:
        """Where :func:`edge_agent.download.fetch` keeps a partial download of this blob."""
        return partial_path(self.blob_path(sha256))

    def has_blob(self, sha256: str, size_bytes: int | None = None) -> bool:
        """Cheap check: the blob exists (and has ``size_bytes``, if given); contents not hashed."""
        try:
            size = self.blob_path(sha256).stat().st_size
        except FileNotFoundError:
            return False
        return size_bytes is None or size == size_bytes

    def verify_blob(self, sha256: str) -> bool:
        """Whether the blob exists and its contents hash to its name (reads the whole file)."""
        path = self.blob_path(sha256)
        try:
            return file_sha256(path) == sha256
        except FileNotFoundError:
            return False

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` as a blob (atomically) and return its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        if not (self.has_blob(sha256, len(data)) and self.verify_blob(sha256)):
            _atomic_write(self.blob_path(sha256), data)
        return sha256

    def disk_free_bytes(self) -> int:
        """Free bytes on the filesystem holding the store."""
        return shutil.disk_usage(self.root).free

    # -- state ------------------------------------------------------------------------------

    def state(self) -> tuple[Entry | None, Entry | None]:
        """The ``(current, last_good)`` entries; ``(None, None)`` on a fresh store.

        A corrupt ``state.json`` is moved aside to ``state.json.corrupt-<timestamp>`` with a
        warning; the previous state (``state.json.prev``) is then restored and returned if it is
        readable, else ``(None, None)``.
        """
        try:
            loaded = _load_state(self.state_path)
        except ValueError as err:
            aside = self._move_aside(self.state_path)
            log.warning("%s is corrupt (%s); moved it to %s", self.state_path, err, aside.name)
            loaded = None
        if loaded is not None:
            return loaded
        try:
            previous = _load_state(self.prev_state_path)
        except ValueError as err:
            log.warning("%s is corrupt (%s); starting with no model", self.prev_state_path, err)
            return None, None
        if previous is None:
            return None, None
        log.warning("using the previous state from %s", self.prev_state_path.name)
        try:
            _atomic_write(self.state_path, self.prev_state_path.read_bytes())
        except OSError as err:  # e.g. disk full: the state is still right, the next read retries
            log.warning("could not restore %s: %s", self.state_path, err)
        return previous

    def usable(self, entry: Entry) -> bool:
        """Whether every blob of ``entry`` exists and hashes to its name."""
        return not self._bad_blobs(entry, {})

    def startup(self) -> list[Entry]:
        """The entries to try at start, best first: current, then last good, each if usable.

        An entry with a missing or corrupt blob is skipped with a warning saying which blob and
        why; corrupt blobs are deleted so that they are downloaded again.
        """
        current, last_good = self.state()
        verified: dict[str, bool] = {}
        chosen: list[Entry] = []
        for label, entry in (("current", current), ("last_good", last_good)):
            if entry is None:
                log.info("store: no %s entry", label)
                continue
            if any(entry["blobs"] == other["blobs"] for other in chosen):
                continue  # last_good is the very same model as current
            bad = self._bad_blobs(entry, verified)
            if bad:
                reasons = ", ".join(f"{role} {sha[:12]} {why}" for role, (sha, why) in bad.items())
                log.warning("store: skipping %s entry (model %s): %s", label, entry["blobs"]["model"][:12],
                            reasons)
                for sha, why in bad.values():
                    if why == "corrupt":
                        self.blob_path(sha).unlink(missing_ok=True)
                continue
            log.info("store: %s entry (model %s) verified", label, entry["blobs"]["model"][:12])
            chosen.append(entry)
        return chosen

    def promote(self, entry: Entry, *, current_was_good: bool = True, keep: Collection[str] = ()) -> None:
        """Make ``entry`` current; the previous current becomes last good. Then collect garbage.

        The previous current does not replace last good when it is the same model as ``entry``
        (same ``blobs["model"]``), or when ``current_was_good`` is False: pass False when rolling
        back from a current that failed, so the failed model never becomes the fallback.

        Garbage collection deletes every blob that neither entry references, including blobs
        downloaded for something not promoted yet: pass those (e.g. a shadow model's) in ``keep``.

        Args:
            entry: the new current entry; every blob it names must be in the store.
            current_was_good: whether the outgoing current has proven good.
            keep: sha256s of further blobs to keep.

        Raises:
            ValueError: ``entry`` is malformed or names a blob the store does not have.
        """
        _check_entry(entry)
        missing = [role for role, sha in entry["blobs"].items() if not self.has_blob(sha)]
        if missing:
            raise ValueError(f"cannot promote: blobs {', '.join(missing)} are not in the store")
        current, last_good = self.state()
        if current is not None and current_was_good and current["blobs"]["model"] != entry["blobs"]["model"]:
            last_good = current
        self._write_state(entry, last_good)
        log.info("store: promoted model %s (last good: %s)", entry["blobs"]["model"][:12],
                 last_good["blobs"]["model"][:12] if last_good else None)
        self.collect_garbage(keep=keep)

    def collect_garbage(self, keep: Collection[str] = (), now_seconds: float | None = None) -> list[str]:
        """Delete blobs referenced by neither current nor last good; returns the names removed.

        ``*.part`` downloads and temp files are kept until they are :data:`STALE_PARTIAL_SECONDS`
        old; files whose names are not blob names are left alone.

        Args:
            keep: sha256s of further blobs to keep (downloaded, not promoted yet).
            now_seconds: the current time (for tests).
        """
        now_seconds = time.time() if now_seconds is None else now_seconds
        entries = [entry for entry in self.state() if entry is not None]
        keep = set(keep) | {sha for entry in entries for sha in entry["blobs"].values()}
        removed = []
        for path in sorted(self.blobs_dir.iterdir()):
            name = path.name
            try:
                if name.endswith((".part", _TEMP_SUFFIX)):
                    if now_seconds - path.stat().st_mtime < STALE_PARTIAL_SECONDS:
                        continue
                elif name in keep or not _SHA256.fullmatch(name):
                    continue
                path.unlink()
            except OSError as err:  # one stuck file must not fail a promote that already happened
                log.warning("store: cannot remove %s: %s", path, err)
                continue
            removed.append(name)
        if removed:
            fsync_directory(self.blobs_dir)
            log.info("store: removed %d unreferenced files: %s", len(removed), ", ".join(removed))
        return removed

    # -- internals --------------------------------------------------------------------------

    def _bad_blobs(self, entry: Entry, verified: dict[str, bool]) -> dict[str, tuple[str, str]]:
        """``{role: (sha, "missing" | "corrupt")}`` for the blobs of ``entry`` that fail."""
        bad = {}
        for role, sha in entry["blobs"].items():
            if not self.has_blob(sha):
                bad[role] = (sha, "missing")
                continue
            if sha not in verified:
                verified[sha] = self.verify_blob(sha)
            if not verified[sha]:
                bad[role] = (sha, "corrupt")
        return bad

    def _write_state(self, current: Entry | None, last_good: Entry | None) -> None:
        """Keep the readable old state as ``state.json.prev``, then replace ``state.json``."""
        data = json.dumps({"current": current, "last_good": last_good}, indent=2, sort_keys=True).encode()
        try:
            if _load_state(self.state_path) is not None:
                _atomic_write(self.prev_state_path, self.state_path.read_bytes())
        except ValueError:
            pass  # never overwrite a good .prev with a corrupt state
        _atomic_write(self.state_path, data + b"\n")

    def _move_aside(self, path: Path) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        counter = 1
        while aside.exists():
            aside = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
            counter += 1
        os.replace(path, aside)
        fsync_directory(path.parent)
        return aside


def _check_entry(entry: Any) -> None:
    """Raise ValueError unless ``entry`` is a dict with ``blobs``: {role: sha256}, including ``model``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("blobs"), dict):
        raise ValueError(f"an entry is a dict with a 'blobs' mapping, got {entry!r}")
    blobs = entry["blobs"]
    if "model" not in blobs:
        raise ValueError(f"an entry's blobs must include 'model', got roles {sorted(blobs)}")
    for role, sha in blobs.items():
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise ValueError(f"blob {role!r} is not a sha256: {sha!r}")


def _load_state(path: Path) -> tuple[Entry | None, Entry | None] | None:
    """The state in ``path``; None if the file does not exist.

    Raises:
        ValueError: the file is unreadable, not JSON or not shaped like a state.
    """
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ValueError(f"unreadable: {err}") from err
    if not isinstance(data, dict) or not {"current", "last_good"} <= data.keys():
        raise ValueError("not a {current, last_good} object")
    for key in ("current", "last_good"):
        if data[key] is not None:
            _check_entry(data[key])
    return data["current"], data["last_good"]


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new contents."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
