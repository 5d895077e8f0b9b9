"""When a test may skip: anywhere locally, under ``CI=true`` only for a reason on :data:`ALLOWED_SKIPS`.

A skip hides a missing part (a package, a server binary, a toolchain) as well as it hides a test
that does not apply. So with ``CI`` set (``.ci/run`` exports ``CI=true``) every skip whose reason
is not on the allow-list becomes a failure that names the reason: at collection (a module-level
``pytest.importorskip``), at setup (a ``skipif`` mark, a fixture's ``pytest.skip``) and in the
test itself. Locally (``CI`` unset) skips stay skips, and ``-rs`` lists every reason.

Fixtures that need something from outside Python call :func:`missing` (fail under CI, skip
otherwise) before anything else; tests that run in both venvs and need a package only the dev
venv has call :func:`dev_venv_only`. Loaded as a plugin by ``tests/conftest.py``
(``pytest_plugins``), and by ``tests/test_skip_policy.py`` with ``-p tests.skip_policy``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NoReturn

import pytest


def in_ci() -> bool:
    """``CI`` is set to anything but empty, ``0``, ``false`` or ``no``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def agent_only_venv() -> bool:
    """The run in the agent-only venv (``make test-agent-only`` sets ``EDGESHIP_AGENT_ONLY=1``)."""
    return bool(os.environ.get("EDGESHIP_AGENT_ONLY"))


#: reason prefixes (the skips below write them; nothing else may) and the machines they are for.
COREML_NEEDS_MACOS = "CoreML prediction needs macOS:"
AGENT_VENV_ONLY = "agent-only venv:"
DEV_VENV_ONLY = "dev venv only:"


def _anywhere() -> bool:
    return True


@dataclass(frozen=True)
class AllowedSkip:
    """A skip reason allowed under CI: its reason starts with ``prefix`` and ``applies()`` holds."""

    prefix: str
    why: str
    applies: Callable[[], bool] = _anywhere

    def matches(self, reason: str) -> bool:
        return reason.startswith(self.prefix) and bool(self.applies())


#: The whole allow-list: every other skip fails a run under CI=true.
ALLOWED_SKIPS: tuple[AllowedSkip, ...] = (
    AllowedSkip(COREML_NEEDS_MACOS,
                "Core ML predicts only on macOS: a test of the predict path, or of its refusal "
                "elsewhere, runs on one side only"),
    AllowedSkip(AGENT_VENV_ONLY,
                "a check of the agent-only venv itself (no heavy packages); the dev venv skips it "
                "and `make test-agent-only` runs it",
                applies=lambda: not agent_only_venv()),
    AllowedSkip(DEV_VENV_ONLY,
                "a test of an agent part against the server or a toolchain the agent-only venv must "
                "not have (Flask, onnx, prometheus_client); `make test` runs it in the dev venv",
                applies=agent_only_venv),
)


def allowed(reason: str) -> AllowedSkip | None:
    """The allow-list entry that lets ``reason`` skip under CI here, if any."""
    return next((entry for entry in ALLOWED_SKIPS if entry.matches(reason)), None)


def missing(reason: str) -> NoReturn:
    """Something a test needs is not installed: fail under CI, skip (with ``reason``) otherwise."""
    __tracebackhide__ = True  # the skip or failure points at the test that asked
    if in_ci():
        pytest.fail(f"missing under CI=true (install it; skips hide missing parts): {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, hint: str = "") -> ModuleType:
    """Import ``name``; when it is missing, :func:`missing` (fails under CI)."""
    __tracebackhide__ = True  # the skip or failure points at the test that asked
    try:
        return importlib.import_module(name)
    except ImportError as err:
        problem = f"could not import {name!r}: {err}" + (f" ({hint})" if hint else "")
    missing(problem)


def dev_venv_only(name: str) -> ModuleType:
    """Import ``name`` for a test that the agent-only venv skips by design.

    In the agent-only venv, where ``name`` must be missing, the test skips with an allowed
    reason; anywhere else a missing ``name`` is :func:`missing` (a failure under CI).
    """
    __tracebackhide__ = True  # the skip or failure points at the test that asked
    try:
        return importlib.import_module(name)
    except ImportError as err:
        problem = f"could not import {name!r}: {err}"
    if agent_only_venv():
        pytest.skip(f"{DEV_VENV_ONLY} needs {name}, which the agent-only venv does not have",
                    allow_module_level=True)
    missing(problem)


def skip_reason(report: Any) -> str:
    """The reason of a skipped test or collection report (without pytest's ``Skipped: ``)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return re.sub(r"^Skipped: ", "", reason)


def _refuse(report: Any) -> None:
    """Turn a skipped report into a failure when CI is set and its reason is not allowed."""
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    reason = skip_reason(report)
    if allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true, which allows only the skips in tests/skip_policy.py "
        f"ALLOWED_SKIPS ({', '.join(repr(e.prefix) for e in ALLOWED_SKIPS)}): {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    _refuse(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    _refuse(report)
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    if not skipped and not in_ci():
        return
    by_entry = Counter((allowed(skip_reason(r)) or AllowedSkip("not on the allow-list", "")).prefix
                       for r in skipped)
    counts = ", ".join(f"{n} {prefix!r}" for prefix, n in sorted(by_entry.items())) or "none"
    policy = "CI=true: only allow-listed skips" if in_ci() else "CI unset: skips allowed"
    terminalreporter.write_line(f"skips ({policy}): {len(skipped)} skipped: {counts}"
                                f" [{'agent-only' if agent_only_venv() else 'dev'} venv, {sys.platform}]")
