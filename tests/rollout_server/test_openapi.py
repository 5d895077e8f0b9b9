"""The OpenAPI document at /openapi.json is true to the app.

* Every Flask route is documented and every documented operation is a route.
* schemathesis fuzzes the live app (in-process WSGI) from the served document: with valid
  credentials (an admin token for operator routes, a registered device's credential for device
  routes), with wrong tokens and with none. A seeded model, stable and candidate releases, a
  stored artifact, a device and a running rollout let ids in paths hit real rows (the document
  copy used for fuzzing gets them as examples). No response may be a 5xx, and every response must
  have a documented status, content type, headers and body schema. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.skip_policy import require_module

pytest.importorskip("flask")
# The dev extra installs schemathesis; in CI a missing one fails the module instead of skipping it.
schemathesis = require_module("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402  (after the importorskip)
from schemathesis import checks  # noqa: E402

from rollout_server import hot_cache  # noqa: E402
from rollout_server.app import create_app  # noqa: E402
from rollout_server.artifact_store import app_store  # noqa: E402
from rollout_server.auth import ENROLL as ENROLL_ROLE  # noqa: E402
from rollout_server.auth import hash_secret, new_secret  # noqa: E402
from rollout_server.db import session_scope  # noqa: E402
from rollout_server.models import Device, Model, Token  # noqa: E402
from rollout_server.openapi import DEVICE, OPERATOR, openapi_document  # noqa: E402
from tests.rollout_server.conftest import auth, seed_release, variant_entry  # noqa: E402

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
#: Examples per operation and generation phase; the whole module runs in well under a minute.
#: EDGESHIP_FUZZ_EXAMPLES raises it for a deeper run; EDGESHIP_FUZZ_RANDOM=1 draws new cases each run
#: (by default the run is deterministic, so CI cannot flake).
FUZZ_EXAMPLES = int(os.environ.get("EDGESHIP_FUZZ_EXAMPLES", "40"))
BAD_AUTH_EXAMPLES = max(FUZZ_EXAMPLES // 4, 5)
DETERMINISTIC = os.environ.get("EDGESHIP_FUZZ_RANDOM", "") in ("", "0")
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.ignored_auth,
    checks.unsupported_method,
    checks.allow_header_conformance,
    checks.missing_required_header,
]


def _rule_path(rule: str) -> str:
    """``/v1/rollouts/<int:rollout_id>`` → ``/v1/rollouts/{rollout_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(path, method.upper()): op for path, item in doc["paths"].items()
            for method, op in item.items() if method in METHODS}


# --- the document against the route table ---------------------------------------------------

