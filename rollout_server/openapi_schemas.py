"""Building blocks of the OpenAPI document: schema helpers and the component schemas.

See :mod:`rollout_server.openapi` for the document and how it is kept true.
"""

from __future__ import annotations

from typing import Any

from edgeship.contract.latency import BUCKET_COUNT
from edgeship.contract.reports import ERROR_REASONS
from edgeship.contract.sketch import MAX_BUCKETS, MAX_INDEX, MIN_INDEX
from edgeship.contract.sketch import SCHEMA as SKETCH_SCHEMA
from rollout_server.analysis import Metric, Mode, Phase
from rollout_server.auth import ENROLL, ROLES

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1"
#: ``rollout_server.validation.NAME`` (model names, device classes) in ECMA-262 syntax.
NAME_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
DEVICE_CLASS_PATTERN = r"^[a-z0-9]+([_-][a-z0-9]+)*$"
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
NO_TOKEN = (401, "No 'Authorization: Bearer <token>' header, or an unknown or revoked token "
                 "('unauthorized'), or an expired one ('token_expired').")
NO_DEVICE = (401, "No 'Authorization: Bearer <credential>' header or an unknown device credential "
                  "(error 'unauthorized', also a credential rotated away from once its grace is over), "
                  "or a device an operator revoked ('device_revoked') or rejected ('device_rejected').")
PENDING = "the device waits for an operator to accept it ('device_pending', with Retry-After)"


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
    "pass_alpha": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "exclusiveMaximum": True,
                   "maximum": 0.5,
                   "description": "Limits only. Left out: a limit passes when its point estimate is "
                                  "within it. Set: only when the canary is significantly within it "
                                  "(p < pass_alpha); otherwise the stage holds."},
    "dry_run": {"type": "boolean", "default": False,
                "description": "Evaluated every window and its verdicts stored (flagged dry_run), but it "
                               "never acts: no rollback, no hold, no share of the other guards' alpha. At "
                               "least one guard must act."},
}, ("metric",), closed=True)

GUARD_SPEC = _object({
    "alpha": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "exclusiveMaximum": True,
              "maximum": 0.5, "default": 0.05},
    "guards": {"type": "array", "items": _ref("Guard"), "minItems": 1,
               "description": "Left out: the default guards."},
    "shadow": {"type": "boolean", "description": "With default guards: add the agreement guard."},
}, closed=True)

#: rollout_server.targeting: what a device claims of itself, and a rollout's conditions on it.
ATTRIBUTE_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
ATTRIBUTES = {"type": "object", "maxProperties": 32,
              "additionalProperties": {"type": "string", "maxLength": 128},
              "description": "Claims used only for canary targeting: names of 1 to 64 characters matching "
                             f"{ATTRIBUTE_PATTERN} (not device_class, the server's own), values strings of "
                             "at most 128 characters without control characters, e.g. "
                             "{\"app_version\": \"4.2.1\", \"region\": \"eu\"}."}
TARGET_CONDITION = _object({
    "attribute": _text(64, pattern=ATTRIBUTE_PATTERN,
                       description="A device attribute, or device_class (the registered class)."),
    "op": {"type": "string", "enum": ["==", "!=", "in", "not_in", ">=", ">", "<=", "<"]},
    "value": {"oneOf": [{"type": "string", "maxLength": 128},
                        {"type": "array", "minItems": 1, "maxItems": 64,
                         "items": {"type": "string", "maxLength": 128}}],
              "description": "A list for in and not_in, else a string; >, >=, <, <= take a dotted numeric "
                             "version (4.10 > 4.9), and == / != compare as versions when both sides are."},
}, ("attribute", "op", "value"), closed=True)

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
    "target": _nullable({"type": "array", "maxItems": 16, "items": _ref("TargetCondition"),
                         "description": "Who may be a canary: all conditions must hold. Devices they do not "
                                        "admit run the stable release with no rollout_id and count in "
                                        "neither arm. Left out or null: every device."}),
    "approve_before": {"type": "array", "items": {"type": "number"},
                       "description": "Manual approval gates: percents of later stages (100: promotion, "
                                      "even without a 100% stage). Before each starts the rollout waits in "
                                      "awaiting_approval (guards keep running; a fail rolls back) until "
                                      "POST /v1/rollouts/{id}/approve."},
    "start_at": {"type": "string", "description": "ISO 8601 time (no offset: UTC); the rollout stays pending "
                                                  "until then."},
    "windows": {"type": "array", "items": _ref("RolloutWindow"), "maxItems": 32,
                "description": "Allowed windows: the rollout starts, advances, asks for approval and "
                               "promotes only inside one of them; rollbacks and pauses happen at any time."},
}, ("model", "candidate_version"))

