"""The OpenAPI 3.0 document of the rollout server, served at ``GET /openapi.json``.

This module is the one place the HTTP API is described. Request schemas say what the validators
in ``rollout_server/api/*.py`` accept (required fields, types, bounds, lengths, patterns, enums),
responses list every status a route can answer with, and every 4xx/5xx body is the error shape
of :mod:`rollout_server.errors`. ``tests/rollout_server/test_openapi.py`` keeps it true: every
Flask route must be documented (and nothing else), and schemathesis fuzzes the live app against it.

Where the server checks more than JSON Schema can say (a guard's threshold range depends on its
metric and mode; ``correct`` must not exceed ``labelled``), the description says so and the
server answers 400.
"""

from __future__ import annotations

import copy
from typing import Any

from edgeship.contract.reports import MAX_BATCH as MAX_REPORT_BATCH
from rollout_server.api.rollouts import ACTIONS
from rollout_server.openapi_schemas import (
    API_VERSION,
    ATTRIBUTES,
    BAD_JSON,
    DEVICE,
    DEVICE_CLASS_PATTERN,
    MAX_ID,
    NAME_PATTERN,
    NO_DEVICE,
    NO_TOKEN,
    OPENAPI_VERSION,
    OPERATOR,
    PENDING,
    SCHEMAS,
    SHA256_PATTERN,
    TIME,
    _body,
    _json,
    _nullable,
    _object,
    _operator,
    _path,
    _ref,
    _responses,
    _role,
    _text,
)

# --- paths ----------------------------------------------------------------------------------

MODEL_NAME = _path("name", {"type": "string", "minLength": 1}, "Model name.")
VERSION = _path("version", {"type": "string", "minLength": 1}, "Release version.")
ROLLOUT_ID = _path("rollout_id", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "Rollout id.")
DEVICE_ID = _path("device_id", {"type": "string", "minLength": 1}, "Device id (from registration).")
TOKEN_ID = _path("token_id", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "Token id.")
WEBHOOK_ID = _path("webhook_id", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "Webhook id.")
#: the assignment's hint that the credential is older than CREDENTIAL_MAX_AGE_SECONDS.
ROTATE_HINT = {"Edgeship-Rotate-Credential": {
    "required": False, "schema": {"type": "string", "enum": ["1"]},
    "description": "Present when the credential is older than CREDENTIAL_MAX_AGE_SECONDS: rotate it "
                   "(POST /v1/devices/{device_id}/credential)."}}
RUNTIMES = SCHEMAS["DeviceRegistration"]["properties"]["runtimes"]


LAST_ADMIN = (409, "No admin token that never expires would remain ('last_admin').")
#: every /v1 operation may answer 429 (rollout_server/rate_limits.py), registration for two reasons.
RETRY_AFTER = {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1},
                               "description": "Seconds to wait before trying again."}}
LOCKED_OUT = ("Too many failed authentications from this client address ('rate_limited'): credentials "
              "that have not worked before are refused until Retry-After; ones that did still work.")
REGISTER_LIMITED = ("Too many registrations, or failed authentications, from this client address "
                    "('rate_limited'); retry after Retry-After.")


def _rate_limited(paths: dict[str, Any]) -> dict[str, Any]:
    """Add the 429 of the per-client limits to every /v1 operation."""
    for path, item in paths.items():
        for op in item.values() if path.startswith("/v1/") else ():
            text = REGISTER_LIMITED if path == "/v1/devices/register" else LOCKED_OUT
            op["responses"].setdefault("429", {**_json(_ref("Error"), text), "headers": RETRY_AFTER})
    return paths