def test_every_route_is_documented_and_every_documented_path_exists(app):
    routes: dict[tuple[str, str], set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue  # the console's pages are for browsers, not the API (docs/console.md)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes[_rule_path(rule.rule), method] = set(rule.arguments)
    documented = _operations(openapi_document())
    assert sorted(set(routes) - set(documented)) == [], "routes missing from rollout_server/openapi.py"
    assert sorted(set(documented) - set(routes)) == [], "documented operations the app does not have"
    for key, arguments in routes.items():
        params = {p["name"] for p in documented[key].get("parameters", []) if p["in"] == "path"}
        assert params == arguments, key


def test_openapi_json_is_served_without_auth(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == openapi_document()


def test_document_is_valid_openapi_and_describes_errors():
    doc = openapi_document()
    try:
        import jsonschema_rs
        from schemathesis.specs.openapi.definitions import OPENAPI_30
    except ImportError:  # pragma: no cover - schemathesis internals moved
        pytest.skip("no OpenAPI 3.0 meta-schema available")
    errors = [str(e) for e in jsonschema_rs.Draft4Validator(OPENAPI_30).iter_errors(doc)]
    assert errors == []
    schemas = doc["components"]["schemas"]
    assert schemas["Error"]["required"] == ["error", "detail"]
    for (path, method), op in _operations(doc).items():
        assert op.get("operationId"), (path, method)
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"}, (path, method, status)
        secured = op.get("security", doc["security"])
        if secured:
            assert "401" in op["responses"], (path, method)


# --- the live app ---------------------------------------------------------------------------

# Secrets and ids of the seeded rows, fixed at import: the fuzzing schemas (built at import, as
# schemathesis' pytest integration wants) carry them as credentials and examples.
ADMIN, VIEWER, ENROLL, CREDENTIAL = (new_secret() for _ in range(4))
ADMIN_ID, VIEWER_ID, ENROLL_ID, SPARE_TOKEN_ID = 101, 102, 103, 104
SEEDED_TOKENS = (ADMIN_ID, VIEWER_ID, ENROLL_ID, SPARE_TOKEN_ID)
DEVICE_ID = str(uuid.uuid4())
BLOB = b"edgeship artifact " * 64
SHA256 = hashlib.sha256(BLOB).hexdigest()
MODEL, STABLE, CANDIDATE = "digits-cnn", "1.0.0", "2.0.0"
ROLLOUT_ID = 1  # the first rollout of a fresh database
WEBHOOK_ID = 1  # the first webhook (never sent: the dispatcher does not run here)


SEEDED_RUNTIMES = {"onnxruntime": "1.20.1", "litert": "2.3.0"}


@dataclass
class Live:
    app: Any

    def restore(self) -> None:
        """Undo what fuzzing may revoke, so every case runs with working credentials."""
        with session_scope(self.app) as session:
            session.query(Token).filter(Token.revoked.is_(True)).update({"revoked": False})
            session.query(Token).filter(Token.id.in_(SEEDED_TOKENS)).update({"expires_at": None})
            session.query(Device).filter(Device.id == DEVICE_ID).update({
                "revoked": False, "admission": "accepted", "credential_hash": hash_secret(CREDENTIAL),
                "previous_credential_hash": None, "previous_credential_expires_at": None,
                "runtimes": dict(SEEDED_RUNTIMES)})  # PUT .../runtimes may have replaced them
            hot_cache.note_device_change(session)  # rows changed by plain UPDATEs: drop cached devices


class LiveApp:
    """A WSGI app that forwards to the app the ``live`` fixture creates. The fuzzing schemas are
    built at import time and hold this one, as ``schemathesis.openapi.from_wsgi`` would hold the
    app itself, so generated cases and the checks' follow-up probes all go to the live app."""

    target: Any = None

    def __call__(self, environ: dict, start_response: Any) -> Any:
        assert self.target is not None, "the live fixture is not active"
        return self.target(environ, start_response)


LIVE_APP = LiveApp()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request, tmp_path_factory) -> Iterator[Live]:
    """The app on each backend: a 500 can come from the database (PostgreSQL refuses some values
    SQLite stores, and its errors differ), so the fuzzing runs on both."""
    config = {"DATA_DIR": str(tmp_path_factory.mktemp("openapi") / "server"), "CONTROLLER_ENABLED": False,
              # thousands of wrong tokens from one address: the per-client limits (tested in
              # test_rate_limits.py) would answer 429 to most cases and hide what is fuzzed here
              "AUTH_FAILURE_LIMIT": 0, "REGISTER_BURST": 0}
    if request.param == "postgresql":
        config["DATABASE_URL"] = request.getfixturevalue("postgresql").create_database()
    app = create_app(config)
    app_store(app).put_stream(io.BytesIO(BLOB), SHA256, len(BLOB), max_bytes=2**20)
    seed_release(app, STABLE, [variant_entry("onnx-fp32", "onnxruntime", 5.0, SHA256, size=len(BLOB))],
                 stable=True)
    seed_release(app, CANDIDATE, [variant_entry("tflite-int8", "litert", 2.0, SHA256, size=len(BLOB))])
    with session_scope(app) as session:
        for token_id, name, role, secret in ((ADMIN_ID, "fuzz-admin", "admin", ADMIN),
                                             (VIEWER_ID, "fuzz-viewer", "viewer", VIEWER),
                                             (ENROLL_ID, "fuzz-enroll", ENROLL_ROLE, ENROLL),
                                             (SPARE_TOKEN_ID, "spare", "viewer", new_secret())):
            session.add(Token(id=token_id, name=name, role=role, token_hash=hash_secret(secret)))
        session.add(Device(id=DEVICE_ID, device_class="rpi4", arch="aarch64", os="Raspberry Pi OS 12",
                           ram_bytes=4 * 2**30, runtimes=dict(SEEDED_RUNTIMES),
                           credential_hash=hash_secret(CREDENTIAL)))
    rollout = app.test_client().post("/v1/rollouts", json={"model": MODEL, "candidate_version": CANDIDATE},
                                     headers=auth(ADMIN))
    assert rollout.status_code == 201, rollout.json
    assert rollout.json["id"] == ROLLOUT_ID
    webhook = app.test_client().post("/v1/webhooks", json={"url": "http://127.0.0.1:9/fuzz"},
                                     headers=auth(ADMIN))
    assert (webhook.status_code, webhook.json["id"]) == (201, WEBHOOK_ID), webhook.json
    LIVE_APP.target = app
    yield Live(app)
    LIVE_APP.target = None


#: the example report's window: by the real clock, so the server's age check accepts it
_NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
_MINUTE_AGO = _NOW - dt.timedelta(minutes=1)
REPORT_EXAMPLE = {"reports": [{
    "id": "r-1", "model": MODEL, "version": STABLE, "variant": "onnx-fp32", "rollout_id": ROLLOUT_ID,
    "cohort": "stable", "window_start": _MINUTE_AGO.isoformat(), "window_end": _NOW.isoformat(),
    "inferences": 10, "errors": {"timeout": 1}, "schema": 2, "latency": {"schema": 5, "buckets": [[-250, 9]]},
    "labelled": 4, "correct": 3,
}]}
PATH_VALUES = {"device_id": DEVICE_ID, "name": MODEL, "version": STABLE, "rollout_id": ROLLOUT_ID,
               "action": "pause", "sha256": SHA256, "token_id": SPARE_TOKEN_ID, "model": MODEL,
               "webhook_id": WEBHOOK_ID}


#: Fuzz dictionaries: known-real values schemathesis mixes into generated ones (in positive mode
#: only where they fit the schema), so requests get past "no such model" to the deeper checks.
DICTIONARIES = {
    "device": [DEVICE_ID], "model": [MODEL], "version": [STABLE, CANDIDATE], "rollout": [ROLLOUT_ID],
    "sha256": [SHA256], "token": [SPARE_TOKEN_ID], "enroll": [ENROLL],
    "variant": ["onnx-fp32", "tflite-int8"],
}
BINDINGS = {
    "path.device_id": "device", "path.name": "model", "path.version": "version", "path.rollout_id": "rollout",
    "path.sha256": "sha256", "path.token_id": "token", "query.model": "model",
    "body.model": "model", "body.candidate_version": "version", "body.version": "version",
    "body.enrollment_token": "enroll", "body.reports[*].model": "model", "body.reports[*].version": "version",
    "body.reports[*].variant": "variant", "body.reports[*].rollout_id": "rollout",
}


def _fuzz_document() -> dict[str, Any]:
    """The served document plus examples that name the seeded rows (so paths hit real data)."""
    doc = openapi_document()
    bodies = {("/v1/devices/register", "post"): {
        "enrollment_token": ENROLL, "device_class": "rpi5", "arch": "aarch64", "os": "Linux",
        "ram_bytes": 8 * 2**30, "runtimes": {"onnxruntime": "1.20.1"}},
        ("/v1/reports", "post"): REPORT_EXAMPLE}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for param in op.get("parameters", []):
                if param["in"] in ("path", "query") and param["name"] in PATH_VALUES:
                    param["example"] = PATH_VALUES[param["name"]]
            if (path, method) in bodies:
                op["requestBody"]["content"]["application/json"]["example"] = bodies[path, method]
    return doc


def _schema(operator: str | None, device: str | None, examples: int) -> Any:
    config: dict[str, Any] = {
        "generation": {"max-examples": examples, "mode": "all", "database": "none",
                       "deterministic": DETERMINISTIC},
        "phases": {"stateful": {"enabled": False}},
        "dictionaries": {name: {"values": values} for name, values in DICTIONARIES.items()},
        "parameters": {key: {"dictionary": name, "probability": 0.5} for key, name in BINDINGS.items()},
    }
    if operator is not None:
        config["auth"] = {"openapi": {OPERATOR: {"bearer": operator}, DEVICE: {"bearer": device}}}
    else:
        config["generation"]["with-security-parameters"] = False
    schema = schemathesis.openapi.from_dict(_fuzz_document(), config=schemathesis.Config.from_dict(config))
    schema.app = LIVE_APP
    return schema


AUTHORIZED = _schema(ADMIN, CREDENTIAL, FUZZ_EXAMPLES)
WRONG_TOKEN = _schema("not-a-token", "not-a-credential", BAD_AUTH_EXAMPLES)
NO_TOKEN = _schema(None, None, BAD_AUTH_EXAMPLES)
FUZZ_SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True,
                         database=None)


