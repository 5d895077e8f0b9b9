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

from monitoring.buckets import BUCKET_COUNT
from rollout_server.analysis import Metric, Mode, Phase
from rollout_server.api.reports import MAX_BATCH as MAX_REPORT_BATCH
from rollout_server.api.rollouts import ACTIONS
from rollout_server.auth import ENROLL, ROLES
from rollout_server.models import ERROR_REASONS

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1"
#: ``rollout_server.validation.NAME`` (model names, device classes) in ECMA-262 syntax.
NAME_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
#: ``rollout_server.validation.count``'s default maximum.
MAX_COUNT = 10**12
#: Largest id in a path or a report (INTEGER columns on PostgreSQL); the routes' int converters
#: stop there, so a larger id is a 404 (or a 400 in a report), never an overflow.
MAX_ID = 2**31 - 1

#: Times the server writes: ISO 8601 in UTC. Not ``format: date-time``: SQLite gives them back
#: without an offset (``2025-01-01T12:00:00.123456``), PostgreSQL with ``+00:00``.
TIME: dict[str, Any] = {"type": "string", "description": "ISO 8601 time, UTC."}

OPERATOR = "operatorToken"
DEVICE = "deviceCredential"

Schema = dict[str, Any]


# --- schema helpers -------------------------------------------------------------------------

def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _text(max_length: int = 64, *, pattern: str | None = None, **extra: Any) -> Schema:
    """``validation.short_text``: a non-empty string of at most ``max_length`` characters."""
    schema: Schema = {"type": "string", "minLength": 1, "maxLength": max_length, **extra}
    if pattern is not None:
        schema["pattern"] = pattern
    return schema


def _count(maximum: int = MAX_COUNT, **extra: Any) -> Schema:
    """``validation.count``: an integer in [0, maximum] (never a boolean)."""
    return {"type": "integer", "minimum": 0, "maximum": maximum, **extra}


def _object(properties: dict[str, Schema], required: tuple[str, ...] = (), *,
            closed: bool = False, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _json(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _responses(ok: dict[str, Any], *errors: tuple[int, str]) -> dict[str, Any]:
    out = dict(ok)
    for status, description in errors:
        out[str(status)] = _error(description)
    return out


def _body(schema: Schema, *, required: bool = True, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": required, "content": {"application/json": media}}


def _path(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


# Errors shared by many operations.
BAD_JSON = (400, "Bad input: the body is not a JSON object, or a field is missing, of the wrong type or out "
                 "of range (the detail names it).")
NO_TOKEN = (401, "No 'Authorization: Bearer <token>' header, or an unknown or revoked token.")
NO_DEVICE = (401, "No 'Authorization: Bearer <credential>' header, or an unknown or revoked device "
                  "credential.")


def _role(role: str) -> tuple[int, str]:
    return 403, f"The token's role is below {role!r}."


def _operator(role: str) -> dict[str, Any]:
    """An operator-token operation's security and the minimum role (``x-minimum-role``)."""
    return {"security": [{OPERATOR: []}], "x-minimum-role": role}


# --- component schemas ----------------------------------------------------------------------

ERROR = _object({
    "error": {"type": "string", "description": "A short machine-readable code, e.g. 'bad_request'."},
    "detail": {"type": "string", "description": "What was wrong, for a human."},
}, ("error", "detail"))

STAGE = _object({
    "percent": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 100,
                "description": "Canary share of the fleet, percent. Rising strictly from stage to stage; "
                               "only the last stage may be 100."},
    "min_duration_seconds": {"type": "number", "minimum": 0, "default": 3600},
    "min_samples": {"type": "integer", "minimum": 0, "default": 5000},
}, ("percent",), closed=True)

GUARD = _object({
    "metric": {"type": "string", "enum": [m.value for m in Metric]},
    "mode": {"type": "string", "enum": [m.value for m in Mode], "default": "limit",
             "description": "'gain' only for latency and accuracy."},
    "threshold": {"type": "number", "description": "Meaning and allowed range depend on metric and mode "
                                                   "(see docs/rollout-analysis.md); defaults per metric."},
    "min_samples": {"type": "integer", "minimum": 1},
    "name": {"type": "string", "minLength": 1, "description": "Unique within the rollout."},
    "cap": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1,
            "description": "error_rate and load_failures only."},
    "relative_margin": {"type": "number", "minimum": 0, "description": "error_rate and load_failures only."},
    "quantile": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "exclusiveMaximum": True,
                 "maximum": 1, "description": "latency only."},
    "reasons": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(ERROR_REASONS)},
                "description": "error_rate only."},
}, ("metric",), closed=True)

