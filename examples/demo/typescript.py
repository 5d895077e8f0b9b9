"""Node programs built from the TypeScript SDK: compiled with the SDK's own ``tsc`` when stale.

The conformance kit's driver (``sdk/js/test/conformance/driver.ts``) and the demo's phone
worker (``sdk/js/demo/phone_fleet_worker.ts``) are small programs over ``sdk/js/src``; each has
a ``tsconfig.json`` next to it that emits under ``sdk/js/build/``. One helper decides for both
whether Node and the SDK's packages are there and whether the output is older than a source.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from examples.demo.processes import ROOT

SDK = ROOT / "sdk" / "js"
COMPILE_TIMEOUT_SECONDS = 300


class Unavailable(RuntimeError):
    """Node.js or the SDK's packages (``npm ci`` in sdk/js) are not installed."""


def node_program(tsconfig: Path, output: Path, sources: Iterable[Path]) -> list[str]:
    """The command line that runs ``output``, compiled first from ``tsconfig`` if it is stale.

    Args:
        tsconfig: the program's ``tsconfig.json`` (compiled with ``sdk/js``'s ``tsc``).
        output: the compiled entry point (``.js`` under ``sdk/js/build``).
        sources: the program's own sources; every ``sdk/js/src`` file counts too.

    Raises:
        Unavailable: no ``node`` on PATH, or no ``sdk/js/node_modules``.
        RuntimeError: ``tsc`` failed (its output is in the message).
    """
    node = shutil.which("node")
    if node is None:
        raise Unavailable("node is not installed: the TypeScript SDK needs Node.js 20.19+")
    tsc = SDK / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        raise Unavailable("sdk/js/node_modules is missing: run `npm ci --ignore-scripts` in sdk/js")
    if stale(output, [*sources, *(SDK / "src").rglob("*.ts")]):
        done = subprocess.run([str(tsc), "-p", str(tsconfig)], cwd=SDK, capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_SECONDS)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {tsconfig.relative_to(ROOT)} failed:\n"
                               f"{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return [node, str(output)]


def stale(output: Path, sources: Iterable[Path]) -> bool:
    """True when ``output`` is missing or older than any of ``sources``."""
    if not output.exists():
        return True
    built = output.stat().st_mtime
    return any(source.stat().st_mtime > built for source in sources)
