"""The OpenAPI 3.0 document served at `/openapi.json`, written to match what the routes really answer.

tests/api/test_openapi.py runs schemathesis against the live app with this document: every status
code and body a route can produce must be listed here, or that test fails.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Blueprint

from models.enums import JobStatus
from webhook import openapi_control, openapi_operator
from webhook.api import DEFAULT_LIMIT, MAX_IDEMPOTENCY_KEY, MAX_LIMIT
from webhook.openapi_jobs import job_schemas
from webhook.openapi_parts import JSON, Schema, nullable, ref
from webhook.openapi_requests import request_schemas
from webhook.views import ViewResult

bp = Blueprint("openapi", __name__)


def _json(schema: Schema, description: str, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _error(description: str, headers: dict[str, Any] | None = None) -> Schema:
    return _json(ref("Error"), description, headers)


_STRING_HEADER = {"schema": {"type": "string"}}
UNAUTHORIZED = _error(
    "Missing or wrong bearer token", {"WWW-Authenticate": {**_STRING_HEADER, "required": True}}
)
DB_DOWN = _error("The database is unavailable; retry later", {"Retry-After": _STRING_HEADER})
NOT_FOUND = _error("Unknown job (another tenant's job is unknown to a tenant key)")


BEARER = (
    "The operator's `API_TOKEN`: every tenant's jobs and every route; jobs it creates belong to the "
    "`default` tenant unless the body names another. Or a tenant's key (`kt_...`, printed once by "
    "`klingctl tenants create NAME`, stored as its SHA-256): that tenant's jobs only (another "
    "tenant's job is 404, as if it did not exist), 403 on /v1/accounts and /v1/dashboard. A "
    "revoked or rotated-away key is 401 at once."
)


def _schemas() -> dict[str, Schema]:
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
        "properties": {"error": {"type": "string"}, "fields": {"type": "array", "items": ref("FieldError")}},
    }
    job_list = {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {
            "jobs": {"type": "array", "items": ref("Job")},
            "next_cursor": nullable({"type": "string", "description": "Pass as `cursor` for the next page"}),
        },
    }
    return {
        "FieldError": field_error,
        "Error": error,
        **request_schemas(),
        **job_schemas(),
        "JobList": job_list,
        **openapi_operator.schemas(),
        **openapi_control.schemas(),
    }


def _job_id_param() -> Schema:
    return {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _paths() -> dict[str, Any]:
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
                "requestBody": {"required": True, "content": {JSON: {"schema": ref("JobRequest")}}},
                "responses": {
                    "202": _json(ref("Job"), "Job created and queued", location),
                    "200": _json(ref("Job"), "The job created earlier with this Idempotency-Key", location),
                    "400": _error("Malformed JSON, a body that is not an object, or a bad Idempotency-Key"),
                    "401": UNAUTHORIZED,
                    "413": _error("Body too large"),
                    "415": _error("Content-Type is not application/json"),
                    "422": _error(
                        "Invalid fields; `fields` names each one with its rule (`tenant`: unknown, or "
                        "not the key's own; `max_slots`: more slots than the tenant may hold)"
                    ),
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
                    {
                        "name": "tenant",
                        "in": "query",
                        "description": "Only this tenant's jobs (a tenant key sees only its own anyway)",
                        "schema": {"type": "string"},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(ref("JobList"), "A page of jobs"),
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
                    "200": _json(ref("Job"), "The job"),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                    "503": DB_DOWN,
                },
            }
        },
        **openapi_control.paths(secured, location),
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
        **openapi_operator.paths(secured),
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
                "Runs Kling AI jobs of every task kind (images and videos) and archives every output to S3. "
                "Every /v1 route needs `Authorization: Bearer <API_TOKEN>` or a tenant's key "
                "(see the `bearer` security scheme)."
            ),
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": BEARER}},
        },
    }


@bp.get("/openapi.json")
def serve() -> ViewResult:
    return openapi_document(), 200


__all__ = ["bp", "openapi_document"]
