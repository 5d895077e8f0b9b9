"""The device implementations the kit judges, and how each one's driver is prepared.

Built in: ``python`` (the reference agent, ``edge_agent/conformance_driver.py``) and
``typescript`` (the SDK, ``sdk/js/test/conformance/driver.ts``, compiled with the SDK's own
``tsc`` into ``sdk/js/build/conformance`` when its sources changed). Any other implementation
(a Kotlin or Swift port) comes in as a command line: ``pytest conformance --driver
kotlin="java -jar build/edgeship-driver.jar"`` (docs/conformance.md).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from conformance.driver import Implementation
from examples.demo.processes import ROOT, child_env

SDK = ROOT / "sdk" / "js"
TS_DRIVER_SOURCE = SDK / "test" / "conformance" / "driver.ts"
TS_DRIVER = SDK / "build" / "conformance" / "test" / "conformance" / "driver.js"
BUILT_IN = ("python", "typescript")


class Unavailable(RuntimeError):
    """What an implementation needs is not installed (the kit skips it locally, fails under CI)."""


def prepare(name: str, external: dict[str, str]) -> Implementation:
    """The implementation called ``name``, ready to start.

    Raises:
        Unavailable: its toolchain is missing (no node, no ``npm ci`` in sdk/js).
        RuntimeError: its build failed.
    """
    if name in external:
        return Implementation(name, tuple(shlex.split(external[name])), cwd=ROOT)
    if name == "python":
        return Implementation("python", (sys.executable, "-m", "edge_agent.conformance_driver"),
                              env=child_env(), cwd=ROOT)
    if name == "typescript":
        return Implementation("typescript", (_node(), str(TS_DRIVER)), cwd=SDK)
    raise ValueError(f"no implementation {name!r}: built in are {', '.join(BUILT_IN)}; add one with --driver")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise Unavailable("node is not installed: the TypeScript SDK's driver needs Node.js 20.19+")
    tsc = SDK / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        raise Unavailable("sdk/js/node_modules is missing: run `npm ci --ignore-scripts` in sdk/js")
    if _stale(TS_DRIVER, [TS_DRIVER_SOURCE, *(SDK / "src").rglob("*.ts")]):
        done = subprocess.run([str(tsc), "-p", str(TS_DRIVER_SOURCE.parent / "tsconfig.json")], cwd=SDK,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError("compiling the TypeScript driver failed:\n"
                               f"{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return node


def _stale(output: Path, sources: list[Path]) -> bool:
    if not output.exists():
        return True
    built = output.stat().st_mtime
    return any(source.stat().st_mtime > built for source in sources)


def parse_external(options: list[str]) -> dict[str, str]:
    """``NAME=COMMAND`` options into ``{name: command}``."""
    drivers: dict[str, str] = {}
    for option in options:
        name, sep, command = option.partition("=")
        if not sep or not name.strip() or not command.strip():
            raise ValueError(f"--driver takes NAME=COMMAND, got {option!r}")
        drivers[name.strip()] = command.strip()
    return drivers
