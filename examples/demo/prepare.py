"""Set-up of the demo: the signed example releases, built once and cached, and a summary of them.

The releases are :mod:`examples.releases`' (two trainings of the digits CNN, each converted and
validated into signed variants, and a re-signed release whose golden set no longer matches its
model). They are built in a subprocess (``python -m examples.releases``) so the demo process
never holds torch, and only when ``DIR/releases/*/manifest.json`` are missing: a second run
starts at once. Delete the directory to rebuild.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from examples.demo.processes import Children, spawn
from examples.releases import DEFAULT_KINDS, MODEL_NAME

BUILD_TIMEOUT_SECONDS = 1800.0


def cached_releases(directory: Path) -> dict[str, Any] | None:
    """The paths :func:`examples.releases.build_releases` returns, if everything is on disk."""
    folder = directory / "releases"
    releases = {"1": folder / f"{MODEL_NAME}-1", "2": folder / f"{MODEL_NAME}-2",
                "3": folder / f"{MODEL_NAME}-3-golden-mismatch"}
    keys = directory / "keys"
    needed = [*(r / "manifest.json" for r in releases.values()), keys / "publisher.pub",
              directory / "data" / "eval.npz"]
    if not all(path.exists() for path in needed):
        return None
    return {"keys": {"private": str(keys / "publisher.key"), "public": str(keys / "publisher.pub")},
            "releases": {v: str(p) for v, p in releases.items()},
            "eval": str(directory / "data" / "eval.npz")}


def ensure_releases(directory: Path, children: Children, kinds: tuple[str, ...] = DEFAULT_KINDS,
                    say=print) -> dict[str, Any]:
    """The cached releases, or build them first (train + convert: about a minute).

    Raises:
        RuntimeError: the build failed (its log is named).
    """
    directory = Path(directory).resolve()  # children run in the repository, not in our cwd
    found = cached_releases(directory)
    if found is not None:
        say(f"releases: cached in {directory} (delete it to rebuild)")
        return found
    log = directory / "build.log"
    say(f"releases: training two digits CNNs and converting them ({', '.join(kinds)}); "
        f"first run only, about a minute (log: {log})")
    started = time.monotonic()
    command = [sys.executable, "-m", "examples.releases", "--out", str(directory), "--kinds", ",".join(kinds)]
    process = children.add("release-build", spawn(command, log))
    try:
        code = process.wait(timeout=BUILD_TIMEOUT_SECONDS)
    finally:
        children.stop(process)
    found = cached_releases(directory)
    if code != 0 or found is None:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"building the example releases failed ({code}); see {log}:\n{tail}")
    say(f"releases: built in {time.monotonic() - started:.0f} s")
    return found


def variant_table(release_dir: str) -> list[str]:
    """A short table of a release's variants from its manifest (what the converter measured)."""
    manifest = json.loads((Path(release_dir) / "manifest.json").read_text())
    lines = [f"  {manifest['model']} v{manifest['version']}: {len(manifest['variants'])} signed variants",
             f"    {'variant':<20}{'runtime':<14}{'size KB':>9}{'accuracy':>10}{'p50 ms':>8}  validation"]
    for v in manifest["variants"]:
        metrics = v.get("metrics") or {}
        accuracy = metrics.get("accuracy")
        p50 = (metrics.get("latency_ms") or {}).get("p50")
        lines.append(f"    {v['id']:<20}{v['runtime']['name']:<14}{v['size_bytes'] / 1024:>9.1f}"
                     f"{(f'{100 * accuracy:.1f}%' if accuracy is not None else '–'):>10}"
                     f"{(f'{p50:.3f}' if p50 is not None else '–'):>8}  {v['validation']}")
    return lines
