"""Per-process cache of what the assignment hot path reads, so a poll needs no database read.

One :class:`HotCache` per app (``hot_cache.of(app)``), filled on demand:

* devices by credential hash (their current one, or the previous one during a rotation's grace):
  a :class:`DeviceSnapshot` (id, class, RAM, runtimes, attributes, revoked, admission, credential
  age);
* models by name: a :class:`ModelState` (id, stable release id and the active rollout as a
  :class:`RolloutSnapshot`), read together in one query;
* releases by id (immutable once published), the variant each kind of device gets from a release,
  and assignment documents (JSON bytes and ETag) by everything they depend on.

How stale it may be (``ASSIGNMENT_CACHE_SECONDS``, the TTL, default 1 s; 0 turns the device and
model caches off, every poll then reads the database):

* **This process sees its own writes at once.** Every commit that changed a model or a rollout
  through the ORM (set stable, rollout create / pause / resume / promote / abort, controller
  decisions) empties the model cache; one that changed a device (revocation) empties the device
  cache. The commit hooks are on the app's ``sessionmaker``, so every write path is covered.
  Writes that bypass the ORM (a credential rotation, retiring the previous credential) bump
  ``device_changes`` themselves (:func:`note_device_change`).
* **Other workers and replicas converge within the TTL.** A model entry (stable release, active
  rollout, its share) is read again once older than the TTL.
* **A revoked credential is refused everywhere within the TTL.** Devices poll every few minutes,
  much longer than any useful TTL, so device entries do not expire by age; instead every ORM
  change to a device row adds one to the ``device_changes`` counter in the same transaction, each
  process reads that counter at most once per TTL, and drops its devices when it moved. Device
  rows edited outside the server (plain SQL) are seen within :data:`DEVICE_MAX_AGE_SECONDS`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from flask import Flask
from sqlalchemy import and_, bindparam, event, func, or_, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from rollout_server.analysis import Phase, RolloutState
from rollout_server.assignment import ReleaseInfo, VariantInfo, choose_variant
from rollout_server.counters import DEVICE_CHANGES
from rollout_server.models import Counter, Device, Model, Release, Rollout
from rollout_server.targeting import Condition, parse_target

log = logging.getLogger(__name__)

EXTENSION = "edgeship.hot_cache"
#: ``devices.last_seen_at`` is written at most once per this many seconds per device and process.
LAST_SEEN_RESOLUTION_SECONDS = 60
#: a device entry is read again after this long even if ``device_changes`` did not move.
DEVICE_MAX_AGE_SECONDS = 300.0
MAX_DEVICES = 65_536
MAX_MODELS = 1_024
MAX_RELEASES = 512
MAX_DOCUMENTS = 4_096

_devices, _models, _rollouts, _counters = (Device.__table__, Model.__table__, Rollout.__table__,
                                           Counter.__table__)
_DEVICE_COLUMNS = (
    _devices.c.id, _devices.c.device_class, _devices.c.ram_bytes, _devices.c.runtimes, _devices.c.attributes,
    _devices.c.revoked, _devices.c.last_seen_at, _devices.c.admission,
    _devices.c.previous_credential_hash.is_not(None).label("has_previous"),
    _devices.c.previous_credential_expires_at,
    func.coalesce(_devices.c.credential_issued_at, _devices.c.created_at).label("credential_issued_at"),
)
DEVICE_BY_CREDENTIAL = select(*_DEVICE_COLUMNS).where(
    _devices.c.credential_hash == bindparam("credential_hash"))
#: a credential rotated away from, still accepted until the new one is used (docs/protocol.md §2.3)
DEVICE_BY_PREVIOUS_CREDENTIAL = select(*_DEVICE_COLUMNS).where(
    _devices.c.previous_credential_hash == bindparam("credential_hash"))
RETIRE_PREVIOUS_CREDENTIAL = (
    update(_devices)
    .where(_devices.c.id == bindparam("device_id"), _devices.c.previous_credential_hash.is_not(None))
    .values(previous_credential_hash=None, previous_credential_expires_at=None)
)
MODEL_STATE = (
    select(_models.c.id, _models.c.stable_release_id, _rollouts.c.id.label("rollout_id"), _rollouts.c.salt,
           _rollouts.c.candidate_id, _rollouts.c.baseline_id, _rollouts.c.state, _rollouts.c.spec)
    .select_from(_models.outerjoin(_rollouts, and_(_rollouts.c.model_id == _models.c.id,
                                                   _rollouts.c.phase.in_([p.value for p in Phase.active()]))))
    .where(_models.c.name == bindparam("name"))
    .order_by(_rollouts.c.id.desc())
    .limit(1)
)
ROLLOUT_RECORD = select(
    _rollouts.c.id, _rollouts.c.model_id, _rollouts.c.candidate_id, _rollouts.c.baseline_id, _rollouts.c.salt,
    _rollouts.c.state, _rollouts.c.spec,
).where(_rollouts.c.id == bindparam("rollout_id"))
DEVICE_CHANGES_VALUE = select(_counters.c.value).where(_counters.c.name == DEVICE_CHANGES)
BUMP_DEVICE_CHANGES = (update(_counters).where(_counters.c.name == DEVICE_CHANGES)
                       .values(value=_counters.c.value + 1))
TOUCH_DEVICE = (
    update(_devices)
    .where(_devices.c.id == bindparam("device_id"),
           or_(_devices.c.last_seen_at.is_(None), _devices.c.last_seen_at < bindparam("cutoff")))
    .values(last_seen_at=bindparam("seen_at"))
)
_MISSING = object()


def load_release(session: Session, release_id: int) -> ReleaseInfo:
    """The release's assignment data (:class:`~rollout_server.assignment.ReleaseInfo`), read
    from the database: its variants, with the p50 latency its signed manifest records."""
    release = session.get(Release, release_id)
    entries = {e["id"]: e for e in release.manifest.get("variants", [])}

    def p50(variant_id: str) -> float:
        value = (entries.get(variant_id, {}).get("metrics") or {}).get("latency_ms", {}).get("p50")
        return float(value) if value is not None else float("inf")

    variants = tuple(
        VariantInfo(v.variant_id, v.runtime, v.runtime_min_version or "", v.validation, v.sha256,
                    v.size_bytes, v.peak_rss_bytes or 0, p50(v.variant_id), entries.get(v.variant_id, {}))
        for v in release.variants
    )
    return ReleaseInfo(release.id, release.version, release.manifest, variants)


_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """A device as authentication and assignment need it (not an ORM object: no session)."""

    id: str
    device_class: str
    ram_bytes: int
    runtimes: dict[str, str]  # shared by devices that report the same runtimes: never mutate
    revoked: bool
    last_seen: float | None  # ``last_seen_at`` as read, seconds since the epoch
    capabilities: tuple  # (runtimes, RAM): what the variant choice depends on
    admission: str = "accepted"  # pending, accepted or rejected
    #: the request's credential is the one the device rotated away from (accepted until
    #: ``previous_expires``, seconds since the epoch, unless the new one was used since)
    by_previous: bool = False
    previous_expires: float | None = None
    has_previous: bool = False  # the device's previous credential is still accepted
    credential_issued: float | None = None  # seconds since the epoch
    #: what it claims of itself for targeting (rollout_server/targeting.py): never mutate
    attributes: Mapping[str, str] = field(default_factory=lambda: _NO_ATTRIBUTES)

    @classmethod
    def from_row(cls, row: Any, runtimes: dict[str, str], capabilities: tuple,
                 by_previous: bool = False) -> DeviceSnapshot:
        seen, expires, issued = (_epoch(row.last_seen_at), _epoch(row.previous_credential_expires_at),
                                 _epoch(row.credential_issued_at))
        return cls(row.id, row.device_class, row.ram_bytes, runtimes, bool(row.revoked), seen, capabilities,
                   row.admission, by_previous, expires, bool(row.has_previous), issued,
                   MappingProxyType(dict(row.attributes or {})))


def _epoch(value: dt.datetime | None) -> float | None:
    if value is not None and value.tzinfo is None:  # SQLite keeps no time zone; it is UTC
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp() if value is not None else None


@dataclass(frozen=True, slots=True)
class RolloutSnapshot:
    """What assignment needs of an active rollout."""

    id: int
    salt: str
    candidate_id: int
    baseline_id: int
    canary_percent: float
    stratify: bool
    shadow: bool
    shadow_share: float
    target: tuple[Condition, ...] = ()  # who may be in it (rollout_server/targeting.py)


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """What report checks need of any rollout, active or ended: its model, its two releases
    and the share and salt its bucketing uses now."""

    id: int
    model_id: int
    candidate_id: int
    baseline_id: int
    salt: str
    canary_percent: float
    stratify: bool
    target: tuple[Condition, ...] = ()

    @classmethod
    def from_row(cls, row: Any) -> RolloutRecord:
        state = RolloutState.from_dict(row.state)
        # the highest share it reached: buckets only grow, and late reports of a rolled-back
        # canary are still the canary's
        reached = 0.0 if state.phase is Phase.PENDING else state.stage.percent
        if state.phase is Phase.PROMOTED:
            reached = 100.0
        spec = row.spec or {}
        return cls(row.id, row.model_id, row.candidate_id, row.baseline_id, row.salt, reached,
                   bool(spec.get("stratify")), parse_target(spec.get("target")))


@dataclass(frozen=True, slots=True)
class ModelState:
    """A model's stable release and its active rollout (None outside a rollout)."""

    id: int
    name: str
    stable_release_id: int | None
    rollout: RolloutSnapshot | None

    @classmethod
    def from_row(cls, name: str, row: Any) -> ModelState:
        rollout = None
        if row.rollout_id is not None:
            spec = row.spec or {}
            rollout = RolloutSnapshot(
                row.rollout_id, row.salt, row.candidate_id, row.baseline_id,
                RolloutState.from_dict(row.state).canary_percent, bool(spec.get("stratify")),
                bool(spec.get("shadow")), float(spec.get("shadow_share", 0.1)),
                parse_target(spec.get("target")))
        return cls(row.id, name, row.stable_release_id, rollout)


