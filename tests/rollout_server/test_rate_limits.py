"""Per-client limits over real HTTP: 429 ``rate_limited`` with Retry-After, counted in /metrics by
reason, audited once per lockout; other clients and credentials that worked are unaffected.

Requests come from distinct loopback addresses (127.0.0.x: the socket binds its source), so the
server sees distinct clients exactly as it would on a network. Time moves by the app's ``CLOCK``.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout_server import rate_limits
from rollout_server.app import create_app
from rollout_server.auth import FIRST_START_FILE
from rollout_server.openapi import openapi_document
from tests.edge_agent.conftest import wait_until
from tests.rollout_server.conftest import FIXED_DAYS, seed_release, serving, variant_entry
from tests.rollout_server.served import edgeship_server
from tests.rollout_server.test_metrics import value


class Clock:
    """The app's wall clock (``CLOCK``), moved by hand."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Server:
    """A test app served on a loopback port, called from any 127.0.0.x source address."""

    def __init__(self, app, port: int, clock: Clock) -> None:
        self.app, self.port, self.clock = app, port, clock
        text = (Path(app.config["DATA_DIR"]) / FIRST_START_FILE).read_text()
        pairs = dict(line.split("=", 1) for line in text.split())
        self.admin, self.enroll = pairs["EDGESHIP_ADMIN_TOKEN"], pairs["EDGESHIP_ENROLL_TOKEN"]

    def call(self, method: str, path: str, *, source: str = "127.0.0.1", token: str | None = None,
             body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        """``method path`` from ``source``: (status, JSON body or bytes, headers)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10,
                                                source_address=(source, 0))
        all_headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=data, headers=all_headers)
            response = connection.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw.startswith(b"{") else raw, response.headers
        finally:
            connection.close()

    def register(self, enroll: str, source: str = "127.0.0.1") -> tuple[int, Any, Any]:
        return self.call("POST", "/v1/devices/register", source=source, body={
            "enrollment_token": enroll, "device_class": "rpi4", "arch": "aarch64", "os": "Raspberry Pi OS 12",
            "ram_bytes": 4 * 2**30, "runtimes": {"onnxruntime": "1.20.1"}})

    def metrics(self) -> dict[str, list]:
        from prometheus_client.parser import text_string_to_metric_families

        status, text, _ = self.call("GET", "/metrics")
        assert status == 200
        return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}

    def limited(self, route_group: str, reason: str) -> float:
        return value(self.metrics()["edgeship_rate_limited"], "edgeship_rate_limited_total",
                     route_group=route_group, reason=reason)

    def auth_failures(self, reason: str) -> float:
        return value(self.metrics()["edgeship_auth_failures"], "edgeship_auth_failures_total", reason=reason)

    def lockouts(self, expected: int) -> list[dict]:
        """The audit log's rate-limit entries once there are ``expected`` (written just after the
        answer that began a lockout), read with the admin token from an address of its own."""

        def entries() -> list[dict]:
            status, body, _ = self.call("GET", "/v1/audit?limit=1000", source="127.0.0.254", token=self.admin)
            assert status == 200, body
            return [e for e in body["entries"] if e["action"] == "rate_limited"]

        wait_until(lambda: len(entries()) >= expected, timeout=10, what=f"{expected} audit entries")
        found = entries()
        assert len(found) == expected, found
        return found


@pytest.fixture
def server_with(tmp_path: Path) -> Iterator:
    """Call with config overrides; yields a :class:`Server` (one per test)."""
    with_stack: list = []

    def start(**config: Any) -> Server:
        clock = Clock()
        app = create_app({"DATA_DIR": str(tmp_path / f"server{len(with_stack)}"), "CONTROLLER_ENABLED": False,
                          "CLOCK": clock, **FIXED_DAYS, **config})
        context = serving(app)
        port = context.__enter__()
        with_stack.append(context)
        return Server(app, port, clock)

    yield start
    for context in reversed(with_stack):
        context.__exit__(None, None, None)


def assert_rate_limited(status: int, body: Any, headers, longest: int) -> None:
    assert status == 429, body
    assert body["error"] == "rate_limited" and body["detail"]
    assert 1 <= int(headers["Retry-After"]) <= longest


def test_300_wrong_enrollment_tokens_from_one_address_are_refused_after_the_limit(server_with):
    """The issue's row with the default limits: 100 failures in 300 s lock the address out."""
    server = server_with()
    answers = [server.register(f"es_wrong-{i}", source="127.0.0.2") for i in range(300)]
    assert [status for status, _, _ in answers[:100]] == [401] * 100
    for status, body, headers in answers[100:]:
        assert_rate_limited(status, body, headers, longest=300)
    assert server.register(server.enroll, source="127.0.0.2")[0] == 429  # a right token too: no oracle
    assert server.register(server.enroll, source="127.0.0.3")[0] == 201  # another address: unaffected
    assert server.auth_failures("enrollment_token") == 100
    assert server.limited("register", "auth_failures") == 201
    [entry] = server.lockouts(1)
    assert entry["actor"] == "system" and entry["target"] == "client:127.0.0.2"
    assert entry["detail"]["reason"] == "auth_failures" and entry["detail"]["route_group"] == "register"
    server.clock.advance(300)
    assert server.register(server.enroll, source="127.0.0.2")[0] == 201


