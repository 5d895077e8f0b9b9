"""Which artifacts a device credential may download: those of the releases it was assigned.

Rule (docs/protocol.md §5.1): an artifact is served to a device only if it is a variant or the
golden file of a release the server assigned that device, now or before, as its release or as
its shadow candidate. A device thus never fetches another model's files, nor a candidate its
rollout has not reached yet; a rollback to a release it ran before still works. Anything else
answers 404, as if the artifact did not exist. Operator tokens download anything.

Cheap on the hot path: the assignment route records a (device, release) pair once (a set per
process remembers what it wrote; the ``INSERT`` ignores a pair another process wrote), and a
download reads the device's few release ids with one indexed query; the releases' digests come
from the per-process release cache. Like ``last_seen_at``, the write waits only briefly for a
lock (a poll is answered while the database is locked): a pair it could not write is kept in this
process's memory, counts for downloads served by this process, and is written at the next poll.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask
from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from rollout_server.assignment import ReleaseInfo
from rollout_server.hot_cache import HotCache, short_lock_wait
from rollout_server.models import DeviceRelease, utcnow

log = logging.getLogger(__name__)
EXTENSION = "edgeship.device_access"
MAX_REMEMBERED = 262_144
_table = DeviceRelease.__table__
RELEASES_OF_DEVICE = select(_table.c.release_id).where(_table.c.device_id == bindparam("device_id"))


def release_digests(release: ReleaseInfo) -> frozenset[str]:
    """Every artifact of a release: its variants' files and its golden set."""
    golden = (release.manifest.get("golden") or {}).get("sha256")
    return frozenset({v.sha256 for v in release.variants} | ({golden} if golden else set()))


class DeviceAccess:
    """Records assignments and answers whether a device may download an artifact."""

    def __init__(self, engine: Engine, cache: HotCache) -> None:
        self._engine = engine
        self._cache = cache
        self._recorded: set[tuple[str, int]] = set()
        self._unwritten: set[tuple[str, int]] = set()  # assigned, not yet in the database
        self._lock = threading.Lock()
        dialect = sqlite if engine.dialect.name == "sqlite" else postgresql
        self._insert = dialect.insert(_table).on_conflict_do_nothing()

    def record(self, device_id: str, release_ids: tuple[int, ...]) -> None:
        """Note that ``device_id`` was assigned these releases (a write only the first time)."""
        new = [r for r in release_ids if (device_id, r) not in self._recorded]
        if not new:
            return
        now = utcnow()
        pairs = {(device_id, r) for r in new}
        try:
            with self._engine.begin() as connection, short_lock_wait(connection):
                connection.execute(self._insert, [
                    {"device_id": device_id, "release_id": r, "assigned_at": now} for r in new])
        except OperationalError as err:  # locked: the poll is answered all the same
            log.warning("assigned releases of device %s not written yet: %s", device_id, err.orig)
            with self._lock:
                if len(self._unwritten) >= MAX_REMEMBERED:
                    self._unwritten.clear()
                self._unwritten.update(pairs)
            return
        with self._lock:
            if len(self._recorded) >= MAX_REMEMBERED:
                self._recorded.clear()
            self._recorded.update(pairs)
            self._unwritten -= pairs

    def may_download(self, device_id: str, sha256: str) -> bool:
        """Whether ``sha256`` belongs to a release this device was assigned."""
        with self._engine.connect() as connection:
            release_ids = set(connection.scalars(RELEASES_OF_DEVICE, {"device_id": device_id}))
        release_ids |= {r for d, r in tuple(self._unwritten) if d == device_id}
        return any(sha256 in release_digests(self._cache.release(r)) for r in release_ids)


def init_app(app: Flask, cache: HotCache) -> DeviceAccess:
    access = DeviceAccess(app.extensions["edgeship.engine"], cache)
    app.extensions[EXTENSION] = access
    return access


def of(app: Flask) -> DeviceAccess:
    """The app's :class:`DeviceAccess` (created on first use)."""
    access = app.extensions.get(EXTENSION)
    if access is None:
        from rollout_server import hot_cache

        access = init_app(app, hot_cache.of(app))
    return access