@AUTHORIZED.parametrize()
@FUZZ_SETTINGS
def test_fuzz_with_valid_credentials(case, live):
    live.restore()
    case.call_and_validate(checks=CHECKS)


def _assert_refused(case, response, what: str) -> None:
    """A secured operation never succeeds without valid credentials (OPTIONS is Flask's own)."""
    op = case.operation.definition.raw
    secured = bool(op.get("security", case.operation.schema.raw_schema.get("security")))
    if secured and response.request.method != "OPTIONS":
        assert response.status_code >= 400, (
            f"{case.operation.label} accepted {what}: {response.request.method} {response.request.url} "
            f"-> {response.status_code}")


@WRONG_TOKEN.parametrize()
@FUZZ_SETTINGS
def test_fuzz_with_wrong_tokens(case, live):
    live.restore()
    response = case.call_and_validate(checks=CHECKS[:5])
    _assert_refused(case, response, "a wrong token")


@NO_TOKEN.parametrize()
@FUZZ_SETTINGS
def test_fuzz_without_tokens(case, live):
    live.restore()
    response = case.call_and_validate(checks=CHECKS[:5])
    _assert_refused(case, response, "no token")


# --- auth on every secured operation, deterministically -------------------------------------

def _url(path: str) -> str:
    url = re.sub(r"\{(\w+)\}", lambda m: str(PATH_VALUES[m.group(1)]), path)
    return url + (f"?model={MODEL}" if path.endswith("/assignment") else "")