def test_300_wrong_admin_tokens_lock_new_credentials_out_but_not_ones_that_worked(server_with):
    server = server_with()
    assert server.call("GET", "/v1/models", source="127.0.0.2", token=server.admin)[0] == 200
    status, created, _ = server.call("POST", "/v1/tokens", token=server.admin,
                                     body={"name": "ci", "role": "viewer"})
    assert status == 201, created
    statuses = [server.call("GET", "/v1/models", source="127.0.0.2", token=f"es_guess-{i}")
                for i in range(300)]
    assert [s for s, _, _ in statuses[:100]] == [401] * 100
    for answer in statuses[100:]:
        assert_rate_limited(*answer, longest=300)
    # a token never seen working is refused from the locked address even though it is right...
    assert_rate_limited(*server.call("GET", "/v1/models", source="127.0.0.2", token=created["token"]),
                        longest=300)
    # ...while the admin token that worked from there before goes on working, and others are unaffected
    assert server.call("GET", "/v1/models", source="127.0.0.2", token=server.admin)[0] == 200
    assert server.call("GET", "/v1/models", source="127.0.0.4", token=created["token"])[0] == 200
    assert server.call("GET", "/v1/models", source="127.0.0.4", token="es_guess-x")[0] == 401
    assert server.auth_failures("operator_token") == 101
    assert server.limited("operator", "auth_failures") == 201
    [entry] = server.lockouts(1)
    assert entry["target"] == "client:127.0.0.2" and entry["detail"]["route_group"] == "operator"
    server.clock.advance(299)
    assert server.call("GET", "/v1/models", source="127.0.0.2", token="es_guess-y")[0] == 429
    server.clock.advance(1)
    assert server.call("GET", "/v1/models", source="127.0.0.2", token="es_guess-y")[0] == 401
    [server.call("GET", "/v1/models", source="127.0.0.2", token=f"es_again-{i}") for i in range(100)]
    assert len(server.lockouts(2)) == 2  # a new lockout, a new entry


