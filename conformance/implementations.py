"""The device implementations the kit judges, and how each one's driver is prepared.

Built in: ``python`` (the reference agent, ``edge_agent/conformance_driver.py``) and
``typescript`` (the SDK, ``sdk/js/test/conformance/driver.ts``, compiled with the SDK's own
``tsc`` into ``sdk/js/build/conformance`` when its sources changed). Any other implementation
(a Kotlin or Swift port) comes in as a command line: ``pytest conformance --driver
kotlin="java -jar build/edgeship-driver.jar"`` (docs/conformance.md).
"""

from __future__ import annotations

import shlex
import sys

from conformance.driver import Implementation
from examples.demo.processes import ROOT, child_env
from examples.demo.typescript import SDK, Unavailable, node_program

TS_DRIVER_SOURCE = SDK / "test" / "conformance" / "driver.ts"
TS_DRIVER = SDK / "build" / "conformance" / "test" / "conformance" / "driver.js"
BUILT_IN = ("python", "typescript")
#: ``Unavailable`` (a missing toolchain; the kit skips locally, fails under CI) is the build helper's
__all__ = ["BUILT_IN", "Unavailable", "parse_external", "prepare"]


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
        command = node_program(TS_DRIVER_SOURCE.parent / "tsconfig.json", TS_DRIVER, [TS_DRIVER_SOURCE])
        return Implementation("typescript", tuple(command), cwd=SDK)
    raise ValueError(f"no implementation {name!r}: built in are {', '.join(BUILT_IN)}; add one with --driver")


def parse_external(options: list[str]) -> dict[str, str]:
    """``NAME=COMMAND`` options into ``{name: command}``."""
    drivers: dict[str, str] = {}
    for option in options:
        name, sep, command = option.partition("=")
        if not sep or not name.strip() or not command.strip():
            raise ValueError(f"--driver takes NAME=COMMAND, got {option!r}")
        drivers[name.strip()] = command.strip()
    return drivers