class HotCache:
    """The cache of one app (see the module docstring for how stale it may be).

    Args:
        engine: the app's engine; misses are read on a connection of their own.
        sessions: the app's sessionmaker (releases are loaded through the ORM, once).
        ttl_seconds: the staleness bound; 0 disables the device and model caches.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, engine: Engine, sessions: sessionmaker, ttl_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = float(ttl_seconds)
        self._engine = engine
        self._sessions = sessions
        self.clock = clock
        self._lock = threading.Lock()
        # Bumped by every invalidation; a miss stores what it read only if no invalidation
        # happened since it started reading, so a read that raced a commit is not kept.
        self._generation = 0
        self._devices: dict[str, tuple[float, DeviceSnapshot]] = {}
        self._runtimes: dict[tuple, dict[str, str]] = {}
        self._seen: dict[str, float] = {}  # device id -> last_seen_at this process wrote
        self._device_changes: int | None = None
        self._device_changes_due = 0.0
        self._models: dict[str, tuple[float, ModelState]] = {}
        self._rollouts: dict[int, tuple[float, RolloutRecord]] = {}
        self._releases: dict[int, ReleaseInfo] = {}
        self._variants: dict[tuple, VariantInfo | None] = {}
        self._documents: dict[Hashable, tuple[bytes, str]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    # -- devices ---------------------------------------------------------------------------------

    def device(self, credential_hash: str) -> DeviceSnapshot | None:
        """The device with this credential (revoked or not), or None if there is none."""
        now = self.clock()
        if self.enabled:
            if now >= self._device_changes_due:
                self._check_device_changes(now)
            entry = self._devices.get(credential_hash)
            if entry is not None and now - entry[0] <= DEVICE_MAX_AGE_SECONDS:
                return entry[1]
        generation = self._generation
        by_previous = False
        params = {"credential_hash": credential_hash}
        with self._engine.connect() as connection:
            row = connection.execute(DEVICE_BY_CREDENTIAL, params).first()
            if row is None:  # the credential it rotated away from, in its grace?
                row = connection.execute(DEVICE_BY_PREVIOUS_CREDENTIAL, params).first()
                by_previous = True
        if row is None:  # unknown credentials are not remembered: a registration is seen at once
            return None
        runtimes = dict(row.runtimes or {})
        key = tuple(sorted(runtimes.items()))
        runtimes = self._runtimes.setdefault(key, runtimes)
        if len(self._runtimes) > MAX_DEVICES:
            self._runtimes.clear()
        snapshot = DeviceSnapshot.from_row(row, runtimes, (key, row.ram_bytes), by_previous)
        if self.enabled:
            self._store(self._devices, credential_hash, (now, snapshot), generation, MAX_DEVICES)
        return snapshot

    def _check_device_changes(self, now: float) -> None:
        """Drop every device entry when another process changed a device row (revoked it)."""
        self._device_changes_due = now + self.ttl_seconds  # first, so other threads do not check too
        with self._engine.connect() as connection:
            value = connection.execute(DEVICE_CHANGES_VALUE).scalar()
        if value != self._device_changes:
            self.invalidate(devices=True, models=False)
            self._device_changes = value

    def retire_previous_credential(self, device: DeviceSnapshot) -> None:
        """The device used its new credential: refuse the one it rotated away from, here at once
        and in other processes within the TTL (``device_changes``, as for a revocation). A
        write that fails is retried at the device's next request."""
        try:
            with self._engine.begin() as connection, _short_lock_wait(connection):
                retired = connection.execute(RETIRE_PREVIOUS_CREDENTIAL, {"device_id": device.id}).rowcount
                if retired:
                    connection.execute(BUMP_DEVICE_CHANGES)
        except OperationalError as err:
            log.warning("previous credential of device %s not retired yet: %s", device.id, err.orig)
            return
        self.invalidate(devices=True, models=False)

    def touch(self, device: DeviceSnapshot) -> None:
        """Write ``last_seen_at`` when neither the row nor this process's last write is within
        :data:`LAST_SEEN_RESOLUTION_SECONDS` (one conditional UPDATE by id, not through the ORM,
        so it invalidates nothing)."""
        now = time.time()
        if now - max(self._seen.get(device.id, 0.0), device.last_seen or 0.0) <= LAST_SEEN_RESOLUTION_SECONDS:
            return
        if len(self._seen) >= 2 * MAX_DEVICES:
            self._seen.clear()
        self._seen[device.id] = now  # before writing, so concurrent polls of the device do not write
        seen_at = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        cutoff = seen_at - dt.timedelta(seconds=LAST_SEEN_RESOLUTION_SECONDS)
        try:
            with self._engine.begin() as connection, _short_lock_wait(connection):
                connection.execute(TOUCH_DEVICE, {"device_id": device.id, "seen_at": seen_at,
                                                  "cutoff": cutoff})
        except OperationalError as err:  # locked or gone: the poll is answered all the same
            self._seen.pop(device.id, None)
            log.warning("last_seen_at of device %s not written: %s", device.id, err.orig)

    # -- models, releases, documents ---------------------------------------------------------------

    def model(self, name: str) -> ModelState | None:
        """The model's stable release and active rollout, at most the TTL old; None if unknown."""
        return self._fresh(self._models, name, MODEL_STATE, {"name": name},
                           lambda row: ModelState.from_row(name, row))

    def rollout(self, rollout_id: int) -> RolloutRecord | None:
        """A rollout as report checks need it, at most the TTL old (like models); None if unknown."""
        return self._fresh(self._rollouts, rollout_id, ROLLOUT_RECORD, {"rollout_id": rollout_id},
                           RolloutRecord.from_row)

    def _fresh(self, table: dict, key: Hashable, query: Any, params: dict[str, Any],
               build: Callable[[Any], Any]) -> Any:
        """``table[key]`` if at most the TTL old, else ``build`` of the row ``query`` reads (None
        when there is none), kept when the cache is on."""
        now = self.clock()
        entry = table.get(key)
        if entry is not None and now - entry[0] <= self.ttl_seconds:
            return entry[1]
        generation = self._generation
        with self._engine.connect() as connection:
            row = connection.execute(query, params).first()
        if row is None:
            return None
        value = build(row)
        if self.enabled:
            self._store(table, key, (now, value), generation, MAX_MODELS)
        return value

    def release(self, release_id: int) -> ReleaseInfo:
        """The release's assignment data (read once: releases never change once published)."""
        info = self._releases.get(release_id)
        if info is None:
            with self._sessions() as session:
                info = load_release(session, release_id)
            with self._lock:
                if len(self._releases) >= MAX_RELEASES:
                    self._releases.clear()
                self._releases[release_id] = info
        return info

    def variant(self, release: ReleaseInfo, device: DeviceSnapshot,
                excluded: frozenset[str] = frozenset()) -> VariantInfo | None:
        """:func:`~rollout_server.assignment.choose_variant`, remembered per device capabilities
        and refused variants (``excluded``: ids of variants of ``release`` only, so bounded)."""
        key = (release.id, device.capabilities, excluded)
        found = self._variants.get(key, _MISSING)
        if found is _MISSING:
            found = choose_variant(release, device, excluded)
            with self._lock:
                if len(self._variants) >= MAX_DOCUMENTS:
                    self._variants.clear()
                self._variants[key] = found
        return found  # type: ignore[return-value]

    def document(self, key: Hashable, build: Callable[[], tuple[bytes, str]]) -> tuple[bytes, str]:
        """The document for ``key`` (everything its content depends on), built once."""
        found = self._documents.get(key)
        if found is None:
            found = build()
            with self._lock:
                if len(self._documents) >= MAX_DOCUMENTS:
                    self._documents.clear()
                self._documents[key] = found
        return found

    # -- invalidation ----------------------------------------------------------------------------

    def invalidate(self, devices: bool = True, models: bool = True) -> None:
        """Forget devices and/or models (this process wrote them, or another process did)."""
        with self._lock:
            self._generation += 1
            if devices:
                self._devices.clear()
                self._seen.clear()
            if models:
                self._models.clear()
                self._rollouts.clear()

    def _store(self, table: dict, key: Hashable, value: Any, generation: int, limit: int) -> None:
        with self._lock:
            if generation != self._generation:  # invalidated while we read: what we read may be old
                return
            if len(table) >= limit:
                del table[next(iter(table))]  # the oldest entry
            table[key] = value


