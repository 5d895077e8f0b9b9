"""The signed example releases the kit publishes, built once into ``build/conformance``.

``examples.releases`` trains the digits CNN twice and converts each into a signed release with
one ONNX variant (every implementation runs ONNX), plus a release whose golden set disagrees
with its model. The build runs in a subprocess (it imports torch; the kit does not) under a
file lock, and is skipped when the cache is complete.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from examples.demo.processes import ROOT, child_env

CACHE = ROOT / "build" / "conformance"
KINDS = "onnx-fp32"
VERSIONS = ("1", "2", "3")


@dataclass(frozen=True)
class Releases:
    """Paths of the built releases and of the key they are signed with."""

    public_key: Path
    release_dirs: dict[str, Path]  # version -> directory
    eval_path: Path

    def manifest(self, version: str) -> dict:
        return json.loads((self.release_dirs[version] / "manifest.json").read_text())

    def variant(self, version: str) -> dict:
        """The release's (only) variant entry, as signed."""
        (variant,) = self.manifest(version)["variants"]
        return variant

    def inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """Real digits (``(n, 1, 8, 8)`` float32) and their labels, to feed devices."""
        with np.load(self.eval_path) as data:
            return data["image"].astype(np.float32), data["labels"].astype(np.int64)


def build(cache: Path = CACHE, timeout_seconds: float = 1800) -> Releases:
    """The releases in ``cache``, built first if they are not all there.

    Raises:
        RuntimeError: the build failed (its stderr in the message).
    """
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two kit runs at once build once
        releases = _cached(cache)
        if releases is None:
            command = [sys.executable, "-m", "examples.releases", "--out", str(cache), "--kinds", KINDS]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=child_env(),
                                  timeout=timeout_seconds)
            if done.returncode != 0:
                raise RuntimeError(f"building the example releases failed: {done.stderr[-2000:]}")
            releases = _cached(cache)
            if releases is None:
                raise RuntimeError(f"the example releases are incomplete in {cache} after a build")
    return releases


def _cached(cache: Path) -> Releases | None:
    names = {"1": "digits-cnn-1", "2": "digits-cnn-2", "3": "digits-cnn-3-golden-mismatch"}
    dirs = {version: cache / "releases" / names[version] for version in VERSIONS}
    releases = Releases(cache / "keys" / "publisher.pub", dirs, cache / "data" / "eval.npz")
    complete = releases.public_key.exists() and releases.eval_path.exists() and all(
        (d / "manifest.json").exists() for d in dirs.values())
    return releases if complete else None