ROLLOUT_WINDOW = _object({
    "days": {"type": "array", "minItems": 1,
             "items": {"type": "string", "enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]},
             "description": "The days it opens (default: every day)."},
    "from": {"type": "string", "pattern": r"^\d\d:\d\d$", "description": "Opens at HH:MM local time."},
    "to": {"type": "string", "pattern": r"^\d\d:\d\d$",
           "description": "Closes at HH:MM (up to 24:00); earlier than from: the next day."},
    "tz": {"type": "string", "default": "UTC", "description": "IANA time zone, e.g. Europe/Berlin."},
}, ("from", "to"), closed=True)

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
    "hold_reason": _nullable({"type": "string",
                              "description": "Why the schedule keeps the rollout from moving forward now, "
                                             "e.g. 'outside the allowed windows; next opens at ...'."}),
    "approval": _nullable({**_object({
        "stage": _nullable({"type": "integer",
                            "description": "The stage the approval starts; null: promotion."}),
        "percent": {"type": "number"},
        "action": {"type": "string", "description": "'advance to 50%' or 'promote'."},
        "requested_at": _nullable(TIME),
    }, ("stage", "percent", "action", "requested_at")),
        "description": "The approval awaited (also while paused from awaiting_approval), else null."}),
    "created_at": TIME,
    "updated_at": TIME,
}, ("id", "model", "candidate", "baseline", "phase", "stage", "stages", "canary_percent", "reason",
    "hold_reason", "approval", "created_at", "updated_at"))

ROLLOUT_STATUS = {"allOf": [ROLLOUT_SUMMARY, _object({
    "devices": _nullable({**_object({"canary": {"type": "integer"}, "stable": {"type": "integer"}},
                                    ("canary", "stable")),
                          "description": "Devices active in the stage by the arm the bucketing "
                                         "puts them in; null unless an active stage splits the fleet."}),
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
        "dry_run": {"type": "boolean", "description": "A dry-run guard's verdict: never acted on ('decision' "
                                                      "is what the acting guards did)."},
    }, ("window_end", "stage", "guard", "scope", "outcome", "reason", "decision", "stats", "dry_run"))},
}, ("devices", "spec", "state", "verdicts"))]}

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

_REPORT_FIELDS: dict[str, Schema] = {
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
    "latency_sum_seconds": _nullable({"type": "number", "minimum": 0, "maximum": 1e9}),
    "labelled": _nullable(_count()),
    "correct": _nullable(_count(description="At most labelled.")),
    "shadow_samples": _nullable(_count()),
    "shadow_agree": _nullable(_count(description="At most shadow_samples.")),
    "peak_rss_bytes": _nullable(_count()),
    "dropped_windows": _nullable(_count(10**6)),
}
_REPORT_REQUIRED = ("id", "model", "version", "variant", "cohort", "window_start", "window_end", "inferences")

REPORT_V2 = _object({
    **_REPORT_FIELDS,
    "schema": {"type": "integer", "enum": [2]},
    "latency": _object({
        "schema": {"type": "integer", "enum": [SKETCH_SCHEMA]},
        "buckets": {"type": "array", "maxItems": MAX_BUCKETS, "items": {
            "type": "array", "minItems": 2, "maxItems": 2,
            "items": {"type": "integer", "minimum": MIN_INDEX, "maximum": MAX_INDEX},
            "description": "[index, count]: count latencies in (2^((index-1)/32), 2^(index/32)] s; "
                           "each index once."}},
    }, ("schema", "buckets"), closed=True,
        description="Latency sketch (edgeship.contract.sketch); its total must not exceed inferences."),
}, (*_REPORT_REQUIRED, "schema", "latency"), description="A report of this release's agents.")