GUARD_SPEC = _object({
    "alpha": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "exclusiveMaximum": True,
              "maximum": 0.5, "default": 0.05},
    "guards": {"type": "array", "items": _ref("Guard"), "minItems": 1,
               "description": "Left out: the default guards."},
    "shadow": {"type": "boolean", "description": "With default guards: add the agreement guard."},
}, closed=True)

ROLLOUT_CREATE = _object({
    "model": _text(pattern=NAME_PATTERN),
    "candidate_version": _text(
        description="A release of the model with a validated variant; not the stable one."),
    "stages": {"type": "array", "minItems": 1, "items": _ref("Stage"),
               "description": "Default 10% → 50% → 100%."},
    "guards": _ref("GuardSpec"),
    "stratify": {"type": "boolean", "default": False, "description": "Bucket per device class."},
    "shadow": {"type": "boolean", "default": False},
    "shadow_share": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1, "default": 0.1},
}, ("model", "candidate_version"))

ROLLOUT_SUMMARY = _object({
    "id": {"type": "integer"},
    "model": {"type": "string"},
    "candidate": {"type": "string"},
    "baseline": {"type": "string"},
    "phase": {"type": "string", "enum": [p.value for p in Phase]},
    "stage": {"type": "integer", "minimum": 1},
    "stages": {"type": "integer", "minimum": 1},
    "canary_percent": {"type": "number"},
    "reason": _nullable({"type": "string"}),
    "created_at": TIME,
    "updated_at": TIME,
}, ("id", "model", "candidate", "baseline", "phase", "stage", "stages", "canary_percent", "reason",
    "created_at", "updated_at"))

ROLLOUT_STATUS = {"allOf": [ROLLOUT_SUMMARY, _object({
    "spec": {"type": "object"},
    "state": {"type": "object"},
    "verdicts": {"type": "array", "description": "Newest first.", "items": _object({
        "window_end": TIME,
        "stage": {"type": "integer"},
        "guard": {"type": "string"},
        "scope": {"type": "string"},
        "outcome": {"type": "string"},
        "reason": {"type": "string"},
        "decision": {"type": "string"},
        "stats": {"type": "object"},
    }, ("window_end", "stage", "guard", "scope", "outcome", "reason", "decision", "stats"))},
}, ("spec", "state", "verdicts"))]}

VARIANT = _object({
    "id": {"type": "string"},
    "format": {"type": "string"},
    "precision": {"type": "string"},
    "runtime": _object({"name": {"type": "string"}, "min_version": {"type": "string"}},
                       ("name", "min_version")),
    "validation": {"type": "string"},
    "sha256": {"type": "string"},
    "size_bytes": {"type": "integer"},
    "peak_rss_bytes": _nullable({"type": "integer"}),
    "url": {"type": "string"},
}, ("id", "format", "precision", "runtime", "validation", "sha256", "size_bytes", "peak_rss_bytes", "url"))

RELEASE = _object({
    "model": {"type": "string"},
    "version": {"type": "string"},
    "signed_by": {"type": "string"},
    "created_at": _nullable(TIME),
    "stable": {"type": "boolean"},
    "variants": {"type": "array", "items": _ref("Variant")},
    "golden": _object({
        "file": _nullable({"type": "string"}),
        "sha256": _nullable({"type": "string"}),
        "count": _nullable({"type": "integer"}),
        "url": {"type": "string"},
    }, ("file", "sha256", "count", "url")),
    "manifest": {"type": "object", "description": "The signed manifest (GET of one release only)."},
    "created": {"type": "boolean", "description": "Publish only: false for an identical re-publish."},
}, ("model", "version", "signed_by", "created_at", "stable", "variants", "golden"))