_CHANGED = "edgeship.hot_cache.changed"


#: how long the ``last_seen_at`` write waits for another transaction's lock before giving up.
TOUCH_LOCK_WAIT_MS = 200


@contextmanager
def _short_lock_wait(connection: Connection) -> Iterator[None]:
    """Let the ``last_seen_at`` write wait :data:`TOUCH_LOCK_WAIT_MS` for a lock, not the
    database's busy timeout (30 s): it is bookkeeping, and a poll answered from the cache must
    not hang behind a backup or a stuck writer. SQLite's busy timeout is per connection (set
    back afterwards, the connection is pooled); PostgreSQL's ``lock_timeout`` is set for the
    transaction only."""
    if connection.dialect.name == "sqlite":
        raw = connection.connection.driver_connection
        previous = raw.execute("PRAGMA busy_timeout").fetchone()[0]
        raw.execute(f"PRAGMA busy_timeout = {TOUCH_LOCK_WAIT_MS}")
        try:
            yield
        finally:
            raw.execute(f"PRAGMA busy_timeout = {int(previous)}")
        return
    connection.execute(text(f"SET LOCAL lock_timeout = '{TOUCH_LOCK_WAIT_MS}ms'"))
    yield


#: the same short wait for other bookkeeping writes of a poll (rollout_server/device_access.py).
short_lock_wait = _short_lock_wait


