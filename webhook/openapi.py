"""The OpenAPI 3.0 document served at `/openapi.json`, written to match what the routes really answer.

tests/api/test_openapi.py runs schemathesis against the live app with this document: every status
code and body a route can produce must be listed here, or that test fails.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Blueprint

from kling.kinds import KIND_NAMES
from kling.validation import ALL_RATIOS, IMAGE_REFERENCES, MAX_PROMPT, MODEL_CAPABILITIES
from models.delivery import VOCABULARY
from models.documents import IMAGE_FIELDS, JOB_FIELDS, NOTIFICATION_FIELDS, TRANSITION_FIELDS
from models.enums import ImageStatus, JobStatus, TransitionSource
from webhook.api import DEFAULT_LIMIT, MAX_IDEMPOTENCY_KEY, MAX_LIMIT, PROVIDERS
from webhook.body import MAX_WEBHOOK_URL
from webhook.views import ViewResult
from worker.account_views import ACCOUNT_FIELDS, STATES

bp = Blueprint("openapi", __name__)

JSON = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _json(schema: Schema, description: str, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _error(description: str, headers: dict[str, Any] | None = None) -> Schema:
    return _json(_ref("Error"), description, headers)


_STRING_HEADER = {"schema": {"type": "string"}}
UNAUTHORIZED = _error(
    "Missing or wrong bearer token", {"WWW-Authenticate": {**_STRING_HEADER, "required": True}}
)
DB_DOWN = _error("The database is unavailable; retry later", {"Retry-After": _STRING_HEADER})
NOT_FOUND = _error("Unknown job")
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = _nullable(TIME)


def _document(fields: tuple[str, ...], properties: dict[str, Schema]) -> Schema:
    """The schema of a job document part: every field of `models.documents` is always present."""
    if tuple(properties) != fields:
        raise ValueError(f"schema properties {list(properties)} are not the document's fields {list(fields)}")
    return {"type": "object", "required": list(fields), "properties": properties}


def _schemas() -> dict[str, Schema]:
    from webhook import openapi_control  # here: it builds on this module's helpers

    field_error = {
        "type": "object",
        "required": ["field", "rule", "message"],
        "properties": {
            "field": {"type": "string"},
            "rule": {"type": "string", "example": "enum"},
            "message": {"type": "string"},
        },
    }
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "fields": {"type": "array", "items": _ref("FieldError")}},
    }
    job_request = {
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": False,
        "description": (
            "The provider's image-generation fields plus `provider`, `webhook_url` and `metadata`. "
            "Provider rules (model capabilities, image checks, the Appy Pie gateway's limits) are "
            "checked too and answered with 422 naming each field."
        ),
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT},
            "negative_prompt": _nullable({"type": "string", "maxLength": MAX_PROMPT}),
            "model_name": _nullable({"type": "string", "enum": list(MODEL_CAPABILITIES)}),
            "image": _nullable(
                {
                    "type": "string",
                    "description": "http(s) URL (at most 8,192 characters) or bare base64 "
                    "(jpg/png, >= 300 px, <= 10 MB)",
                }
            ),
            "image_reference": _nullable({"type": "string", "enum": list(IMAGE_REFERENCES)}),
            "image_fidelity": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
            "human_fidelity": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
            "resolution": _nullable({"type": "string", "enum": ["1k", "2k"]}),
            "n": _nullable({"type": "integer", "minimum": 1, "maximum": 9}),
            "aspect_ratio": _nullable({"type": "string", "enum": list(ALL_RATIOS)}),
            "provider": _nullable({"type": "string", "enum": list(PROVIDERS)}),
            "webhook_url": _nullable(
                {
                    "type": "string",
                    "format": "uri",
                    "maxLength": MAX_WEBHOOK_URL,
                    "description": "Downstream notification URL (http/https, a public host)",
                }
            ),
            "metadata": _nullable(
                {"type": "object", "additionalProperties": True, "description": "At most 16 KiB as JSON"}
            ),
            **openapi_control.request_properties(),
        },
    }
    transition = _document(
        TRANSITION_FIELDS,
        {
            "from": _nullable({"type": "string", "enum": [s.value for s in JobStatus]}),
            "to": {"type": "string", "enum": [s.value for s in JobStatus]},
            "source": {"type": "string", "enum": [s.value for s in TransitionSource]},
            "at": TIME,
        },
    )
    image = _document(
        IMAGE_FIELDS,
        {
            "index": {"type": "integer", "minimum": 0},
            "status": {"type": "string", "enum": [s.value for s in ImageStatus]},
            "source_url": {"type": "string"},
            "s3_bucket": _nullable({"type": "string"}),
            "s3_key": _nullable({"type": "string"}),
            "sha256": _nullable({"type": "string"}),
            "bytes": _nullable({"type": "integer"}),
            "content_type": _nullable({"type": "string"}),
            "archived_at": NULLABLE_TIME,
        },
    )
    notification = _document(
        NOTIFICATION_FIELDS,
        {
            "event": {"type": "string"},
            "attempts": {"type": "integer"},
            "last_status": _nullable({"type": "integer"}),
            "last_error": _nullable(
                {
                    "type": "string",
                    "enum": [*sorted(VOCABULARY), None],  # 3.0.3: a nullable enum lists null
                    "description": "Why the last attempt failed (null once delivered): timeout, "
                    "refused (unreachable), blocked_address (not a public address: nothing sent), "
                    "redirect (3xx; redirects are not followed), http_4xx, http_5xx, error (other)",
                }
            ),
            "created_at": TIME,
            "delivered_at": NULLABLE_TIME,
            "next_attempt_at": NULLABLE_TIME,
        },
    )
    job = _document(
        JOB_FIELDS,
        {
            "id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": [s.value for s in JobStatus]},
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "account": _nullable(
                {"type": "string", "description": "The provider account the job was created on"}
            ),
            "provider_task_id": _nullable({"type": "string"}),
            "external_task_id": {"type": "string"},
            "params": {
                "type": "object",
                "additionalProperties": True,
                "description": "The request's provider fields; an inline base64 `image` is shown as a marker",
            },
            "error": _nullable(
                {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": _nullable({"type": "string"})},
                }
            ),
            "webhook_url": _nullable({"type": "string"}),
            "metadata": _nullable({"type": "object", "additionalProperties": True}),
            "created_at": TIME,
            "updated_at": TIME,
            "transitions": {"type": "array", "items": _ref("Transition")},
            "images": {"type": "array", "items": _ref("Image")},
            "notifications": {"type": "array", "items": _ref("Notification")},
            "units": _nullable({"type": "number", "description": "Units the task deducted from the pack"}),
            "waiting_for": {
                "nullable": True,
                "description": 'Why a queued job waits: "slots", or {"reason": "no_active_account", '
                '"accounts": {name: "paused: 1102" | "disabled"}}; null when not waiting',
                "oneOf": [
                    {"type": "string", "enum": ["slots"]},
                    {
                        "type": "object",
                        "required": ["reason", "accounts"],
                        "properties": {
                            "reason": {"type": "string", "enum": ["no_active_account", "no_account"]},
                            "accounts": {
                                "type": "object",
                                "additionalProperties": _nullable({"type": "string"}),
                            },
                        },
                    },
                ],
            },
            **openapi_control.job_properties(),
        },
    )
    account = {
        "type": "object",
        "required": [*ACCOUNT_FIELDS],
        "properties": {
            "name": {"type": "string"},
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "kinds": {
                "type": "array",
                "items": {"type": "string", "enum": list(KIND_NAMES)},
                "description": "Task kinds routed to this account",
            },
            "state": {"type": "string", "enum": list(STATES)},
            "reason": _nullable({"type": "string", "description": '"paused: <code>" or "disabled"'}),
            "code": _nullable({"type": "integer", "description": "The provider code that paused it"}),
            "message": _nullable({"type": "string"}),
            "since": NULLABLE_TIME,
            "concurrency": {"type": "integer"},
            "slots_in_use": _nullable({"type": "integer"}),
            "units_today": {"type": "number", "description": "Units deducted since 00:00 UTC"},
        },
    }
    account_list = {
        "type": "object",
        "required": ["accounts"],
        "properties": {"accounts": {"type": "array", "items": _ref("Account")}},
    }
    job_list = {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {
            "jobs": {"type": "array", "items": _ref("Job")},
            "next_cursor": _nullable({"type": "string", "description": "Pass as `cursor` for the next page"}),
        },
    }
    dashboard = {
        "type": "object",
        "required": ["counts", "slots", "images_at_risk", "outbox_backlog", "jobs", "gallery"],
        "properties": {
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "slots": {
                "type": "object",
                "required": ["in_use", "limit"],
                "properties": {"in_use": _nullable({"type": "integer"}), "limit": {"type": "integer"}},
            },
            "images_at_risk": _nullable({"type": "integer"}),
            "accounts_not_active": {
                "type": "array",
                "nullable": True,
                "items": _ref("Account"),
                "description": "Paused or disabled accounts (the banner); null when unknown",
            },
            "outbox_backlog": _nullable({"type": "integer"}),
            "jobs": {"type": "array", "items": _ref("Job")},
            "gallery": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["job_id", "index", "url", "href", "sha256", "bytes"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "index": {"type": "integer"},
                        "url": {"type": "string", "description": "Presigned S3 GET URL"},
                        "href": {"type": "string", "description": "The API's image endpoint"},
                        "sha256": _nullable({"type": "string"}),
                        "bytes": _nullable({"type": "integer"}),
                    },
                },
            },
        },
    }
    return {
        "FieldError": field_error,
        "Error": error,
        "JobRequest": job_request,
        "Transition": transition,
        "Image": image,
        "Notification": notification,
        "Job": job,
        "JobList": job_list,
        "Account": account,
        "AccountList": account_list,
        "Dashboard": dashboard,
        **openapi_control.schemas(),
    }


def _job_id_param() -> Schema:
    return {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _paths() -> dict[str, Any]:
    from webhook import openapi_control  # here: it builds on this module's helpers

    location = {"Location": {**_STRING_HEADER, "required": True, "description": "/v1/jobs/{id}"}}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "/v1/jobs": {
            "post": {
                "summary": "Create a job",
                "operationId": "createJob",
                "security": secured,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "The same key returns the same job (200) instead of a new one",
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
                    }
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("JobRequest")}}},
                "responses": {
                    "202": _json(_ref("Job"), "Job created and queued", location),
                    "200": _json(_ref("Job"), "The job created earlier with this Idempotency-Key", location),
                    "400": _error("Malformed JSON, a body that is not an object, or a bad Idempotency-Key"),
                    "401": UNAUTHORIZED,
                    "413": _error("Body too large"),
                    "415": _error("Content-Type is not application/json"),
                    "422": _error("Invalid fields; `fields` names each one with its rule"),
                    "503": DB_DOWN,
                },
            },
            "get": {
                "summary": "List jobs, newest first",
                "operationId": "listJobs",
                "security": secured,
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": [s.value for s in JobStatus]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(_ref("JobList"), "A page of jobs"),
                    "400": _error("A bad `status`, `limit` or `cursor` (named in `fields`)"),
                    "401": UNAUTHORIZED,
                    "503": DB_DOWN,
                },
            },
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "One job with its transitions, images and notification attempts",
                "operationId": "getJob",
                "security": secured,
                "parameters": [_job_id_param()],
                "responses": {
                    "200": _json(_ref("Job"), "The job"),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                    "503": DB_DOWN,
                },
            }
        },
        **openapi_control.paths(secured, location),
        "/v1/accounts": {
            "get": {
                "summary": "Every provider account: state, slots in use, units today (never credentials)",
                "operationId": "listAccounts",
                "security": secured,
                "responses": {"200": _json(_ref("AccountList"), "The accounts"), "401": UNAUTHORIZED},
            }
        },
        "/v1/jobs/{job_id}/images/{index}": {
            "get": {
                "summary": "Redirect to a presigned S3 URL of an archived image",
                "operationId": "getJobImage",
                "security": secured,
                "parameters": [
                    _job_id_param(),
                    {
                        "name": "index",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "responses": {
                    "302": {
                        "description": "Presigned S3 GET URL (valid for an hour) in Location",
                        "headers": {"Location": {**_STRING_HEADER, "required": True}},
                    },
                    "401": UNAUTHORIZED,
                    "404": _error("Unknown job or image index"),
                    "409": _error("The image is not archived (yet)"),
                    "503": DB_DOWN,
                },
            }
        },
        "/v1/dashboard": {
            "get": {
                "summary": "Everything the dashboard shows, in one read",
                "operationId": "getDashboard",
                "security": secured,
                "responses": {
                    "200": _json(_ref("Dashboard"), "Counts, slots, recent jobs and archived images"),
                    "401": UNAUTHORIZED,
                    "503": DB_DOWN,
                },
            }
        },
        "/callbacks/kling/{job_id}/{token}": {
            "post": {
                "summary": "Provider task callback (the URL is minted per job; not for clients)",
                "operationId": "receiveCallback",
                "parameters": [
                    _job_id_param(),
                    {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"type": "object", "additionalProperties": True}}},
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["outcome"],
                            "properties": {
                                "outcome": {
                                    "type": "string",
                                    "enum": ["applied", "duplicate", "stale", "unconfirmed"],
                                }
                            },
                        },
                        "Applied, or harmlessly ignored",
                    ),
                    "400": _error("Body not a Kling task"),
                    "401": _error("Bad Standard Webhooks signature"),
                    "403": _error("Bad callback token"),
                    "404": _error("Unknown job"),
                    "409": _error("The task is not this job's"),
                    "413": _error("Body too large"),
                    "503": _error("Database unavailable; retry later"),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness; with deep=1, every dependency (database, broker, S3) with its state",
                "operationId": "healthz",
                "parameters": [
                    {
                        "name": "deep",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["1", "true"]},
                    }
                ],
                "responses": {
                    "200": _json({"type": "object"}, "The process answers (deep: every dependency answers)"),
                    "503": _json({"type": "object"}, "deep only: some dependency does not answer"),
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the database only",
                "operationId": "readyz",
                "responses": {
                    "200": _json({"type": "object"}, "The database answers"),
                    "503": _json({"type": "object"}, "The database does not answer"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
                },
            }
        },
        "/": {
            "get": {
                "summary": "The dashboard (HTML; its data comes from /v1/dashboard with the token)",
                "operationId": "dashboard",
                "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}},
            }
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "kling-orchestrator",
            "version": "1",
            "description": (
                "Runs Kling AI image-generation jobs and archives every image to S3. "
                "Every /v1 route needs `Authorization: Bearer <API_TOKEN>`."
            ),
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@bp.get("/openapi.json")
def serve() -> ViewResult:
    return openapi_document(), 200


__all__ = ["bp", "openapi_document"]