REPORT = _object({
    "id": _text(description="Made by the device; the server accepts each id at most once per device."),
    "model": _text(pattern=NAME_PATTERN),
    "version": _text(),
    "variant": _text(),
    "rollout_id": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_ID}),
    "cohort": {"type": "string", "enum": ["stable", "canary"]},
    "window_start": TIME,
    "window_end": {"type": "string", "format": "date-time", "description": "Not before window_start."},
    "inferences": _count(),
    "errors": _object({reason: _nullable(_count()) for reason in ERROR_REASONS}, closed=True,
                      description="Errors by reason."),
    "latency_counts": {"type": "array", "minItems": BUCKET_COUNT, "maxItems": BUCKET_COUNT,
                       "items": _count(),
                       "description": "Latency histogram on the shared buckets (monitoring/buckets.py); "
                                      "its sum must not exceed inferences."},
    "labelled": _nullable(_count()),
    "correct": _nullable(_count(description="At most labelled.")),
    "shadow_samples": _nullable(_count()),
    "shadow_agree": _nullable(_count(description="At most shadow_samples.")),
    "peak_rss_bytes": _nullable(_count()),
    "dropped_windows": _nullable(_count(10**6)),
}, ("id", "model", "version", "variant", "cohort", "window_start", "window_end", "inferences",
    "latency_counts"))

ASSIGNMENT = _object({
    "model": {"type": "string"},
    "version": {"type": "string"},
    "cohort": {"type": "string", "enum": ["stable", "canary"]},
    "rollout_id": _nullable({"type": "integer"}),
    "variant": _object({
        "id": {"type": "string"},
        "format": {"type": "string"},
        "sha256": {"type": "string"},
    }, ("id", "format", "sha256")),
    "artifact_url": {"type": "string"},
    "golden_url": {"type": "string"},
    "manifest": {"type": "object"},
    "report_interval_seconds": {"type": "number"},
    "shadow": _object({
        "version": {"type": "string"},
        "variant_id": {"type": "string"},
        "sha256": {"type": "string"},
        "artifact_url": {"type": "string"},
        "sample_share": {"type": "number"},
    }, ("version", "variant_id", "sha256", "artifact_url", "sample_share")),
}, ("model", "version", "cohort", "rollout_id", "variant", "artifact_url", "golden_url", "manifest",
    "report_interval_seconds"))

REGISTER = _object({
    "enrollment_token": _text(128),
    "device_class": _text(32, pattern=NAME_PATTERN, description="Coarse class, e.g. rpi4, android."),
    "arch": _text(32),
    "os": _text(64),
    "ram_bytes": _count(),
    "runtimes": {"type": "object", "maxProperties": 16,
                 "additionalProperties": _text(64),
                 "description": "Runtime name (1 to 32 characters) → version, "
                                "e.g. {\"onnxruntime\": \"1.20.1\"}."},
}, ("enrollment_token", "device_class", "arch", "os", "ram_bytes", "runtimes"))

TOKEN_CREATE = _object({
    "name": _text(),
    "role": {"type": "string", "enum": [*ROLES, ENROLL]},
}, ("name", "role"))

SCHEMAS: dict[str, Schema] = {
    "Error": ERROR, "Stage": STAGE, "Guard": GUARD, "GuardSpec": GUARD_SPEC,
    "RolloutCreate": ROLLOUT_CREATE, "RolloutSummary": ROLLOUT_SUMMARY, "RolloutStatus": ROLLOUT_STATUS,
    "Variant": VARIANT, "Release": RELEASE, "Report": REPORT, "Assignment": ASSIGNMENT,
    "DeviceRegistration": REGISTER, "TokenCreate": TOKEN_CREATE,
}


# --- paths ----------------------------------------------------------------------------------