REPORT_V1 = _object({
    **_REPORT_FIELDS,
    "schema": {"type": "integer", "enum": [1]},
    "latency_counts": {"type": "array", "minItems": BUCKET_COUNT, "maxItems": BUCKET_COUNT,
                       "items": _count(),
                       "description": "The v1 latency histogram (edgeship.contract.latency); "
                                      "its sum must not exceed inferences."},
}, (*_REPORT_REQUIRED, "latency_counts"), description="A report of an agent before schema 2.")

REPORT: Schema = {"oneOf": [_ref("ReportV2"), _ref("ReportV1")]}

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
        "variant": {"type": "object", "description": "The candidate variant, as in 'variant'."},
        "artifact_url": {"type": "string"},
        "golden_url": {"type": "string"},
        "manifest": {"type": "object", "description": "The candidate release's signed manifest."},
        "sample_share": {"type": "number"},
    }, ("version", "variant_id", "sha256", "variant", "artifact_url", "golden_url", "manifest",
        "sample_share")),
}, ("model", "version", "cohort", "rollout_id", "variant", "artifact_url", "golden_url", "manifest",
    "report_interval_seconds"))

REGISTER = _object({
    "enrollment_token": _text(128),
    "device_class": _text(32, pattern=DEVICE_CLASS_PATTERN,
                          description="Coarse class, e.g. rpi4, android, linux-x86_64."),
    "arch": _text(32),
    "os": _text(64),
    "ram_bytes": _count(),
    "runtimes": {"type": "object", "maxProperties": 16,
                 "additionalProperties": _text(64),
                 "description": "Runtime name (1 to 32 characters) → version, "
                                "e.g. {\"onnxruntime\": \"1.20.1\"}."},
    "attributes": _nullable(ATTRIBUTES),
}, ("enrollment_token", "device_class", "arch", "os", "ram_bytes", "runtimes"))

TOKEN_CREATE = _object({
    "name": _text(),
    "role": {"type": "string", "enum": [*ROLES, ENROLL]},
    "expires_in_seconds": _nullable({"type": "integer", "minimum": 1, "maximum": 10 * 365 * 86400,
                                     "description": "The token expires this long after creation "
                                                    "(401 'token_expired' / 'enrollment_expired' after)."}),
    "max_uses": _nullable({"type": "integer", "minimum": 1, "maximum": 10**9,
                           "description": "Enrollment tokens: the most devices it may enroll."}),
    "device_classes": _nullable({"type": "array", "minItems": 1, "maxItems": 64,
                                 "items": _text(32, pattern=DEVICE_CLASS_PATTERN),
                                 "description": "Enrollment tokens: the only device classes it enrolls."}),
    # OpenAPI 3.0: a nullable enum must list null itself
    "admission": _nullable({"type": "string", "enum": ["auto", "manual", None],
                            "description": "Enrollment tokens: 'manual' keeps the devices it enrolls "
                                           "pending until an operator accepts them; default: the "
                                           "server's DEVICE_ADMISSION."}),
}, ("name", "role"), description="max_uses, device_classes and admission are refused (400) on an "
                                 "operator token.")

#: a token as listed (never its secret); the enrollment fields only for role 'enroll'.
TOKEN_VIEW = _object({
    "id": {"type": "integer"}, "name": {"type": "string"},
    "role": {"type": "string", "enum": [*ROLES, ENROLL]},
    "expires_at": _nullable(TIME),
    "uses": {"type": "integer", "description": "Enrollment tokens: devices enrolled with it."},
    "max_uses": _nullable({"type": "integer"}),
    "device_classes": _nullable({"type": "array", "items": {"type": "string"}}),
    "admission": _nullable({"type": "string", "enum": ["auto", "manual", None]}),
}, ("id", "name", "role", "expires_at"))

