"""A verified, loaded model and how one is made from an assignment's release.

:func:`load_model` does everything that may fail (signature, sha256, runtime load, golden
probe) before a :class:`LoadedModel` exists, so the agent swaps in only finished, checked models.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.golden import GoldenResult, check_golden, load_golden, run_probe
from edgeship.contract.errors import SigningError, first_line
from edgeship.contract.manifest import ManifestError, check_manifest
from edgeship.contract.signing import verify_manifest
from edgeship.runtimes import Runner, RuntimeUnavailable, open_runner


class ModelRefused(Exception):
    """A model that must not run: the reason is one of the report's error reasons.

    Attributes:
        reason: ``load_failed`` (bad signature, digest, or the runtime refused it) or
            ``golden_mismatch``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Release:
    """One variant of one release, as the assignment and its signed manifest describe it.

    Attributes:
        model / version: registry name and release version.
        variant: the manifest's (signed) entry of the variant to run.
        manifest: the whole signed manifest.
        artifact_url / golden_url: where to download the variant and the probe set.
    """

    model: str
    version: str
    variant: dict[str, Any]
    manifest: dict[str, Any]
    artifact_url: str
    golden_url: str

    @property
    def sha256(self) -> str:
        return str(self.variant["sha256"])

    @property
    def golden_sha256(self) -> str:
        return str(self.manifest["golden"]["sha256"])

    @classmethod
    def from_assignment(cls, block: dict[str, Any], trusted_keys: dict[str, Any]) -> Release:
        """Check the block's manifest signature and take the variant from the signed manifest.

        The assignment's own ``variant`` fields are not signed; only the variant id is taken
        from them, and its sha256 must equal the signed one.

        Raises:
            ModelRefused: ``load_failed`` for an unsigned, tampered or inconsistent release.
        """
        manifest = block.get("manifest")
        try:
            check_manifest(manifest)
            verify_manifest(manifest, trusted_keys)
        except (ManifestError, SigningError, ValueError) as err:
            raise ModelRefused("load_failed", f"manifest refused: {err}") from None
        wanted = block.get("variant") or {}
        signed = next((v for v in manifest["variants"] if v.get("id") == wanted.get("id")), None)
        if signed is None or signed.get("sha256") != wanted.get("sha256"):
            raise ModelRefused("load_failed", f"variant {wanted.get('id')!r} is not the one the signed "
                                              "manifest describes")
        if manifest.get("model") != block.get("model", manifest.get("model")) or \
                manifest.get("version") != block.get("version"):
            raise ModelRefused("load_failed", "assignment names another release than its manifest")
        return cls(model=manifest["model"], version=str(manifest["version"]), variant=signed,
                   manifest=manifest, artifact_url=block["artifact_url"], golden_url=block["golden_url"])


@dataclass
class LoadedModel:
    """A model loaded on its runtime that passed the golden probe.

    ``run`` is safe from several threads: onnxruntime sessions are, and other runtimes (TFLite
    interpreters are not re-entrant) run under a per-model lock.
    """

    release: Release
    runner: Runner
    input_names: list[str]
    output_names: list[str]
    classification: bool
    golden: GoldenResult
    #: seconds the runtime took to load the file (the golden probe not included)
    load_seconds: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def version(self) -> str:
        return self.release.version

    @property
    def variant_id(self) -> str:
        return str(self.release.variant["id"])

    def __post_init__(self) -> None:
        if self.runner.runtime == "onnxruntime":  # InferenceSession.run is thread-safe: no lock
            self.run = self.runner.run

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            return self.runner.run(feeds)


def load_model(release: Release, model_path: Path, golden_path: Path, threads: int | None,
               golden_slack: float) -> LoadedModel:
    """Load ``model_path`` on its runtime and run the golden probe.

    The files must already be verified against ``release`` (sha256 and size).

    Raises:
        ModelRefused: ``load_failed`` when the runtime refuses the file, ``golden_mismatch``
            when the probe disagrees with the reference.
        RuntimeUnavailable: this host has no runtime for the format.
    """
    task = release.manifest["task"]
    input_names = [i["name"] for i in task["inputs"]]
    output_names = [o["name"] for o in task["outputs"]]
    variant = release.variant
    started = time.perf_counter()
    try:
        runner = open_runner(model_path, variant["format"], input_names, io=variant.get("io"),
                             threads=threads, output_names=output_names)
    except RuntimeUnavailable:
        raise
    except Exception as err:  # runtimes raise their own types for a file they cannot load
        raise ModelRefused("load_failed",
                           f"{variant['id']}: runtime cannot load it: {first_line(err)}") from None
    load_seconds = time.perf_counter() - started
    classification = task.get("kind") == "classification"
    batch = int(task["inputs"][0]["shape"][0]) if task["inputs"][0]["shape"] else 1
    try:
        golden = load_golden(golden_path, input_names, output_names)
        outputs = run_probe(runner.run, golden, max(batch, 1))
    except Exception as err:  # a model that crashes on its own probe set is not swapped in
        raise ModelRefused("golden_mismatch",
                           f"{variant['id']}: golden probe failed to run: {first_line(err)}") from None
    result = check_golden(outputs, golden, classification, expected_agreement(variant), golden_slack)
    if not result.passed:
        raise ModelRefused("golden_mismatch", f"{variant['id']} v{release.version}: {result.reason}")
    return LoadedModel(release, runner, input_names, output_names, classification, result, load_seconds)


def expected_agreement(variant: dict[str, Any]) -> float:
    """The golden agreement the converter measured for ``variant`` (``metrics.golden.agreement``);
    1.0, the strictest, when the manifest does not give it as a number."""
    golden = (variant.get("metrics") or {}).get("golden")
    agreement = golden.get("agreement") if isinstance(golden, dict) else None
    if isinstance(agreement, bool) or not isinstance(agreement, (int, float)):
        return 1.0
    return float(agreement)