MODEL_NAME = _path("name", {"type": "string", "minLength": 1}, "Model name.")
VERSION = _path("version", {"type": "string", "minLength": 1}, "Release version.")
ROLLOUT_ID = _path("rollout_id", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "Rollout id.")
DEVICE_ID = _path("device_id", {"type": "string", "minLength": 1}, "Device id (from registration).")


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
                "runtimes": {"onnxruntime": "1.20.1", "litert": "2.3.0"}}),
            "responses": _responses(
                {"201": _json(_object({"device_id": {"type": "string"}, "credential": {"type": "string"}},
                                      ("device_id", "credential")), "Enrolled.")},
                BAD_JSON, (401, "Unknown or revoked enrollment token.")),
        }},
        "/v1/devices/{device_id}/assignment": {"get": {
            "tags": ["devices"], "operationId": "getAssignment", "security": [{DEVICE: []}],
            "summary": "The release and variant this device runs now (cacheable: ETag / If-None-Match).",
            "parameters": [
                DEVICE_ID,
                {"name": "model", "in": "query", "required": True,
                 "schema": {"type": "string", "pattern": NAME_PATTERN}},
                {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "responses": _responses(
                {"200": {**_json(_ref("Assignment"), "The assignment."),
                         "headers": {"ETag": {"schema": {"type": "string"}}}},
                 "304": {"description": "Unchanged since the ETag sent in If-None-Match."}},
                (400, "The model query parameter is missing or not a model name."), NO_DEVICE,
                (403, "The credential belongs to another device."),
                (404, "No such model, or it has no stable release yet."),
                (409, "No variant of the release runs on this device ('no_variant').")),
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
                BAD_JSON, NO_DEVICE, (409, "Some reports of the batch were stored concurrently; retry."),
                (413, "The body is over MAX_REPORT_BYTES.")),
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
            "description": "Any device credential or operator token. Immutable: cacheable forever.",
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
            }, (400, "Not a sha256 (64 lowercase hex digits)."), NO_TOKEN, (404, "No such artifact."),
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
                    {"201": _json(_ref("RolloutStatus"), "Started.")},
                    (400, "Bad input, including stages or guards the analysis rejects, or a candidate "
                          "without a validated variant."),
                    NO_TOKEN, _role("operator"), (404, "No such model or candidate release."),
                    (409, "The model has no stable release, the candidate is already stable, or another "
                          "rollout of the model is active.")),
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
            "summary": "Manual pause, resume, promote or abort.",
            "parameters": [ROLLOUT_ID, _path("action", {"type": "string", "enum": list(ACTIONS)},
                                             "The action.")],
            "requestBody": _body(_object({"reason": _nullable({"type": "string", "maxLength": 500})}),
                                 required=False),
            "responses": _responses(
                {"200": _json(_ref("RolloutStatus"), "Done.")},
                (400, "The body is not a JSON object, or its reason is not a string of at most 500 "
                      "characters."), NO_TOKEN, _role("operator"),
                (404, "No such rollout or action."),
                (409, "The action is not allowed in the rollout's phase.")),
        }},
        "/v1/tokens": {
            "post": {
                "tags": ["admin"], "operationId": "createToken", **_operator("admin"),
                "summary": "Create an operator or enrollment token; the secret is shown once.",
                "requestBody": _body(_ref("TokenCreate"),
                                     example={"name": "ci-publisher", "role": "publisher"}),
                "responses": _responses(
                    {"201": _json(_object({
                        "name": {"type": "string"}, "role": {"type": "string", "enum": [*ROLES, ENROLL]},
                        "token": {"type": "string"},
                    }, ("name", "role", "token")), "Created.")},
                    BAD_JSON, NO_TOKEN, _role("admin")),
            },
            "get": {
                "tags": ["admin"], "operationId": "listTokens", **_operator("admin"),
                "summary": "Every token (never its secret).",
                "responses": _responses(
                    {"200": _json(_object({"tokens": {"type": "array", "items": _object({
                        "id": {"type": "integer"}, "name": {"type": "string"},
                        "role": {"type": "string", "enum": [*ROLES, ENROLL]},
                        "revoked": {"type": "boolean"}, "created_at": TIME,
                    }, ("id", "name", "role", "revoked", "created_at"))}}, ("tokens",)), "The tokens.")},
                    NO_TOKEN, _role("admin")),
            },
        },
        "/v1/tokens/{token_id}/revoke": {"post": {
            "tags": ["admin"], "operationId": "revokeToken", **_operator("admin"),
            "summary": "Revoke a token.",
            "parameters": [_path("token_id", {"type": "integer", "minimum": 0, "maximum": MAX_ID},
                                 "Token id.")],
            "responses": _responses(
                {"200": _json(_object({"id": {"type": "integer"},
                                       "revoked": {"type": "boolean", "enum": [True]}},
                                      ("id", "revoked")), "Revoked.")},
                NO_TOKEN, _role("admin"), (404, "No such token.")),
        }},
        "/v1/devices/{device_id}/revoke": {"post": {
            "tags": ["admin"], "operationId": "revokeDevice", **_operator("operator"),
            "summary": "Revoke a device's credential.",
            "parameters": [DEVICE_ID],
            "responses": _responses(
                {"200": _json(_object({"device_id": {"type": "string"},
                                       "revoked": {"type": "boolean", "enum": [True]}},
                                      ("device_id", "revoked")), "Revoked.")},
                NO_TOKEN, _role("operator"), (404, "No such device.")),
        }},
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
        "paths": _paths(),
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
