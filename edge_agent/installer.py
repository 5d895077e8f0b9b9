"""From an assignment to a loaded, checked model, with the files kept in the model store.

Order, each step refusing what it cannot vouch for: signed manifest → download (resumable,
size and time limits, sha256) → runtime load → golden probe. Only then may the agent swap the
model in and make it the store's current entry (the previous one stays as last-known-good).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edge_agent.download import DownloadError, IntegrityError, TooLarge, fetch
from edge_agent.model import LoadedModel, ModelRefused, Release, load_model
from edge_agent.server_api import ServerApi
from edge_agent.store import ModelStore
from edgeship.contract.manifest import canonical_json
from edgeship.contract.signing import key_id, load_public_key
from edgeship.runtimes import RuntimeUnavailable

log = logging.getLogger("edgeship.agent")


def trusted_keys(paths: list[Path]) -> dict[str, Any]:
    """``{key_id: public key}`` of the pinned publisher keys."""
    keys = {}
    for path in paths:
        key = load_public_key(Path(path))
        keys[key_id(key)] = key
    return keys


class Installer:
    """Fetches, verifies and loads releases; restores the last good one at start.

    Args:
        api: the server connection (its credential authorizes downloads).
        store: the on-device model store.
        keys: trusted publisher keys, ``{key_id: key}``.
        threads: runtime intra-op threads.
        golden_slack: see :func:`edge_agent.golden.check_golden`.
        max_bytes / deadline_seconds: download limits.
    """

    def __init__(self, api: ServerApi, store: ModelStore, keys: dict[str, Any], threads: int | None,
                 golden_slack: float, max_bytes: int, deadline_seconds: float) -> None:
        self.api = api
        self.store = store
        self.keys = keys
        self.threads = threads
        self.golden_slack = golden_slack
        self.max_bytes = max_bytes
        self.deadline_seconds = deadline_seconds
        self._proven_model: str | None = None  # sha256 of a current model known to be proven

    def install(self, block: dict[str, Any]) -> tuple[LoadedModel, dict[str, Any]]:
        """Fetch and load the release an assignment (or its ``shadow`` block) names.

        Returns:
            The loaded model and its store entry (not yet made current: see :meth:`commit`).

        Raises:
            ModelRefused: the release must not run (reason ``load_failed`` or ``golden_mismatch``).
            DownloadError: a transfer problem worth retrying later (not the model's fault).
        """
        release = Release.from_assignment(block, self.keys)
        model_path = self._fetch(release.artifact_url, release.sha256, int(release.variant["size_bytes"]))
        golden_path = self._fetch(release.golden_url, release.golden_sha256, None)
        manifest_sha = self.store.put_bytes(canonical_json(release.manifest))
        model = self._load(release, model_path, golden_path)
        entry = {
            "blobs": {"model": release.sha256, "golden": release.golden_sha256, "manifest": manifest_sha},
            "release": {"model": release.model, "version": release.version,
                        "variant_id": release.variant["id"], "artifact_url": release.artifact_url,
                        "golden_url": release.golden_url},
            "cohort": block.get("cohort", "stable"),
        }
        return model, entry

    def commit(self, entry: dict[str, Any], keep: tuple[str, ...] = ()) -> None:
        """Make ``entry`` the store's current model; the previous one becomes last good if proven.

        A model has proven itself once it ran as ``stable`` (:func:`proven`). A candidate that
        leaves while still a canary (its rollout was rolled back or aborted) never becomes the
        fallback, and its files are collected. Blobs of neither entry are collected, except
        ``keep`` (a shadow candidate's files). A failure to write (disk full) is logged, not
        raised: the model already runs, and on restart the agent falls back to the previous
        entry and downloads again.
        """
        try:
            current, _ = self.store.state()
            self.store.promote(entry, current_was_good=current is None or proven(current), keep=keep)
        except (OSError, ValueError) as err:
            log.error("could not record the new model in %s (%s); running it anyway", self.store.root, err)
            return
        self._proven_model = entry["blobs"]["model"] if proven(entry) else None

    def confirm_stable(self, model_sha256: str, keep: tuple[str, ...] = ()) -> None:
        """Record that the store's current model now runs as ``stable`` (its rollout was promoted).

        From then on it may become the last good model. Reads the store once per model; a
        failure to write is logged and tried again at the next call.
        """
        if model_sha256 == self._proven_model:
            return
        try:
            current, _ = self.store.state()
            if current is not None and current["blobs"]["model"] == model_sha256 and not proven(current):
                self.store.promote({**current, "cohort": "stable"}, keep=keep)
                log.info("model %s now runs as stable: it may be the fallback from now on", model_sha256[:12])
        except (OSError, ValueError) as err:
            log.error("could not record model %s as stable in %s (%s)", model_sha256[:12], self.store.root,
                      err)
            return
        self._proven_model = model_sha256

    def restore(self) -> tuple[LoadedModel, dict[str, Any]] | None:
        """Load the store's current model, else its last good one; ``None`` when neither works."""
        for entry in self.store.startup():
            try:
                manifest = json.loads(self.store.blob_path(entry["blobs"]["manifest"]).read_bytes())
                info = entry["release"]
                block = {**info, "manifest": manifest,
                         "variant": {"id": info["variant_id"], "sha256": entry["blobs"]["model"]}}
                release = Release.from_assignment(block, self.keys)
                model = self._load(release, self.store.blob_path(release.sha256),
                                   self.store.blob_path(release.golden_sha256))
            except (ModelRefused, OSError, ValueError, KeyError, TypeError) as err:
                log.warning("stored model %s is not usable (%s); trying the next one",
                            entry.get("release", {}).get("version"), err)
                continue
            log.info("restored %s v%s (%s) from the model store", release.model, release.version,
                     release.variant["id"])
            return model, entry
        return None

    def _load(self, release: Release, model_path: Path, golden_path: Path) -> LoadedModel:
        try:
            return load_model(release, model_path, golden_path, self.threads, self.golden_slack)
        except RuntimeUnavailable as err:
            raise ModelRefused("load_failed", f"{release.variant['id']}: {err}") from None

    def _fetch(self, url: str, sha256: str, size_bytes: int | None) -> Path:
        dest = self.store.blob_path(sha256)
        if self.store.has_blob(sha256):
            return dest
        full_url = self.api.url(url)
        try:  # the credential goes only to the server's own origin, never to another host
            return fetch(full_url, dest, sha256, size_bytes, headers=self.api.auth_headers(full_url),
                         max_bytes=self.max_bytes, timeout_seconds=self.api.timeout_seconds,
                         deadline_seconds=self.deadline_seconds, transport=self.api.transport)
        except (IntegrityError, TooLarge) as err:
            raise ModelRefused("load_failed", f"artifact refused: {err}") from None
        except DownloadError as err:
            if getattr(err, "status", None) == 404:  # the server does not have what it assigned
                raise ModelRefused("load_failed", f"artifact missing on the server: {err}") from None
            raise


def proven(entry: dict[str, Any]) -> bool:
    """Whether a store entry ran as ``stable`` (entries written before cohorts were kept did)."""
    return entry.get("cohort", "stable") == "stable"
