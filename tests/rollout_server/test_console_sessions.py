"""Console sign-in and sessions over the real app (docs/console.md): cookie flags, CSRF, expiry,
revocation, sign-out."""

from __future__ import annotations

import re

import pytest

from rollout_server.console.sessions import COOKIE, LOGIN_COOKIE
from tests.rollout_server.clocked import FakeClock, clocked_app
from tests.rollout_server.conftest import auth

clock = FakeClock.fixture()
app = clocked_app(CONSOLE_SESSION_HOURS=8, CONSOLE_IDLE_MINUTES=30)


def form_csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def sign_in(client, token: str, **headers):
    page = client.get("/console/login")
    return client.post("/console/login", data={"token": token, "csrf": form_csrf(page.text),
                                               "next": "/console/fleet"}, headers=headers)


def set_cookie_headers(response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.getlist("Set-Cookie")}


def test_pages_need_a_session_and_say_where_to_sign_in(client) -> None:
    response = client.get("/console/fleet")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/console/login?next=/console/fleet")


def test_sign_in_sets_a_strict_httponly_cookie_and_the_page_shows_the_role(client, tokens) -> None:
    response = sign_in(client, tokens["admin"])
    assert response.status_code == 303 and response.headers["Location"] == "/console/fleet"
    cookie = set_cookie_headers(response)[COOKIE]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here: a Secure cookie would never come back
    page = client.get("/console/fleet")
    assert page.status_code == 200 and "admin · admin" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store" and page.headers["X-Frame-Options"] == "DENY"


def test_the_cookie_is_secure_under_tls(app, tokens) -> None:
    client = app.test_client()
    page = client.get("/console/login", base_url="https://console.test")
    assert "Secure" in set_cookie_headers(page)[LOGIN_COOKIE]
    response = client.post("/console/login", base_url="https://console.test",
                           data={"token": tokens["admin"], "csrf": form_csrf(page.text)})
    assert response.status_code == 303 and "Secure" in set_cookie_headers(response)[COOKIE]


@pytest.mark.parametrize("case", ["no csrf", "wrong csrf", "other origin"])
def test_a_sign_in_without_the_forms_token_or_from_another_site_is_refused(client, tokens, case) -> None:
    page = client.get("/console/login")
    data = {"token": tokens["admin"], "csrf": form_csrf(page.text)}
    headers = {}
    if case == "no csrf":
        del data["csrf"]
    elif case == "wrong csrf":
        data["csrf"] = "x" * 32
    else:
        headers["Origin"] = "https://evil.example"
    response = client.post("/console/login", data=data, headers=headers)
    assert response.status_code == 400 and COOKIE not in set_cookie_headers(response)
    assert client.get("/console/fleet").status_code == 303


@pytest.mark.parametrize("which", ["unknown", "enrollment"])
def test_only_operator_tokens_sign_in(client, tokens, which) -> None:
    token = "es_nope" if which == "unknown" else tokens["enroll"]
    response = sign_in(client, token)
    assert response.status_code == 401 and "Unknown, revoked or expired operator token" in response.text
    assert COOKIE not in set_cookie_headers(response)


def test_a_session_ends_when_idle_and_at_its_deadline(client, tokens, clock) -> None:
    sign_in(client, tokens["admin"])
    clock.advance(29 * 60)
    assert client.get("/console/fleet").status_code == 200  # used within the idle limit
    clock.advance(29 * 60)
    assert client.get("/console/fleet").status_code == 200  # idle counts from the last page
    clock.advance(31 * 60)
    assert client.get("/console/fleet").status_code == 303  # idle too long
    sign_in(client, tokens["admin"])
    for _ in range(17):  # busy all day: ends at 8 h anyway
        clock.advance(29 * 60)
        client.get("/console/fleet")
    assert client.get("/console/fleet").status_code == 303


def test_revoking_the_token_ends_its_sessions(client, tokens) -> None:
    made = client.post("/v1/tokens", headers=auth(tokens["admin"]), json={"name": "ops", "role": "operator"})
    assert made.status_code == 201, made.json
    sign_in(client, made.json["token"])
    assert client.get("/console/fleet").status_code == 200
    revoked = client.post(f"/v1/tokens/{made.json['id']}/revoke", headers=auth(tokens["admin"]))
    assert revoked.status_code == 200, revoked.json
    assert client.get("/console/fleet").status_code == 303


def test_sign_out_needs_the_csrf_token_and_kills_the_cookie(client, tokens) -> None:
    sign_in(client, tokens["admin"])
    page = client.get("/console/fleet")
    stolen = client.get_cookie(COOKIE, path="/console").value
    assert client.post("/console/logout", data={"csrf": "forged"}).status_code == 400
    assert client.get("/console/fleet").status_code == 200  # a forged sign-out did nothing
    response = client.post("/console/logout", data={"csrf": form_csrf(page.text)})
    assert response.status_code == 303
    client.set_cookie(COOKIE, stolen, path="/console")  # a copy of the cookie is worth nothing now
    assert client.get("/console/fleet").status_code == 303


def test_sign_in_cannot_redirect_off_the_console(client, tokens) -> None:
    page = client.get("/console/login?next=https://evil.example/")
    response = client.post("/console/login", data={"token": tokens["admin"], "csrf": form_csrf(page.text),
                                                   "next": "//evil.example/x"})
    assert response.headers["Location"] == "/console/fleet"