def init_app(app: Flask) -> HotCache:
    """Create the app's cache and hook it to the app's sessions (after :func:`~rollout_server.db.init_db`)."""
    sessions = app.extensions["edgeship.sessions"]
    cache = HotCache(app.extensions["edgeship.engine"], sessions, app.config["ASSIGNMENT_CACHE_SECONDS"])
    app.extensions[EXTENSION] = cache
    _watch_writes(sessions, cache)
    return cache


def of(app: Flask) -> HotCache:
    """The app's cache."""
    return app.extensions[EXTENSION]


def note_device_change(session: Session) -> None:
    """For a device row changed without the ORM's unit of work (an ``UPDATE`` statement): count
    it for the other processes in the same transaction, and empty this process's device cache
    at commit, as an ORM change would."""
    session.info.setdefault(_CHANGED, set()).add("devices")
    session.execute(BUMP_DEVICE_CHANGES)


def _watch_writes(sessions: sessionmaker, cache: HotCache) -> None:
    """Invalidate ``cache`` after every commit that changed what assignment reads, and count
    device changes for the other processes (see the module docstring)."""

    @event.listens_for(sessions, "after_flush")
    def _flushed(session: Session, _context: Any) -> None:
        changed = session.info.setdefault(_CHANGED, set())
        for obj in (*session.dirty, *session.deleted):
            if isinstance(obj, Device):
                changed.add("devices")
            elif isinstance(obj, Model | Rollout):
                changed.add("models")
        if any(isinstance(obj, Rollout) for obj in session.new):
            changed.add("models")
        if any(isinstance(obj, Device) for obj in (*session.dirty, *session.deleted)):
            session.connection().execute(BUMP_DEVICE_CHANGES)  # same transaction as the change

    @event.listens_for(sessions, "after_commit")
    def _committed(session: Session) -> None:
        changed = session.info.pop(_CHANGED, None)
        if changed:
            cache.invalidate(devices="devices" in changed, models="models" in changed)

    @event.listens_for(sessions, "after_rollback")
    def _rolled_back(session: Session) -> None:
        session.info.pop(_CHANGED, None)