def test_devices_behind_one_address_keep_working_while_a_misconfigured_one_is_locked_out(server_with):
    server = server_with(AUTH_FAILURE_LIMIT=10, AUTH_FAILURE_WINDOW_SECONDS=60)
    seed_release(server.app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    nat = "127.0.0.5"
    working, newcomer = (server.register(server.enroll, source=nat)[1] for _ in range(2))
    poll = "/v1/devices/{}/assignment?model=digits-cnn"
    assert server.call("GET", poll.format(working["device_id"]), source=nat,
                       token=working["credential"])[0] == 200
    broken = [server.call("GET", poll.format(working["device_id"]), source=nat, token="es_stale")[0]
              for _ in range(15)]
    assert broken == [401] * 10 + [429] * 5
    assert server.call("GET", poll.format(working["device_id"]), source=nat,
                       token=working["credential"])[0] == 200
    # a credential not yet seen working waits out the lock (then works), as a registration does
    assert server.call("GET", poll.format(newcomer["device_id"]), source=nat,
                       token=newcomer["credential"])[0] == 429
    assert server.register(server.enroll, source=nat)[0] == 429
    server.clock.advance(60)
    assert server.call("GET", poll.format(newcomer["device_id"]), source=nat,
                       token=newcomer["credential"])[0] == 200
    assert server.auth_failures("device_credential") == 10
    assert server.limited("device", "auth_failures") == 6
    assert server.limited("register", "auth_failures") == 1


def test_a_lockout_begun_inside_a_write_is_audited_after_it_not_blocked_by_it(server_with):
    """An exhausted enrollment token fails after its transaction took SQLite's write lock: the
    audit entry is written once that request ends, not waited for under it (30 s busy timeout)."""
    server = server_with(AUTH_FAILURE_LIMIT=1)
    status, created, _ = server.call("POST", "/v1/tokens", source="127.0.0.254", token=server.admin,
                                     body={"name": "one-device", "role": "enroll", "max_uses": 1})
    assert status == 201, created
    assert server.register(created["token"], source="127.0.0.10")[0] == 201
    status, body, _ = server.register(created["token"], source="127.0.0.10")  # 30 s here if it waited
    assert (status, body["error"]) == (401, "enrollment_exhausted")
    [entry] = server.lockouts(1)
    assert entry["target"] == "client:127.0.0.10"


def test_requests_without_a_credential_are_counted_but_lock_nothing(server_with):
    server = server_with(AUTH_FAILURE_LIMIT=5)
    assert [server.call("GET", "/v1/models", source="127.0.0.6")[0] for _ in range(20)] == [401] * 20
    assert server.call("GET", "/v1/models", source="127.0.0.6", token=server.admin)[0] == 200
    assert server.auth_failures("missing_credential") == 20
    assert server.auth_failures("operator_token") == 0 and server.lockouts(0) == []


def test_a_revoked_device_is_counted_by_its_own_reason(server_with):
    server = server_with()
    _, device, _ = server.register(server.enroll)
    assert server.call("POST", f"/v1/devices/{device['device_id']}/revoke", token=server.admin,
                       body={})[0] == 200
    status, body, _ = server.call("GET", f"/v1/devices/{device['device_id']}/assignment?model=m",
                                  token=device["credential"])
    assert (status, body["error"]) == (401, "device_revoked")
    assert server.auth_failures("device_revoked") == 1 and server.auth_failures("device_credential") == 0


def test_x_forwarded_for_is_ignored_by_default(server_with):
    server = server_with(AUTH_FAILURE_LIMIT=5)
    for i in range(5):
        server.call("GET", "/v1/models", token=f"es_{i}", headers={"X-Forwarded-For": "203.0.113.1"})
    status, _, _ = server.call("GET", "/v1/models", token="es_x", headers={"X-Forwarded-For": "203.0.113.2"})
    assert status == 429  # the header names another client, but the peer is the same
    assert [e["target"] for e in server.lockouts(1)] == ["client:127.0.0.1"]


def test_x_forwarded_for_behind_one_trusted_proxy_takes_the_right_most_address(server_with, monkeypatch):
    monkeypatch.setenv("EDGESHIP_TRUSTED_PROXY_COUNT", "1")  # as a deployment behind nginx sets it
    server = server_with(AUTH_FAILURE_LIMIT=5)
    monkeypatch.delenv("EDGESHIP_TRUSTED_PROXY_COUNT")
    assert rate_limits.of(server.app).settings.trusted_proxies == 1

    def models(forwarded: str | None) -> int:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        return server.call("GET", "/v1/models", token="es_guess", headers=headers)[0]

    assert [models("198.51.100.9, 203.0.113.1") for _ in range(6)] == [401] * 5 + [429]
    assert models("203.0.113.1, 203.0.113.2") == 401  # what the client wrote left of the proxy's entry
    assert models("203.0.113.2, 203.0.113.1") == 429
    assert models(None) == 401  # straight to the server: the peer address
    assert [e["target"] for e in server.lockouts(1)] == ["client:203.0.113.1"]


def test_ipv6_clients_are_counted_per_64(server_with):
    server = server_with(AUTH_FAILURE_LIMIT=3, TRUSTED_PROXY_COUNT=1)

    def models(forwarded: str) -> int:
        return server.call("GET", "/v1/models", token="es_guess", headers={"X-Forwarded-For": forwarded})[0]

    assert [models(f"2001:db8:1:2::{i}") for i in range(1, 5)] == [401, 401, 401, 429]
    assert models("2001:db8:1:2:ffff:ffff:ffff:ffff") == 429
    assert models("2001:db8:1:3::1") == 401
    assert [e["target"] for e in server.lockouts(1)] == ["client:2001:db8:1:2::/64"]


def test_a_registration_burst_from_one_address_is_limited_and_audited_once(server_with):
    server = server_with(REGISTER_BURST=5, REGISTER_RATE_PER_MINUTE=60)
    burst = [server.register(server.enroll, source="127.0.0.7") for _ in range(9)]
    assert [status for status, _, _ in burst] == [201] * 5 + [429] * 4
    for status, body, headers in burst[5:]:
        assert_rate_limited(status, body, headers, longest=1)
    assert server.register(server.enroll, source="127.0.0.8")[0] == 201
    server.clock.advance(1)
    assert [server.register(server.enroll, source="127.0.0.7")[0] for _ in range(2)] == [201, 429]
    assert server.limited("register", "registration_rate") == 5
    [entry] = server.lockouts(1)  # one episode: the bucket never filled up again
    assert entry["target"] == "client:127.0.0.7" and entry["detail"]["reason"] == "registration_rate"
    server.clock.advance(5)  # full again: the next episode is a new entry
    assert [server.register(server.enroll, source="127.0.0.7")[0] for _ in range(6)] == [201] * 5 + [429]
    assert len(server.lockouts(2)) == 2


def test_the_clients_remembered_are_bounded(server_with):
    server = server_with(RATE_LIMIT_MAX_CLIENTS=16, TRUSTED_PROXY_COUNT=1, AUTH_FAILURE_LIMIT=2)
    for i in range(200):  # a flood from spoofed (proxied) addresses, each new
        forwarded = {"X-Forwarded-For": f"10.0.{i // 250}.{i % 250}"}
        assert server.call("GET", "/v1/models", token="es_guess", headers=forwarded)[0] == 401
        server.call("POST", "/v1/devices/register", headers=forwarded, body={})
    limiter = rate_limits.of(server.app)
    assert len(limiter.failures) == 16 and len(limiter.registrations) == 16


def test_limits_can_be_turned_off_and_bad_settings_refuse_to_start(server_with, tmp_path):
    server = server_with(AUTH_FAILURE_LIMIT=0, REGISTER_BURST=0)
    assert {server.register("es_wrong")[0] for _ in range(30)} == {401}
    assert {server.register(server.enroll)[0] for _ in range(10)} == {201}
    with pytest.raises(ValueError, match="AUTH_FAILURE_WINDOW_SECONDS"):
        create_app({"DATA_DIR": str(tmp_path / "bad"), "CONTROLLER_ENABLED": False,
                    "AUTH_FAILURE_WINDOW_SECONDS": "soon"})


def test_health_metrics_and_docs_are_never_limited(server_with):
    server = server_with(AUTH_FAILURE_LIMIT=2)
    [server.call("GET", "/v1/models", token="es_guess") for _ in range(3)]
    assert server.call("GET", "/v1/models", token="es_guess")[0] == 429
    assert [server.call("GET", path)[0] for path in ("/healthz", "/metrics", "/openapi.json")] == [200] * 3


def test_every_v1_operation_documents_the_429_and_its_retry_after():
    for path, item in openapi_document()["paths"].items():
        for method, op in item.items():
            if path.startswith("/v1/"):
                answer = op["responses"]["429"]
                assert answer["headers"]["Retry-After"]["schema"]["minimum"] == 1, (path, method)
            else:
                assert "429" not in op["responses"], (path, method)


def test_two_worker_processes_each_limit_and_count_into_the_same_totals(tmp_path):
    """Per-process state: an address gets at most K x the limit from K workers, and every
    worker's counts reach /metrics (within a second, from whichever worker is scraped)."""
    from prometheus_client.parser import text_string_to_metric_families

    with edgeship_server(tmp_path, "--workers", "2", EDGESHIP_AUTH_FAILURE_LIMIT="5") as served:
        statuses = [served.get("/v1/models", {"Authorization": f"Bearer es_guess-{i}"})[0] for i in range(40)]
        assert set(statuses) == {401, 429} and 5 <= statuses.count(401) <= 10, statuses

        def totals() -> tuple[float, float]:
            text = served.get("/metrics")[2].decode()
            samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
            return (value(samples, "edgeship_auth_failures_total", reason="operator_token"),
                    value(samples, "edgeship_rate_limited_total", route_group="operator",
                          reason="auth_failures"))

        wait_until(lambda: totals() == (statuses.count(401), statuses.count(429)), timeout=30,
                   what="both workers' counts in /metrics")