def _paths() -> dict[str, Any]:
    return {
        "/healthz": {"get": {
            "tags": ["health"], "summary": "Liveness: the process answers.", "operationId": "healthz",
            "security": [],
            "responses": {"200": _json(_object({"status": {"type": "string", "enum": ["ok"]}}, ("status",)),
                                       "Alive.")},
        }},
        "/readyz": {"get": {
            "tags": ["health"], "summary": "Readiness: the database answers.", "operationId": "readyz",
            "security": [],
            "responses": _responses(
                {"200": _json(_object({"status": {"type": "string", "enum": ["ready"]}}, ("status",)),
                              "Ready.")},
                (503, "The database does not answer ('not_ready').")),
        }},
        "/metrics": {"get": {
            "tags": ["health"], "summary": "Prometheus metrics (the edgeship_ catalogue).",
            "operationId": "metrics", "security": [],
            "responses": {"200": {"description": "Prometheus text exposition format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "tags": ["health"], "summary": "This document.", "operationId": "openapi", "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        }},
        "/v1/devices/register": {"post": {
            "tags": ["devices"], "operationId": "registerDevice", "security": [],
            "summary": "Enroll a device with an enrollment token; the credential is shown once.",
            "requestBody": _body(_ref("DeviceRegistration"), example={
                "enrollment_token": "<enrollment token>", "device_class": "rpi4", "arch": "aarch64",
                "os": "Raspberry Pi OS 12", "ram_bytes": 4294967296,
                "runtimes": {"onnxruntime": "1.20.1", "litert": "2.3.0"},
                "attributes": {"app_version": "4.2.1", "region": "eu"}}),
            "responses": _responses(
                {"201": _json(_object({
                    "device_id": {"type": "string"}, "credential": {"type": "string"},
                    "state": {"type": "string", "enum": ["active", "pending"],
                              "description": "'pending': the device waits for an operator to accept it "
                                             "(its device routes answer 403 'device_pending' until then)."},
                }, ("device_id", "credential", "state")), "Enrolled.")},
                BAD_JSON,
                (401, "Unknown or revoked enrollment token ('unauthorized'), expired "
                      "('enrollment_expired'), or every use of it taken ('enrollment_exhausted')."),
                (403, "The token does not enroll this device class ('enrollment_scope').")),
        }},
        "/v1/devices/{device_id}/credential": {"post": {
            "tags": ["devices"], "operationId": "rotateCredential", "security": [{DEVICE: []}],
            "summary": "A new credential for this device; the one sent stays valid until the new one is "
                       "first used, at most CREDENTIAL_GRACE_SECONDS.",
            "parameters": [DEVICE_ID],
            "responses": _responses(
                {"201": _json(_object({
                    "device_id": {"type": "string"}, "credential": {"type": "string"},
                    "previous_valid_until": {**TIME, "description": "The credential sent is refused "
                                             "after this, or once the new one is used."},
                }, ("device_id", "credential", "previous_valid_until")), "Rotated.")},
                NO_DEVICE, (403, f"The credential belongs to another device, or {PENDING}."),
                (409, "The credential changed concurrently; retry.")),
        }},
        "/v1/devices/{device_id}/assignment": {"get": {
            "tags": ["devices"], "operationId": "getAssignment", "security": [{DEVICE: []}],
            "summary": "The release and variant this device runs now (cacheable: ETag / If-None-Match).",
            "parameters": [
                DEVICE_ID,
                {"name": "model", "in": "query", "required": True,
                 "schema": {"type": "string", "pattern": NAME_PATTERN}},
                {"name": "exclude", "in": "query", "required": False, "style": "form", "explode": True,
                 "schema": {"type": "array", "maxItems": 16, "items": _text(64)},
                 "description": "Ids of variants of release exclude_version that this device refused "
                                "(failed to load or their golden check): the next-best variant of that "
                                "release is offered instead. Ignored when the device is assigned another "
                                "release; never changes the release or cohort."},
                {"name": "exclude_version", "in": "query", "required": False, "schema": _text(64),
                 "description": "The release version the exclude ids belong to; required with exclude."},
                {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "responses": _responses(
                {"200": {**_json(_ref("Assignment"), "The assignment."),
                         "headers": {"ETag": {"schema": {"type": "string"}}, **ROTATE_HINT}},
                 "304": {"description": "Unchanged since the ETag sent in If-None-Match.",
                         "headers": ROTATE_HINT}},
                (400, "The model query parameter is missing or not a model name, or exclude is given "
                      "without exclude_version or names over 16 ids."), NO_DEVICE,
                (403, f"The credential belongs to another device, or {PENDING}."),
                (404, "No such model, or it has no stable release yet."),
                (409, "No variant of the release runs on this device, or none but those it excluded "
                      "('no_variant').")),
        }},
        "/v1/devices/{device_id}/runtimes": {"put": {
            "tags": ["devices"], "operationId": "updateDeviceRuntimes", "security": [{DEVICE: []}],
            "summary": "Replace the runtimes this device announced (what it can load changed since it "
                       "registered).",
            "parameters": [DEVICE_ID],
            "requestBody": _body(_object({"runtimes": RUNTIMES}, ("runtimes",)),
                                 example={"runtimes": {"onnxruntime": "1.20.1"}}),
            "responses": _responses(
                {"200": _json(_object({"device_id": {"type": "string"},
                                       "runtimes": {"type": "object",
                                                    "additionalProperties": {"type": "string"}}},
                                      ("device_id", "runtimes")), "Stored; assignment uses them.")},
                BAD_JSON, NO_DEVICE, (403, "The credential belongs to another device.")),
        }},
        "/v1/devices/{device_id}/attributes": {"put": {
            "tags": ["devices"], "operationId": "updateDeviceAttributes", "security": [{DEVICE: []}],
            "summary": "Replace the attributes this device claims for canary targeting (its app was "
                       "updated, it moved).",
            "parameters": [DEVICE_ID],
            "requestBody": _body(_object({"attributes": ATTRIBUTES}, ("attributes",)),
                                 example={"attributes": {"app_version": "4.2.1", "region": "eu"}}),
            "responses": _responses(
                {"200": _json(_object({"device_id": {"type": "string"}, "attributes": ATTRIBUTES},
                                      ("device_id", "attributes")), "Stored; targeting uses them.")},
                (400, "The body or its attributes are malformed."), NO_DEVICE,
                (403, "The credential belongs to another device.")),
        }},
        "/v1/reports": {"post": {
            "tags": ["reports"], "operationId": "postReports", "security": [{DEVICE: []}],
            "summary": "Store a batch of window aggregates, all or none; each report id at most once.",
            "requestBody": _body(_object({
                "reports": {"type": "array", "minItems": 1, "maxItems": MAX_REPORT_BATCH,
                            "items": _ref("Report"),
                            "description": "Ids unique within the batch."},
            }, ("reports",))),
            "responses": _responses(
                {"200": _json(_object({
                    "accepted": {"type": "array", "items": {"type": "string"}},
                    "duplicates": {"type": "array", "items": {"type": "string"},
                                   "description": "Ids stored before (a retry is not an error)."},
                }, ("accepted", "duplicates")), "Stored.")},
                BAD_JSON, NO_DEVICE, (403, f"{PENDING[0].upper()}{PENDING[1:]}: nothing is stored."),
                (409, "Some reports of the batch were stored concurrently; retry."),
                (413, "The body is over MAX_REPORT_BYTES."),
                (422, "A report claims what the server's records contradict; 'error' says which: "
                      "'not_in_rollout' (rollout_id names no rollout of the model, or the version is "
                      "neither its candidate nor its baseline), 'cohort_mismatch' (the candidate from a "
                      "device the rollout did not bucket canary, or the baseline claimed as canary), "
                      "'window_out_of_range' (window outside [now - REPORT_MAX_AGE_SECONDS, now + "
                      "REPORT_CLOCK_SKEW_SECONDS]), 'count_over_cap' (more inferences and errors than "
                      "MAX_INFERENCES_PER_SECOND allows for the window's length).")),
        }},
        "/v1/releases": {"post": {
            "tags": ["releases"], "operationId": "publishRelease", **_operator("publisher"),
            "summary": "Publish a signed release: the manifest and every file it lists, verified whole.",
            "description": "multipart/form-data with one part named 'manifest' (manifest.json) and one part "
                           "per listed file, named by its file name. Nothing is stored unless the signature "
                           "verifies against a trusted key and every file's sha256 and size match.",
            "requestBody": {"required": True, "content": {"multipart/form-data": {
                "schema": {"type": "object", "required": ["manifest"],
                           "properties": {"manifest": {"type": "string", "format": "binary"}},
                           "additionalProperties": {"type": "string", "format": "binary"}}}}},
            "responses": _responses(
                {"201": _json(_ref("Release"), "Published."),
                 "200": _json(_ref("Release"), "An identical re-publish of an existing release.")},
                (400, "Bad manifest, signature, file set, sha256 or size (the error code says which)."),
                NO_TOKEN,
                (403, "The token's role is below 'publisher', or the manifest's key is not trusted."),
                (409, "The version exists with a different manifest."),
                (413, "The manifest or a file is too large.")),
        }},
        "/v1/models": {"get": {
            "tags": ["releases"], "operationId": "listModels", **_operator("viewer"),
            "summary": "Every model with its stable version and release count.",
            "responses": _responses(
                {"200": _json(_object({"models": {"type": "array", "items": _object({
                    "name": {"type": "string"},
                    "stable_version": _nullable({"type": "string"}),
                    "releases": {"type": "integer"},
                    "created_at": TIME,
                }, ("name", "stable_version", "releases", "created_at"))}}, ("models",)), "The models.")},
                NO_TOKEN),
        }},
        "/v1/models/{name}": {"get": {
            "tags": ["releases"], "operationId": "showModel", **_operator("viewer"),
            "summary": "One model with its releases (oldest first).",
            "parameters": [MODEL_NAME],
            "responses": _responses(
                {"200": _json(_object({
                    "name": {"type": "string"},
                    "stable_version": _nullable({"type": "string"}),
                    "created_at": TIME,
                    "releases": {"type": "array", "items": _object({
                        "version": {"type": "string"},
                        "signed_by": {"type": "string"},
                        "created_at": TIME,
                        "stable": {"type": "boolean"},
                        "variants": {"type": "array", "items": {"type": "string"}},
                    }, ("version", "signed_by", "created_at", "stable", "variants"))},
                }, ("name", "stable_version", "created_at", "releases")), "The model.")},
                NO_TOKEN, (404, "No such model.")),
        }},
        "/v1/models/{name}/releases/{version}": {"get": {
            "tags": ["releases"], "operationId": "showRelease", **_operator("viewer"),
            "summary": "One release with its variants, download paths and signed manifest.",
            "parameters": [MODEL_NAME, VERSION],
            "responses": _responses({"200": _json(_ref("Release"), "The release.")},
                                    NO_TOKEN, (404, "No such model or version.")),
        }},
        "/v1/models/{name}/stable": {"post": {
            "tags": ["releases"], "operationId": "setStable", **_operator("operator"),
            "summary": "Make a release the model's stable one (not while a rollout is active).",
            "parameters": [MODEL_NAME],
            "requestBody": _body(_object({"version": _text()}, ("version",)), example={"version": "1.0.0"}),
            "responses": _responses(
                {"200": _json(_object({
                    "model": {"type": "string"},
                    "stable_version": {"type": "string"},
                    "previous_version": _nullable({"type": "string"}),
                }, ("model", "stable_version", "previous_version")), "Switched.")},
                BAD_JSON, NO_TOKEN, _role("operator"), (404, "No such model or version."),
                (409, "A rollout of the model is active.")),
        }},
        "/v1/artifacts/{sha256}": {"get": {
            "tags": ["artifacts"], "operationId": "downloadArtifact",
            "security": [{DEVICE: []}, {OPERATOR: []}],
            "summary": "An artifact's bytes by sha256, with HTTP Range for resumed downloads.",
            "description": "A device credential downloads the artifacts of releases it was assigned (its "
                           "release or shadow candidate, now or before); any operator token downloads any "
                           "artifact. Immutable: cacheable forever.",
            "parameters": [
                _path("sha256", {"type": "string", "pattern": SHA256_PATTERN}, "The artifact's sha256."),
                {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "e.g. 'bytes=1024-'; an unparsable range is ignored (200)."},
                {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "responses": _responses({
                "200": {"description": "The whole file.", "headers": {"ETag": {"schema": {"type": "string"}}},
                        "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                            "format": "binary"}}}},
                "206": {"description": "The requested range.",
                        "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                            "format": "binary"}}}},
                "304": {"description": "Unchanged (If-None-Match)."},
            }, (400, "Not a sha256 (64 lowercase hex digits)."),
                (401, f"{NO_TOKEN[1]} {NO_DEVICE[1]}"),
                (403, f"{PENDING[0].upper()}{PENDING[1:]}."),
                (404, "No such artifact, or (to a device) not an artifact of a release it was assigned."),
                (416, "The range lies outside the file.")),
        }},
        "/v1/rollouts": {
            "post": {
                "tags": ["rollouts"], "operationId": "createRollout", **_operator("operator"),
                "summary": "Start a gray release of a candidate against the model's stable release.",
                "requestBody": _body(_ref("RolloutCreate"), example={
                    "model": "digits-cnn", "candidate_version": "2.0.0",
                    "stages": [{"percent": 10}, {"percent": 50}, {"percent": 100}]}),
                "responses": _responses(
                    {"201": _json(_ref("RolloutStatus"), "Started, or pending until its start_at and "
                                                         "windows allow (hold_reason says which).")},
                    (400, "Bad input, including stages, guards or a target the analysis rejects, or a "
                          "candidate without a validated variant."),
                    NO_TOKEN, _role("operator"), (404, "No such model or candidate release."),
                    (409, "The model has no stable release, the candidate is already stable, or another "
                          "rollout of the model is active or scheduled.")),
            },
            "get": {
                "tags": ["rollouts"], "operationId": "listRollouts", **_operator("viewer"),
                "summary": "The newest 100 rollouts, optionally of one model.",
                "parameters": [{"name": "model", "in": "query", "required": False,
                                "schema": {"type": "string"}}],
                "responses": _responses(
                    {"200": _json(_object({"rollouts": {"type": "array", "items": _ref("RolloutSummary")}},
                                          ("rollouts",)), "The rollouts.")},
                    NO_TOKEN),
            },
        },
        "/v1/rollouts/{rollout_id}": {"get": {
            "tags": ["rollouts"], "operationId": "rolloutStatus", **_operator("viewer"),
            "summary": "Phase, stage, share and every analysis verdict with its reason.",
            "parameters": [ROLLOUT_ID],
            "responses": _responses({"200": _json(_ref("RolloutStatus"), "The rollout.")},
                                    NO_TOKEN, (404, "No such rollout.")),
        }},
        "/v1/rollouts/{rollout_id}/{action}": {"post": {
            "tags": ["rollouts"], "operationId": "rolloutAction", **_operator("operator"),
            "summary": "Manual pause, resume, promote, abort or approve.",
            "description": "approve: a rollout in awaiting_approval starts its gated stage now (or is "
                           "promoted when the gate was before promotion); the approver is audited and named "
                           "in the reason. pause also applies while awaiting approval, and resume returns "
                           "there.",
            "parameters": [ROLLOUT_ID, _path("action", {"type": "string", "enum": list(ACTIONS)},
                                             "The action.")],
            "requestBody": _body(_object({"reason": _nullable({"type": "string", "maxLength": 500})}),
                                 required=False),
            "responses": _responses(
                {"200": _json(_ref("RolloutStatus"), "Done.")},
                (400, "The body is not a JSON object, or its reason is not a string of at most 500 "
                      "characters."), NO_TOKEN, _role("operator"),
                (404, "No such rollout or action."),
                (409, "The action is not allowed in the rollout's phase (approve: it is not "
                      "awaiting_approval).")),
        }},
        "/v1/tokens": {
            "post": {
                "tags": ["admin"], "operationId": "createToken", **_operator("admin"),
                "summary": "Create an operator or enrollment token; the secret is shown once.",
                "requestBody": _body(_ref("TokenCreate"),
                                     example={"name": "ci-publisher", "role": "publisher"}),
                "responses": _responses(
                    {"201": _json({"allOf": [_ref("Token"), _object({"token": {"type": "string"}},
                                                                    ("token",))]},
                                  "Created; 'token' is the secret, shown only here.")},
                    BAD_JSON, NO_TOKEN, _role("admin")),
            },
            "get": {
                "tags": ["admin"], "operationId": "listTokens", **_operator("admin"),
                "summary": "Every token (never its secret).",
                "responses": _responses(
                    {"200": _json(_object({"tokens": {"type": "array", "items": {"allOf": [
                        _ref("Token"),
                        _object({"revoked": {"type": "boolean"}, "expired": {"type": "boolean"},
                                 "created_at": TIME}, ("revoked", "expired", "created_at"))]}}},
                        ("tokens",)), "The tokens.")},
                    NO_TOKEN, _role("admin")),
            },
        },
        "/v1/tokens/{token_id}/revoke": {"post": {
            "tags": ["admin"], "operationId": "revokeToken", **_operator("admin"),
            "summary": "Revoke a token.",
            "parameters": [TOKEN_ID],
            "responses": _responses(
                {"200": _json(_object({"id": {"type": "integer"},
                                       "revoked": {"type": "boolean", "enum": [True]}},
                                      ("id", "revoked")), "Revoked.")},
                NO_TOKEN, _role("admin"), (404, "No such token."), LAST_ADMIN),
        }},
        "/v1/tokens/{token_id}/rotate": {"post": {
            "tags": ["admin"], "operationId": "rotateToken", **_operator("admin"),
            "summary": "A new secret with the same name, role and policy; the old one is revoked, or "
                       "expires after overlap_seconds.",
            "parameters": [TOKEN_ID],
            "requestBody": _body(_object({
                "overlap_seconds": _nullable({"type": "integer", "minimum": 0, "maximum": 7 * 86400,
                                              "description": "The old secret keeps working this long "
                                                             "(default 0: revoked at once)."}),
                "expires_in_seconds": _nullable({"type": "integer", "minimum": 1, "maximum": 10 * 365 * 86400,
                                                 "description": "Lifetime of the new secret (default: the "
                                                                "old one's lifetime; none if it had none)."}),
            }), required=False),
            "responses": _responses(
                {"201": _json({"allOf": [_ref("Token"), _object({
                    "token": {"type": "string"}, "replaced": {"type": "integer"},
                    "replaced_until": _nullable(TIME)}, ("token", "replaced", "replaced_until"))]},
                    "Rotated; 'token' is the new secret, shown only here.")},
                BAD_JSON, NO_TOKEN, _role("admin"), (404, "No such token."),
                (409, "The token is revoked or expired ('conflict'), or no admin token that never "
                      "expires would remain ('last_admin').")),
        }},
        "/v1/devices": {"get": {
            "tags": ["admin"], "operationId": "listDevices", **_operator("viewer"),
            "summary": "Devices, oldest first, with their state (pending, active, rejected, revoked).",
            "parameters": [
                {"name": "state", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["pending", "active", "rejected", "revoked"]}},
                {"name": "device_class", "in": "query", "required": False,
                 "schema": _text(32, pattern=DEVICE_CLASS_PATTERN)},
                *({"name": name, "in": "query", "required": False, "description": description,
                   "schema": {"type": "integer", "minimum": 1, "maximum": 10 * 365 * 86400}}
                  for name, description in (
                      ("seen_within_seconds", "Only devices that polled within this many seconds."),
                      ("not_seen_for_seconds", "Only devices that have not polled for this many seconds "
                                               "(or never)."))),
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "offset", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID, "default": 0}},
            ],
            "responses": _responses(
                {"200": _json(_object({"devices": {"type": "array", "items": _ref("Device")}}, ("devices",)),
                              "The devices.")},
                (400, "A query parameter is out of range or malformed."), NO_TOKEN),
        }},
        **{f"/v1/devices/{{device_id}}/{action}": {"post": {
            "tags": ["admin"], "operationId": f"{action}Device", **_operator("operator"),
            "summary": summary, "parameters": [DEVICE_ID],
            "responses": _responses(
                {"200": _json(_ref("Device"), "Done (or it was already so).")},
                NO_TOKEN, _role("operator"), (404, "No such device."), *conflict),
        }} for action, summary, conflict in (
            ("accept", "Admit a pending device: it gets assignments from its next poll.",
             [(409, "The device is rejected or revoked.")]),
            ("reject", "Refuse a pending device for good (401 'device_rejected' on its routes).",
             [(409, "The device is active or revoked: revoke an admitted device.")]),
            ("revoke", "Refuse a device's credential for good (401 'device_revoked' on its routes).", []),
        )},
        **_webhook_paths(),
        "/v1/audit": {"get": {
            "tags": ["admin"], "operationId": "auditLog", **_operator("admin"),
            "summary": "The audit log, newest first.",
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "default": 100},
                            "description": "How many entries; clamped to 1..1000."}],
            "responses": _responses(
                {"200": _json(_object({"entries": {"type": "array", "items": _object({
                    "at": TIME, "actor": {"type": "string"},
                    "action": {"type": "string"}, "target": {"type": "string"},
                    "detail": _nullable({"type": "object"}),
                }, ("at", "actor", "action", "target", "detail"))}}, ("entries",)), "The entries.")},
                (400, "limit is not an integer."), NO_TOKEN, _role("admin")),
        }},
    }


def _webhook_paths() -> dict[str, Any]:
    no_webhook = (404, "No such webhook.")
    return {
        "/v1/webhooks": {
            "post": {
                "tags": ["admin"], "operationId": "createWebhook", **_operator("admin"),
                "summary": "POST rollout events to a URL, signed (Edgeship-Signature); the secret is shown "
                           "once.",
                "requestBody": _body(_ref("WebhookCreate"), example={
                    "url": "https://hooks.example.com/edgeship",
                    "kinds": ["phase_changed", "verdict_failed"]}),
                "responses": _responses(
                    {"201": _json({"allOf": [_ref("Webhook"), _object({"secret": {"type": "string"}},
                                                                      ("secret",))]},
                                  "Created; 'secret' signs its deliveries and is shown only here.")},
                    BAD_JSON, NO_TOKEN, _role("admin")),
            },
            "get": {
                "tags": ["admin"], "operationId": "listWebhooks", **_operator("admin"),
                "summary": "Every webhook (never its secret), with its deliveries not done yet.",
                "responses": _responses(
                    {"200": _json(_object({"webhooks": {"type": "array", "items": {"allOf": [
                        _ref("Webhook"),
                        _object({"pending": {"type": "integer", "description": "Deliveries not done yet."},
                                 "retrying": {"type": "integer", "description": "Of those, the ones that "
                                                                                "failed at least once."}},
                                ("pending", "retrying"))]}}}, ("webhooks",)), "The webhooks.")},
                    NO_TOKEN, _role("admin")),
            },
        },
        "/v1/webhooks/{webhook_id}": {"delete": {
            "tags": ["admin"], "operationId": "removeWebhook", **_operator("admin"),
            "summary": "Remove a webhook and its deliveries (pending ones are never sent).",
            "parameters": [WEBHOOK_ID],
            "responses": _responses(
                {"200": _json(_object({"id": {"type": "integer"},
                                       "removed": {"type": "boolean", "enum": [True]}},
                                      ("id", "removed")), "Removed.")},
                NO_TOKEN, _role("admin"), no_webhook),
        }},
        "/v1/webhooks/{webhook_id}/deliveries": {"get": {
            "tags": ["admin"], "operationId": "webhookDeliveries", **_operator("admin"),
            "summary": "The webhook's latest deliveries, newest first: status, attempts, HTTP code, error, "
                       "next attempt.",
            "parameters": [WEBHOOK_ID, {"name": "limit", "in": "query", "required": False,
                                        "schema": {"type": "integer", "minimum": 1, "maximum": 500,
                                                   "default": 50}}],
            "responses": _responses(
                {"200": _json(_object({"deliveries": {"type": "array", "items": _ref("WebhookDelivery")}},
                                      ("deliveries",)), "The deliveries.")},
                (400, "limit is not an integer from 1 to 500."), NO_TOKEN, _role("admin"), no_webhook),
        }},
        "/v1/webhooks/{webhook_id}/test": {"post": {
            "tags": ["admin"], "operationId": "testWebhook", **_operator("admin"),
            "summary": "Queue a 'test' event for this webhook only.",
            "parameters": [WEBHOOK_ID],
            "responses": _responses(
                {"202": _json(_object({"webhook_id": {"type": "integer"}, "event_id": {"type": "integer"},
                                       "delivery_id": {"type": "integer"}},
                                      ("webhook_id", "event_id", "delivery_id")),
                              "Queued; the dispatcher sends it within WEBHOOK_DISPATCH_INTERVAL_SECONDS.")},
                NO_TOKEN, _role("admin"), no_webhook),
        }},
    }


def _build() -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "edgeship rollout server",
            "version": API_VERSION,
            "description": "Model registry, device assignment, report ingestion and staged rollouts with "
                           "automatic rollback. Every error is JSON {\"error\", \"detail\"} with a 4xx "
                           "(or 5xx) status. Operator tokens carry a role: viewer < publisher < operator "
                           "< admin; device credentials come from POST /v1/devices/register.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": n} for n in ("health", "devices", "reports", "releases", "artifacts", "rollouts",
                                       "admin")],
        "security": [{OPERATOR: []}],
        "paths": _rate_limited(_paths()),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                OPERATOR: {"type": "http", "scheme": "bearer",
                           "description": "An operator token (role viewer, publisher, operator or admin)."},
                DEVICE: {"type": "http", "scheme": "bearer",
                         "description": "A device credential from POST /v1/devices/register."},
            },
        },
    }


_DOCUMENT = _build()


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the OpenAPI document (callers may change it)."""
    return copy.deepcopy(_DOCUMENT)