def test_every_secured_operation_refuses_missing_wrong_and_misplaced_tokens(live):
    client = live.app.test_client()
    doc = openapi_document()
    for (path, method), op in _operations(doc).items():
        security = op.get("security", doc["security"])
        if not security:
            continue
        schemes = {name for requirement in security for name in requirement}
        attempts = {"none": {}, "not bearer": {"Authorization": f"Basic {ADMIN}"},
                    "wrong": auth("not-a-token"), "enrollment token": auth(ENROLL)}
        if DEVICE not in schemes:
            attempts["device credential"] = auth(CREDENTIAL)
        if OPERATOR not in schemes:
            attempts["operator token"] = auth(ADMIN)
        for what, headers in attempts.items():
            live.restore()
            response = client.open(_url(path), method=method, headers=headers, json={})
            assert response.status_code == 401, (path, method, what, response.json)
            assert set(response.json) == {"error", "detail"}
        if op.get("x-minimum-role") not in (None, "viewer"):
            response = client.open(_url(path), method=method, headers=auth(VIEWER), json={})
            assert response.status_code == 403, (path, method, response.json)
            assert str(response.status_code) in op["responses"]
    live.restore()


def test_seeded_rows_are_reachable(live):
    """The fuzzing examples are real: with them the device routes answer 200."""
    client = live.app.test_client()
    live.restore()
    assignment = client.get(f"/v1/devices/{DEVICE_ID}/assignment?model={MODEL}",
                            headers=auth(CREDENTIAL))
    assert assignment.status_code == 200, assignment.json
    assert client.get(f"/v1/artifacts/{SHA256}", headers=auth(CREDENTIAL)).status_code == 200
    with session_scope(live.app) as session:
        assert session.query(Model).filter_by(name="digits-cnn").one().stable_release_id is not None


def test_bad_input_the_fuzzer_found_is_a_4xx(live):
    """Each of these was a 500 (or an accepted bad value) before it was fixed."""
    client = live.app.test_client()
    live.restore()
    admin, device = auth(ADMIN), auth(CREDENTIAL)
    huge = 2**70  # SQLite: "Python int too large to convert to SQLite INTEGER"
    assert client.get(f"/v1/rollouts/{huge}", headers=admin).status_code == 404
    assert client.post(f"/v1/rollouts/{huge}/pause", headers=admin).status_code == 404
    assert client.post(f"/v1/tokens/{huge}/revoke", headers=admin).status_code == 404
    report = {**REPORT_EXAMPLE["reports"][0], "id": "huge-rollout", "rollout_id": huge}
    response = client.post("/v1/reports", json={"reports": [report]}, headers=device)
    assert response.status_code == 400 and "rollout_id" in response.json["detail"]
    # hmac.compare_digest refuses non-ASCII str: a foreign device id is a 403, not a TypeError
    foreign = client.get("/v1/devices/\u00e9t\u00e9/assignment?model=digits-cnn", headers=device)
    assert foreign.status_code == 403
    # "$" let a trailing newline through the name pattern the document promises
    register = {"enrollment_token": ENROLL, "device_class": "rpi4\n", "arch": "aarch64", "os": "Linux",
                "ram_bytes": 1, "runtimes": {}}
    assert client.post("/v1/devices/register", json=register).status_code == 400
    assert client.get(f"/v1/devices/{DEVICE_ID}/assignment?model=digits-cnn%0A",
                      headers=device).status_code == 400
    assert client.get(f"/v1/artifacts/{SHA256}%0A", headers=device).status_code == 400
    # a body that is JSON but not an object is refused, not ignored
    assert client.post(f"/v1/rollouts/{ROLLOUT_ID}/pause", json=["x"], headers=admin).status_code == 400
    # a 405 keeps its Allow header (RFC 9110) under the JSON error body
    response = client.delete("/v1/models", headers=admin)
    assert response.status_code == 405 and "GET" in response.headers["Allow"]
    assert set(response.json) == {"error", "detail"}
