"""The edge agent: keeps the assigned model running on this device and reports how it does.

Usable standalone (``edgeship agent``) or as a library inside an app::

    agent = Agent(load_config(Path("/etc/edgeship/agent.toml"))).start()
    outputs = agent.predict({"image": batch}, label=3)   # always on the current model
    agent.stop()                                          # flushes the outbox

One control thread does the talking: check-in (assignment with ETag) → install when it changed
(see :mod:`edge_agent.installer`) → swap → close reporting windows into the disk outbox →
deliver the outbox. ``predict`` never waits for it: the current model is one reference that a
swap replaces only with a model that is loaded and passed its golden probe.

When the server answers that an operator revoked or rejected this device (401 ``device_revoked``
or ``device_rejected``) the loop ends for good: the identity is deleted, ``revoked.json``
records it, :attr:`Agent.revoked` turns true and the agent does not enroll again until it is
given a new enrollment token. A device waiting for an operator (403 ``device_pending``) keeps its
identity and asks again after the server's ``Retry-After``; told that its credential is old
(``Edgeship-Rotate-Credential``), it rotates it, storing the new one before using it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.backoff import Backoff, VariantBackoff
from edge_agent.config import AgentConfig
from edge_agent.download import DownloadError
from edge_agent.health import read_health
from edge_agent.identity import Identity, Revocation
from edge_agent.installer import Installer, trusted_keys
from edge_agent.local_metrics import LocalMetrics
from edge_agent.model import LoadedModel, ModelRefused
from edge_agent.outbox import Outbox, OutboxError
from edge_agent.refusals import RefusedVariants
from edge_agent.refusals import release_variant_key as _release_variant
from edge_agent.runtime_probe import loadable_runtimes
from edge_agent.server_api import ServerApi, ServerError, ServerRejected, ServerUnavailable
from edge_agent.shadow import ShadowRunner
from edge_agent.store import ModelStore
from edge_agent.window import WindowKey, WindowSet

log = logging.getLogger("edgeship.agent")
REPORT_BATCH = 100
DEVICE_REVOKED = "device_revoked"  # the server's ``error`` for a credential an operator revoked
DEVICE_REJECTED = "device_rejected"  # ... for a device an operator refused while it was pending
DEVICE_PENDING = "device_pending"  # ... for a device that waits for an operator to accept it
ENROLLMENT_SCOPE = "enrollment_scope"  # 403 at registration: the token does not enroll this class
PENDING_RETRY_SECONDS = 60.0  # a pending device's next poll when the server sent no Retry-After
ROTATE_RETRY_SECONDS = 300.0  # after a failed credential rotation, the next try waits this long
NO_VARIANT = "no_variant"  # the server's ``error`` when no variant of the release runs on this device
MAX_VARIANT_TRIES = 8  # assignment polls in one check-in while variants of the release are refused


class NoModel(RuntimeError):
    """No model is loaded yet (first start, before the first install finished)."""


@dataclass(frozen=True)
class Active:
    """The model that answers ``predict`` and the window its measurements go to."""

    model: LoadedModel
    key: WindowKey


class Agent:
    """See the module docstring.

    Args:
        config: settings (:func:`edge_agent.config.load_config`).
        device: registration fields (:func:`edge_agent.device.describe`); detected if left out,
            the runtimes by a probe of what loads here (:mod:`edge_agent.runtime_probe`, run by
            the control thread before it registers).
    """

    def __init__(self, config: AgentConfig, device: dict[str, Any] | None = None) -> None:
        from edge_agent.device import describe

        self.config = config.check()
        self.device = device or describe(config.device_class, config.ram_bytes, runtimes={},
                                         attributes=config.attributes)
        self._runtimes_known = device is not None and "runtimes" in device
        self._runtimes_sent = False  # the server holds this run's runtimes (sent once per start)
        self._attributes_sent = False  # ... and its attributes (once per start, outbox delivered)
        self._runtimes_backoff = Backoff(config.backoff_initial_seconds, config.backoff_max_seconds)
        self._runtimes_retry_at = 0.0
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self.api = ServerApi(config.server, config.request_timeout_seconds, transport=config.transport())
        self.identity = Identity(state / "identity.json")
        self.revocation = Revocation(state / "revoked.json")
        self.store = ModelStore(state / "models")
        self.outbox = Outbox(state / "outbox.sqlite", max_reports=config.outbox_max_reports)
        thermal, vcgencmd = config.thermal_dir, str(config.vcgencmd) if config.vcgencmd else None
        self.windows = WindowSet(health_reader=lambda: read_health(thermal, vcgencmd))
        self.installer = Installer(self.api, self.store, trusted_keys(config.trusted_keys), config.threads,
                                   config.golden_agreement_slack, config.download_max_bytes,
                                   config.download_deadline_seconds)
        self.metrics = LocalMetrics(self.device["device_class"]) if config.metrics_port is not None else None
        self.shadow = ShadowRunner(self.windows)
        self.report_interval_seconds = config.report_interval_seconds
        self._active: Active | None = None
        self._assignment: dict[str, Any] | None = None
        self._etag: str | None = None
        self._server_backoff = Backoff(config.backoff_initial_seconds, config.backoff_max_seconds)
        self._variant_backoff = VariantBackoff(config.variant_backoff_seconds)
        self._refusals = RefusedVariants(self._variant_backoff)
        self._refused_now = False  # a variant was refused in this check-in: ask for the next one
        self._exhausted: tuple[str | None, list[str]] | None = None  # the last "no variant left" logged
        self._server_retry_at = 0.0
        self._stop = threading.Event()
        self._revoked = threading.Event()
        self._refused_by = DEVICE_REVOKED  # or DEVICE_REJECTED, once the server said so
        self._waiting_since: float | None = None  # monotonic time the server first said "pending"
        self._rotate_after = 0.0
        self._thread: threading.Thread | None = None
        self._metrics_server = None
        self._pending: list[dict[str, Any]] = []  # closed windows the outbox could not take (disk full)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, loop: bool = True) -> Agent:
        """Restore the last good model from disk, then run the control loop in a thread.

        A device revoked earlier (``revoked.json``) whose enrollment token has not changed since
        does not start the loop: :attr:`revoked` is true at once (the restored model still
        answers :meth:`predict`; ``edgeship agent`` exits instead).

        Args:
            loop: ``False`` restores only: the caller drives :meth:`check_in`,
                :meth:`close_window` and :meth:`deliver` itself, from one thread (the
                conformance driver, an app with its own scheduler).
        """
        restored = self.installer.restore()
        if restored is not None:
            model, _ = restored
            self._swap(model, WindowKey(model.release.model, model.version, model.variant_id, None, "stable"))
        if self.identity.device_id is None and self.revocation.blocks(self.config.enroll_token):
            self._revoked.set()
            log.error("device %s was revoked by an operator: not enrolling again with the same enrollment "
                      "token; give it a new enroll_token (or remove %s) to enroll it again",
                      self.revocation.device_id(), self.revocation.path)
            return self
        if not loop:
            return self
        if self.metrics is not None:
            self._metrics_server, _ = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
        self._thread = threading.Thread(target=self._loop, name="edgeship-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self, flush_timeout_seconds: float = 5.0) -> dict[str, Any]:
        """Stop the loop, close the open window into the outbox and try to deliver it.

        Returns:
            The final :meth:`status` (``outbox``: reports left for the next start).
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(flush_timeout_seconds, self.config.request_timeout_seconds) + 5)
        self.shadow.stop()
        self.close_window()
        deadline = time.monotonic() + flush_timeout_seconds
        while len(self.outbox) and time.monotonic() < deadline:
            if not self.flush():
                break
        if len(self.outbox):
            log.info("%d report(s) stay in the outbox for the next start", len(self.outbox))
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        final = self.status()
        self.outbox.close()
        return final

    @property
    def revoked(self) -> bool:
        """Whether the server revoked or rejected this device: the control loop has ended for good."""
        return self._revoked.is_set()

    @property
    def refusal(self) -> str:
        """How the device was refused, once :attr:`revoked`: ``revoked`` or ``rejected``."""
        return "rejected" if self._refused_by == DEVICE_REJECTED else "revoked"

    @property
    def pending(self) -> bool:
        """Whether the server last said this device waits for an operator to accept it."""
        return self._waiting_since is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the control loop ends by itself (revocation) or ``timeout``; ``revoked``."""
        return self._revoked.wait(timeout)

    # -- inference --------------------------------------------------------------------------

    @property
    def current(self) -> LoadedModel | None:
        active = self._active
        return active.model if active is not None else None

    def predict(self, inputs: dict[str, np.ndarray] | np.ndarray, label: Any = None) -> list[np.ndarray]:
        """Run the current model on one batch; outputs in the model's output order.

        Args:
            inputs: arrays keyed by input name, or one array for a single-input model.
            label: the true class (or one per row) when known: counted for accuracy.

        Raises:
            NoModel: no model loaded yet.
            InferenceError: the runtime failed (counted as ``runtime_error``).
        """
        active = self._active
        if active is None:
            raise NoModel("no model loaded yet: the agent is still fetching its first assignment")
        model = active.model
        feeds = inputs if isinstance(inputs, dict) else {model.input_names[0]: inputs}
        start = time.perf_counter()
        try:
            outputs = model.run(feeds)
        except Exception as err:
            self._record_error(active.key, "runtime_error")
            raise InferenceError(f"{model.variant_id}: {err}") from err
        latency = time.perf_counter() - start
        self.windows.record_inference(active.key, latency)
        if self.metrics is not None:
            self.metrics.observe_inference(active.key, latency)
        if label is not None and model.classification:
            self._record_labels(active.key, outputs[0], label)
        shadow = self.shadow
        if shadow.model is not None and random.random() < shadow.sample_share:
            shadow.submit(active.key, feeds, outputs)
        return outputs

    def _record_labels(self, key: WindowKey, scores: np.ndarray, label: Any) -> None:
        predicted = np.asarray(scores).reshape(len(scores), -1).argmax(axis=1)
        for p, truth in zip(predicted, np.asarray(label).reshape(-1), strict=False):
            self.windows.record_labelled(key, bool(p == truth))
            if self.metrics is not None:
                self.metrics.observe_labelled(key, bool(p == truth))

    def _record_error(self, key: WindowKey, reason: str) -> None:
        self.windows.record_error(key, reason)
        if self.metrics is not None:
            self.metrics.observe_error(key, reason)

    # -- the control loop --------------------------------------------------------------------

    def _loop(self) -> None:
        next_check = window_opened = time.monotonic()
        undelivered = True  # reports left by an earlier run may wait in the outbox
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_check and now >= self._server_retry_at:
                    next_check = now + self.config.check_interval_seconds
                    self.check_in()  # may shorten the window to the server's report interval
                if now >= window_opened + self.report_interval_seconds:
                    window_opened = now
                    self.close_window()
                    undelivered = True
                if undelivered and now >= self._server_retry_at:
                    undelivered = not self.deliver()
            except Exception:  # never let one bad step end the loop: the device must keep serving
                log.exception("agent step failed; retrying at the next interval")
                self._server_retry_at = time.monotonic() + self._server_backoff.failure()
            wake = min(next_check, window_opened + self.report_interval_seconds)
            if undelivered:  # the server was away: come back when the backoff allows
                wake = min(wake, max(self._server_retry_at, now + 0.05))
            self._stop.wait(max(0.01, wake - time.monotonic()))

    def deliver(self, max_batches: int = 50) -> bool:
        """Send outbox batches until it is empty; ``False`` when reports are left (server away)."""
        for _ in range(max_batches):
            if not self.flush():
                return False
            if not self._pending and not len(self.outbox):
                return True
        return False

    def check_in(self) -> None:
        """Ask for the assignment and act on it; never raises (errors are logged and retried).

        When the assigned variant is refused, ask again at once naming it (and the release's other
        refused variants): the server offers the next-best variant of the same release, until
        none is left (409 ``no_variant``) and the variant backoff decides when to try again.
        """
        for _ in range(MAX_VARIANT_TRIES):
            self._refused_now = False
            self._check_in_once()
            if not self._refused_now:
                return

    def _check_in_once(self) -> None:
        held = self._assignment
        version = str(held["version"]) if held is not None else None
        excluded = self._refusals.excluded(version, time.monotonic())
        try:
            self._ensure_registered()
            body, self._etag = self.api.assignment(self.identity.device_id, self.config.model, self._etag,
                                                   version, excluded)
            if body is not None:
                self._assignment = body
                interval = body.get("report_interval_seconds")
                if isinstance(interval, int | float) and interval > 0:
                    self.report_interval_seconds = float(interval)
            self._server_backoff.success()
            self._accepted()
            if self.api.rotation_requested:
                self._rotate_credential()
        except ServerUnavailable as err:
            self._server_away(err)
            return
        except ServerRejected as err:
            if err.status == 401 or err.error == ENROLLMENT_SCOPE:
                self._unauthorized(err)
            elif err.error == DEVICE_PENDING:
                self._waiting(err)
            elif err.error == NO_VARIANT and excluded:
                if (version, excluded) != self._exhausted:  # once, not at every poll of the backoff
                    log.warning("no variant of v%s left that this device has not refused (%s); serving the "
                                "current model until the variant backoff lets one be tried again",
                                version, ", ".join(excluded))
                self._exhausted = (version, excluded)
            else:
                log.warning("assignment refused: %s", err)
            return
        if self._assignment is not None:
            self._apply(self._assignment)

    def _server_away(self, err: Exception) -> None:
        delay = self._server_backoff.failure(at_least=getattr(err, "retry_after_seconds", None))
        self._server_retry_at = time.monotonic() + delay
        log.warning("server unavailable (%s); retrying in %.1f s, still serving the current model",
                    err, delay)

    def _unauthorized(self, err: ServerRejected) -> None:
        """A 401: the device was revoked or rejected (stop for good), or its credential or
        enrollment token is not accepted (register again, after a backoff so a fleet does not
        hammer the server; a refused enrollment token says why: expired, used up, out of scope)."""
        if err.error in (DEVICE_REVOKED, DEVICE_REJECTED):
            self._revoked_by_server(err)
            return
        delay = self._server_backoff.failure()
        self._server_retry_at = time.monotonic() + delay
        if self.identity.device_id is None:
            log.error("cannot register (%s); trying again in %.1f s, still serving the current model",
                      err, delay)
            return
        log.warning("the server does not accept this device's credential (%s); registering again in %.1f s",
                    err, delay)
        self.identity.forget()
        self.api.credential = None

    def _revoked_by_server(self, err: ServerRejected) -> None:
        """Revoked or rejected by an operator: forget the identity, record it, end the loop; never
        re-enroll by itself (see :class:`edge_agent.identity.Revocation`)."""
        if self._revoked.is_set():
            return
        device_id = self.identity.device_id
        self.revocation.record(device_id, self.config.enroll_token, str(err))
        self.identity.forget()
        self.api.credential = None
        self._refused_by = err.error if err.error == DEVICE_REJECTED else DEVICE_REVOKED
        self._revoked.set()
        self._stop.set()
        log.error("device %s was %s by an operator (%s): stopping, and not enrolling again until it is "
                  "given a new enrollment token (enroll_token)", device_id, self.refusal, err)

    def _waiting(self, err: ServerRejected) -> None:
        """403 ``device_pending``: registered, not yet accepted. Keep the identity (registering
        again would only add another pending device) and ask again after the server's
        ``Retry-After``, at least the check interval; the installed model keeps serving."""
        delay = max(err.retry_after_seconds or PENDING_RETRY_SECONDS, self.config.check_interval_seconds)
        self._server_retry_at = time.monotonic() + delay
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
            device_id = self.identity.device_id
            log.warning("device %s is waiting for an operator to accept this device (edgeship devices accept "
                        "%s); asking again every %.0f s", device_id, device_id, delay)
        else:
            log.debug("still waiting for an operator to accept this device; next try in %.0f s", delay)

    def _accepted(self) -> None:
        if self._waiting_since is not None:
            log.info("an operator accepted device %s after %.0f s", self.identity.device_id,
                     time.monotonic() - self._waiting_since)
            self._waiting_since = None

    def _rotate_credential(self) -> None:
        """The server asked for a new credential: get one, store it durably, then use it. A crash
        or failure in between leaves the old one, which the server accepts until the new one is
        first used (docs/protocol.md §2.3)."""
        now = time.monotonic()
        if now < self._rotate_after:
            return
        device_id = self.identity.device_id
        try:
            credential = self.api.rotate_credential(device_id)
            self.identity.save(device_id, credential)
        except ServerRejected as err:
            if err.status == 401:
                raise
            self._rotate_after = now + ROTATE_RETRY_SECONDS
            log.warning("credential rotation refused (%s); keeping the current credential", err)
            return
        except (ServerError, OSError) as err:
            self._rotate_after = now + ROTATE_RETRY_SECONDS
            log.warning("credential rotation not done (%s); keeping the current credential, which stays "
                        "valid, and trying again in %.0f s", err, ROTATE_RETRY_SECONDS)
            return
        self.api.credential = credential
        self.api.rotation_requested = False
        log.info("rotated the credential of device %s", device_id)

    def _ensure_registered(self) -> None:
        if self.identity.device_id is None:
            token = self.config.enroll_token
            if self.revocation.blocks(token):
                raise ServerRejected("this device was revoked; it enrolls again only with a new enroll_token",
                                     401, DEVICE_REVOKED)
            if not token:
                raise ServerRejected("device is not registered and no enroll_token is configured", 401)
            registration = self.api.register(token, {**self.device, "runtimes": self._loadable_runtimes()})
            self.identity.save(registration.device_id, registration.credential)
            self._runtimes_sent = self._attributes_sent = True
            if self.revocation.path.exists():
                log.info("enrolled again with a new enrollment token after revocation")
                self.revocation.clear()
            log.info("registered as device %s (%s)%s", registration.device_id, self.device["device_class"],
                     "; waiting for an operator to accept this device" if registration.pending else "")
        self.api.credential = self.identity.credential
        if not self._runtimes_sent:
            self._send_runtimes()
        if not self._attributes_sent and not len(self.outbox):
            self._send_attributes()

    def _loadable_runtimes(self) -> dict[str, str]:
        """The runtimes to announce: the caller's, or those that pass the probe (once per start)."""
        if not self._runtimes_known:
            self.device["runtimes"] = loadable_runtimes(self.config.state_dir)
            self._runtimes_known = True
            log.info("runtimes that load here: %s", ", ".join(f"{k} {v}" for k, v in
                                                         sorted(self.device["runtimes"].items())) or "none")
        return self.device["runtimes"]

    def _send_runtimes(self) -> None:
        """Once per start, tell the server what this device loads now: packages may have been
        upgraded, or a runtime may have stopped loading, since it registered. Never in the way of
        the assignment: a server (or proxy) that does not take it is asked again later, backed off."""
        now = time.monotonic()
        if now < self._runtimes_retry_at:
            return
        try:
            self.api.update_runtimes(self.identity.device_id, self._loadable_runtimes())
        except ServerUnavailable as err:
            delay = self._runtimes_backoff.failure(at_least=err.retry_after_seconds)
            self._runtimes_retry_at = now + delay
            log.warning("could not tell the server this device's runtimes (%s); trying again in %.0f s",
                        err, delay)
            return
        except ServerRejected as err:
            if err.status == 401:
                raise
            log.warning("the server did not take this device's runtimes (%s); it keeps those it has", err)
        self._runtimes_sent = True

    def _send_attributes(self) -> None:
        """Once per start, replace what the server holds of this device's attributes with the
        configured ones (an app upgrade changes ``app_version``; docs/protocol.md §3.8). Only with
        the outbox delivered: reports still held under a rollout the new attributes leave would be
        refused. A server that is away is asked again at a later check-in; one that refuses keeps
        what it has."""
        try:
            self.api.update_attributes(self.identity.device_id, self.device.get("attributes") or {})
        except ServerUnavailable as err:
            log.warning("could not tell the server this device's attributes (%s); trying again later", err)
            return
        except ServerRejected as err:
            if err.status == 401:
                raise
            log.warning("the server did not take this device's attributes (%s); it keeps those it has", err)
        self._attributes_sent = True

    def _apply(self, assignment: dict[str, Any]) -> None:
        """Run what the assignment names, or stay on the current model if it cannot run."""
        variant = assignment["variant"]
        assigned = WindowKey(assignment["model"], assignment["version"], variant["id"],
                             assignment.get("rollout_id"), assignment["cohort"])
        active = self._active
        if active is None or not _runs(active.model, assignment):
            now = time.monotonic()
            if not self._refusals.blocked(assignment, now):
                self._install(assignment, assigned, now)
        self._rekey(assignment)
        active = self._active
        if active is not None and assignment["cohort"] == "stable" and _runs(active.model, assignment):
            self.installer.confirm_stable(active.model.release.sha256, keep=self.shadow.blobs)
        self._apply_shadow(assignment.get("shadow"))

    def _install(self, assignment: dict[str, Any], assigned: WindowKey, now: float) -> None:
        log.info("installing %s v%s (%s, %s)", assigned.model, assigned.version, assigned.variant,
                 assigned.cohort)
        try:
            model, entry = self.installer.install(assignment)
        except ModelRefused as refused:
            self._record_error(assigned, refused.reason)
            until = self._refusals.refuse(assignment, now)
            self._refused_now = True
            log.error("refused %s v%s (%s): %s [%s]; asking for another variant of the release, not "
                      "retrying this one for %.0f s", assigned.model, assigned.version, assigned.variant,
                      refused, refused.reason, until - now)
            return
        except DownloadError as err:
            log.warning("download of %s v%s interrupted (%s); resuming at the next check-in",
                        assigned.model, assigned.version, err)
            return
        except OSError as err:  # the store could not write (disk full): try again later
            log.error("cannot store %s v%s (%s); staying on the current model", assigned.model,
                      assigned.version, err)
            return
        self.installer.commit(entry, keep=self.shadow.blobs)
        self._swap(model, assigned)
        log.info("now running %s v%s (%s)", assigned.model, assigned.version, assigned.variant)

    def _rekey(self, assignment: dict[str, Any]) -> None:
        """Point the current model's measurements at the assignment's rollout and cohort.

        A device that could not install what it was assigned keeps reporting for what it
        actually runs, as ``stable``: its inferences must not count for the candidate.
        """
        active = self._active
        if active is None:
            return
        cohort = assignment["cohort"] if _runs(active.model, assignment) else "stable"
        key = WindowKey(active.model.release.model, active.model.version, active.model.variant_id,
                        assignment.get("rollout_id"), cohort)
        if key != active.key:
            self._active = Active(active.model, key)

    def _swap(self, model: LoadedModel, key: WindowKey) -> None:
        self._active = Active(model, key)  # one reference assignment: predict sees old or new, whole
        if self.metrics is not None:
            self.metrics.set_model(model.release.model, model.version, model.variant_id)

    def _apply_shadow(self, block: dict[str, Any] | None) -> None:
        if block is None:
            self.shadow.clear()
            return
        sha = block.get("sha256", "")
        if self.shadow.runs(sha) or self._variant_backoff.blocked(_release_variant(block), time.monotonic()):
            return
        try:
            model, entry = self.installer.install(block)
        except (ModelRefused, DownloadError) as err:
            self._variant_backoff.failed(_release_variant(block), time.monotonic())
            log.warning("shadow candidate %s not loaded: %s", block.get("variant_id"), err)
            return
        self.shadow.set(model, float(block.get("sample_share", 0.1)), tuple(entry["blobs"].values()))
        log.info("shadowing candidate v%s (%s) on %.0f%% of inputs", model.version, model.variant_id,
                 100 * self.shadow.sample_share)

    # -- reporting ---------------------------------------------------------------------------

    def close_window(self) -> None:
        """Close the reporting window(s) into the outbox (kept in memory if the disk is full)."""
        reports = self._pending + self._with_load_time(self.windows.close())
        if not reports:
            return
        try:
            self.outbox.add(reports)
            self._pending = []
        except OutboxError as err:
            self._pending = reports[-self.config.outbox_max_reports:]
            self.outbox.note_dropped(len(reports) - len(self._pending))
            log.error("%s; keeping %d report(s) in memory and running on", err, len(self._pending))

    def _with_load_time(self, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The reports, those of the model running now with the seconds it took to load."""
        active = self._active
        seconds = active.model.load_seconds if active is not None else None
        if seconds is None:
            return reports
        running = (active.model.release.model, active.model.version, active.model.variant_id)
        for report in reports:
            if (report["model"], report["version"], report["variant"]) == running:
                report["load_seconds"] = round(seconds, 6)
        return reports

    def flush(self) -> bool:
        """Deliver one batch from the outbox; ``False`` when the server is away (or refuses this
        device: revoked, or a credential to register again after a backoff)."""
        if self._pending:
            self.close_window()
        if self._revoked.is_set():
            return False
        batch = self.outbox.take(REPORT_BATCH)
        if not batch:
            return True
        try:
            self._ensure_registered()
            held = self.api.post_reports(batch)
        except ServerUnavailable as err:
            self._server_away(err)
            return False
        except ServerRejected as err:
            if err.status == 401:
                self._unauthorized(err)
                return False
            if err.error == DEVICE_PENDING:  # not the reports' fault: they wait for the acceptance
                self._waiting(err)
                return False
            held = self._deliver_one_by_one(batch)
        except ServerError as err:
            log.warning("reports not delivered: %s", err)
            return False
        self.outbox.ack(sorted(held))
        return True

    def _deliver_one_by_one(self, batch: list[dict[str, Any]]) -> set[str]:
        """A batch the server refused: find the reports it refuses and drop only those."""
        held: set[str] = set()
        for report in batch:
            try:
                held |= self.api.post_reports([report])
            except ServerRejected as one:
                if one.status == 401:  # not the report's fault: keep it for the next try
                    self._unauthorized(one)
                    break
                if one.error == DEVICE_PENDING:
                    self._waiting(one)
                    break
                log.error("server refused report %s and it is dropped: %s", report.get("id"), one)
                self.outbox.note_dropped(1 + int(report.get("dropped_windows") or 0))
                held.add(report["id"])
            except ServerError:
                break
        return held

    def status(self) -> dict[str, Any]:
        """What the agent runs and holds, for logs and the CLI."""
        active = self._active
        return {
            "device_id": self.identity.device_id,
            "model": active.model.release.model if active else None,
            "version": active.model.version if active else None,
            "variant": active.model.variant_id if active else None,
            "cohort": active.key.cohort if active else None,
            "rollout_id": active.key.rollout_id if active else None,
            "outbox": len(self.outbox),
            "shadow": self.shadow.model.variant_id if self.shadow.model else None,
            "revoked": self.revoked,
            "pending": self.pending,
        }


class InferenceError(RuntimeError):
    """The runtime failed on an input."""


def _runs(model: LoadedModel, assignment: dict[str, Any]) -> bool:
    return model.version == assignment["version"] and model.release.sha256 == assignment["variant"]["sha256"]


__all__ = ["Agent", "InferenceError", "NoModel"]
