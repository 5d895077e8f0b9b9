"""The signed example releases the kit publishes, built once into ``build/conformance``.

``examples.releases`` trains the digits CNN twice and converts each into a signed release with
one ONNX variant (every implementation runs ONNX), plus a release whose golden set disagrees
with its model. The build runs in a subprocess (it imports torch; the kit does not) under a
file lock, and is skipped when the cache is complete. Release 4 (:func:`two_variants`) is made
from release 2 in the kit's own process: two ONNX variants of the same model, for the next
variant after a refusal.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from examples.demo.processes import ROOT, child_env

CACHE = ROOT / "build" / "conformance"
KINDS = "onnx-fp32"
VERSIONS = ("1", "2", "3")
#: release 4: two ONNX variants; the server prefers PREFERRED (faster), then FALLBACK (release 2's file)
TWO_VARIANTS = "4"
PREFERRED, FALLBACK = "onnx-fp32-fast", "onnx-fp32"


@dataclass(frozen=True)
class Releases:
    """Paths of the built releases and of the key they are signed with."""

    public_key: Path
    release_dirs: dict[str, Path]  # version -> directory
    eval_path: Path

    def manifest(self, version: str) -> dict:
        return json.loads((self.release_dirs[version] / "manifest.json").read_text())

    def variant(self, version: str, variant_id: str | None = None) -> dict:
        """The release's variant entry ``variant_id`` (default: its only one), as signed."""
        variants = self.manifest(version)["variants"]
        if variant_id is None:
            (variant,) = variants
            return variant
        return next(v for v in variants if v["id"] == variant_id)

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
        target = cache / "releases" / "digits-cnn-4-two-variants"
        if not (target / "manifest.json").exists():
            two_variants(releases.release_dirs["2"], target, TWO_VARIANTS, cache / "keys" / "publisher.key")
    return Releases(releases.public_key, {**releases.release_dirs, TWO_VARIANTS: target}, releases.eval_path)


def two_variants(source: Path, target: Path, version: str, private_key: Path) -> Path:
    """Copy release ``source`` as ``version`` with a second ONNX variant the server prefers.

    The new variant is the same model with another ``doc_string`` (so other bytes, another sha256,
    the same answers) and half the measured latency, so the server offers it first and the
    original second. The manifest is re-signed with ``private_key``.
    """
    import onnx

    from edgeship.contract.manifest import Manifest
    from edgeship.contract.signing import load_private_key, sign_manifest

    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    shutil.copytree(source, partial)
    data = json.loads((partial / "manifest.json").read_text())
    (original,) = data["variants"]
    model = onnx.load(str(partial / original["file"]))
    model.doc_string = f"{PREFERRED}: the same model, other bytes"
    fast_file = partial / f"{PREFERRED}.onnx"
    onnx.save(model, str(fast_file))
    fast = json.loads(json.dumps(original))
    fast.update(id=PREFERRED, file=fast_file.name, sha256=hashlib.sha256(fast_file.read_bytes()).hexdigest(),
                size_bytes=fast_file.stat().st_size)
    fast["metrics"]["latency_ms"]["p50"] = original["metrics"]["latency_ms"]["p50"] / 2
    data["version"] = version
    data["variants"] = [fast, original]
    Manifest.from_dict(sign_manifest(data, load_private_key(private_key))).write(partial)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def _cached(cache: Path) -> Releases | None:
    names = {"1": "digits-cnn-1", "2": "digits-cnn-2", "3": "digits-cnn-3-golden-mismatch"}
    dirs = {version: cache / "releases" / names[version] for version in VERSIONS}
    releases = Releases(cache / "keys" / "publisher.pub", dirs, cache / "data" / "eval.npz")
    complete = releases.public_key.exists() and releases.eval_path.exists() and all(
        (d / "manifest.json").exists() for d in dirs.values())
    return releases if complete else None
