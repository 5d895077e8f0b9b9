"""The console in a real Chromium against a real ``edgeship server``: sign in with a token, read the
fleet, stay readable on a phone, sign out; no console errors, no failed requests on any page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from benchmarks.server_setup import MODEL, VERSION, make_release
from edgeship.contract.signing import generate_keypair
from examples.demo.server import ServerProcess
from tests.browser import Page
from tests.rollout_server.conftest import edgeship
from tests.rollout_server.test_release_figures import png


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("console")
    private, public = generate_keypair(root / "keys")
    process = ServerProcess(root / "server", str(public)).start()
    try:
        release = make_release(root / "release", private, figures={"report.png": png(320, 120)})
        for command in (("publish", release), ("models", "set-stable", MODEL, VERSION)):
            done = edgeship(*command, "--server", process.url, token=process.admin)
            assert done.returncode == 0, done.stderr
        for device_class, runtimes in (("rpi4", {"litert": "2.3.0"}), ("android", {"onnxruntime": "1.20.1"}),
                                       ("android", {"onnxruntime": "1.20.1"})):
            answer = requests.post(f"{process.url}/v1/devices/register", timeout=30, json={
                "enrollment_token": process.enroll, "device_class": device_class, "arch": "aarch64",
                "os": "test", "ram_bytes": 4 * 2**30, "runtimes": runtimes})
            assert answer.status_code == 201, answer.text
        yield process
    finally:
        process.stop()


def sign_in(tab: Page, server: ServerProcess, token: str) -> None:
    tab.page.goto(f"{server.url}/console/fleet")
    assert "/console/login" in tab.page.url  # no session: sent to sign in, and back afterwards
    tab.page.fill("#token", token)
    tab.page.click("button[type=submit]")
    tab.page.wait_for_url("**/console/fleet")


def test_sign_in_read_the_fleet_and_sign_out(browser_page: Page, server: ServerProcess) -> None:
    tab = browser_page
    tab.page.goto(f"{server.url}/console/login")
    tab.page.fill("#token", "es_not-a-token")
    tab.page.click("button[type=submit]")
    assert "Unknown, revoked or expired operator token" in tab.page.inner_text("[role=alert]")
    assert tab.errors and "401" in tab.errors[0]  # the refused sign-in is a 401, which Chromium logs
    tab.errors.clear()
    sign_in(tab, server, server.admin)
    assert tab.page.inner_text("#admission-accepted .n") == "3"
    rows = tab.page.locator("#by-class tbody tr").all_inner_texts()
    assert any(r.split("\t")[:2] == ["android", "2"] for r in rows), rows
    assert "admin · admin" in tab.page.inner_text(".who")
    cookie = next(c for c in tab.context.cookies() if c["name"] == "edgeship_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert tab.page.evaluate("document.cookie") == ""  # scripts never see the session
    tab.screenshot("console-fleet")
    tab.page.click("form.signout button")
    tab.page.wait_for_url("**/console/login")
    tab.page.goto(f"{server.url}/console/fleet")
    assert "/console/login" in tab.page.url
    assert tab.errors == []


def test_the_fleet_page_is_readable_on_a_phone(phone_page: Page, server: ServerProcess) -> None:
    tab = phone_page
    sign_in(tab, server, server.admin)
    assert not tab.overflows_horizontally()
    assert tab.page.is_visible("#by-class") and tab.page.is_visible("form.signout button")
    path = tab.screenshot("console-fleet-phone")
    assert Path(path).stat().st_size > 0
    assert tab.errors == []


def test_a_release_shows_its_variants_and_who_signed_and_published_it(browser_page: Page,
                                                                       server: ServerProcess) -> None:
    tab = browser_page
    sign_in(tab, server, server.admin)
    tab.page.click("nav >> text=Models")
    tab.page.click(f"#models >> text={MODEL}")
    tab.page.click(f"#releases >> text={VERSION}")
    facts = tab.page.inner_text("#release-facts")
    assert "published by\tadmin" in facts.replace("\n", "\t") and "signed by" in facts
    variants = tab.page.locator("#variants tbody tr").all_inner_texts()
    assert [v.split("\t")[0] for v in variants] == ["onnx-fp32", "tflite-int8"]
    assert "passed" in variants[0] and "0.200" in variants[0]  # p50 as the converter measured it
    figure = tab.page.locator("#figures img")
    assert figure.count() == 1 and "figure report.png" in tab.page.inner_text("#figures")
    figure.scroll_into_view_if_needed()
    tab.page.wait_for_function("document.querySelector('#figures img').complete")
    assert figure.evaluate("img => img.naturalWidth") == 320  # served, allowed by the CSP, decoded
    tab.screenshot("console-release")
    assert tab.errors == []


@pytest.mark.parametrize("path", ["/console/fleet", "/console/models", f"/console/models/{MODEL}",
                                  f"/console/models/{MODEL}/{VERSION}", "/console/rollouts",
                                  "/console/webhooks"])
def test_every_page_loads_cleanly_on_a_phone(phone_page: Page, server: ServerProcess, path: str) -> None:
    tab = phone_page
    sign_in(tab, server, server.admin)
    answer = tab.page.goto(f"{server.url}{path}")
    assert answer is not None and answer.status == 200
    assert not tab.overflows_horizontally(), path  # wide tables scroll inside their card
    assert tab.errors == []
