"""A real headless Chromium for page tests, driven by Playwright for Python.

Playwright cannot download a browser here, so it drives Debian's ``chromium`` package through
``executable_path`` (``EDGESHIP_CHROMIUM`` overrides the path). Missing either fails under
``CI=true`` and skips otherwise (tests/skip_policy.py). Screenshots go to
``build/screenshots`` (not committed; docs/console.md shows them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.skip_policy import missing, require_module

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "screenshots"
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    path = os.environ.get("EDGESHIP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        missing("chromium is not installed (Debian package `chromium`; `make system-deps` installs it)")
    return path


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One browser process for the session (pages and contexts are per test)."""
    sync_api = require_module("playwright.sync_api", "pip install -e '.[dev]'")
    path = chromium_path()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A browser tab that records console errors and failed requests (a page test asserts none)."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}"))

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def overflows_horizontally(self) -> bool:
        """Whether the page is wider than the screen (a phone would have to scroll sideways)."""
        return bool(self.page.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1"))


@pytest.fixture
def browser_page(chromium) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield Page(context)
    finally:
        context.close()


@pytest.fixture
def phone_page(chromium) -> Iterator[Page]:
    context = chromium.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    try:
        yield Page(context)
    finally:
        context.close()