#: a device as operators see it (GET /v1/devices, accept, reject, revoke).
DEVICE_VIEW = _object({
    "device_id": {"type": "string"},
    "state": {"type": "string", "enum": ["pending", "active", "rejected", "revoked"]},
    "revoked": {"type": "boolean"},
    "device_class": {"type": "string"}, "arch": {"type": "string"}, "os": {"type": "string"},
    "ram_bytes": {"type": "integer"},
    "runtimes": {"type": "object", "additionalProperties": {"type": "string"}},
    "created_at": TIME, "last_seen_at": _nullable(TIME), "credential_issued_at": TIME,
    "enrollment_token_id": _nullable({"type": "integer"}),
}, ("device_id", "state", "revoked", "device_class", "arch", "os", "ram_bytes", "runtimes", "created_at",
    "last_seen_at", "credential_issued_at", "enrollment_token_id"))

#: the event kinds a webhook may subscribe to (rollout_server.notifications.events.KINDS).
WEBHOOK_KINDS = ["phase_changed", "stage_advanced", "verdict_failed", "approval_requested"]

WEBHOOK_CREATE = _object({
    "url": {"type": "string", "minLength": 1, "maxLength": 2048, "pattern": r"^https?://\S+$",
            "description": "http(s) URL without credentials; with WEBHOOK_ALLOWED_HOSTS set, its host must "
                           "be one of them."},
    "secret": _nullable({"type": "string", "minLength": 16, "maxLength": 256,
                         "description": "The signing secret (printable); default: a generated one."}),
    "kinds": _nullable({"type": "array", "minItems": 1, "items": {"type": "string", "enum": WEBHOOK_KINDS},
                        "description": "Only these event kinds (default: every kind)."}),
    "format": _nullable({"type": "string", "enum": ["edgeship", "slack", None],
                         "description": "'edgeship' JSON (default) or Slack's {\"text\": ...}."}),
    "model": _nullable({**_text(pattern=NAME_PATTERN), "description": "Only this model's rollouts."}),
}, ("url",), description="Refused (400) when the URL has no host, carries user:password@, or its host "
                         "is not allowed, or the secret is not printable.")

#: a webhook as listed (never its secret).
WEBHOOK_VIEW = _object({
    "id": {"type": "integer"}, "url": {"type": "string"},
    "kinds": {"type": "array", "items": {"type": "string", "enum": WEBHOOK_KINDS}},
    "model": _nullable({"type": "string"}), "format": {"type": "string", "enum": ["edgeship", "slack"]},
    "created_by": {"type": "string"}, "created_at": TIME,
}, ("id", "url", "kinds", "model", "format", "created_by", "created_at"))

WEBHOOK_DELIVERY = _object({
    "id": {"type": "integer", "description": "The Edgeship-Delivery header of its requests."},
    "event_id": {"type": "integer"},
    "kind": {"type": "string", "enum": [*WEBHOOK_KINDS, "test"]},
    "event_at": TIME,
    "status": {"type": "string", "enum": ["pending", "delivered", "failed"],
               "description": "'failed': given up after WEBHOOK_MAX_ATTEMPTS attempts."},
    "attempts": {"type": "integer"},
    "last_attempt_at": _nullable(TIME),
    "last_status_code": _nullable({"type": "integer"}),
    "last_error": _nullable({"type": "string"}),
    "next_attempt_at": _nullable({**TIME, "description": "Pending only; null: as soon as it is its turn."}),
}, ("id", "event_id", "kind", "event_at", "status", "attempts", "last_attempt_at", "last_status_code",
    "last_error", "next_attempt_at"))

SCHEMAS: dict[str, Schema] = {
    "Error": ERROR, "Stage": STAGE, "Guard": GUARD, "GuardSpec": GUARD_SPEC,
    "RolloutCreate": ROLLOUT_CREATE, "RolloutSummary": ROLLOUT_SUMMARY, "RolloutStatus": ROLLOUT_STATUS,
    "RolloutWindow": ROLLOUT_WINDOW,
    "Variant": VARIANT, "Release": RELEASE, "Report": REPORT, "ReportV1": REPORT_V1, "ReportV2": REPORT_V2,
    "Assignment": ASSIGNMENT,
    "TargetCondition": TARGET_CONDITION,
    "DeviceRegistration": REGISTER, "TokenCreate": TOKEN_CREATE, "Token": TOKEN_VIEW, "Device": DEVICE_VIEW,
    "WebhookCreate": WEBHOOK_CREATE, "Webhook": WEBHOOK_VIEW, "WebhookDelivery": WEBHOOK_DELIVERY,
}
