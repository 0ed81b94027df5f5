"""The OpenAPI parts of the operator's routes (webhook/accounts.py, webhook/dashboard.py): the
`Account` and `Dashboard` schemas and their paths, merged by webhook/openapi.py. A tenant key is
answered 403 on them (webhook/auth.py `forbidden_to_tenants`)."""

from __future__ import annotations

from typing import Any

from kling.kinds import KIND_NAMES
from models.enums import JobStatus
from models.tenants import NAME_PATTERN
from webhook.job_fields import PROVIDERS
from webhook.openapi_parts import NULLABLE_TIME, Schema, nullable, ref
from worker.account_views import ACCOUNT_FIELDS, STATES


def schemas() -> dict[str, Schema]:
    account = {
        "type": "object",
        "required": [*ACCOUNT_FIELDS],
        "properties": {
            "name": {"type": "string"},
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "state": {"type": "string", "enum": list(STATES)},
            "reason": nullable({"type": "string", "description": '"paused: <code>" or "disabled"'}),
            "code": nullable({"type": "integer", "description": "The provider code that paused it"}),
            "message": nullable({"type": "string"}),
            "since": NULLABLE_TIME,
            "concurrency": {"type": "integer"},
            "slots_in_use": nullable({"type": "integer"}),
            "units_today": {"type": "number", "description": "Units deducted since 00:00 UTC"},
            "kinds": {
                "type": "array",
                "items": {"type": "string", "enum": list(KIND_NAMES)},
                "description": "Task kinds routed to this account",
            },
        },
    }
    account_list = {
        "type": "object",
        "required": ["accounts"],
        "properties": {"accounts": {"type": "array", "items": ref("Account")}},
    }
    dashboard = {
        "type": "object",
        "required": ["counts", "slots", "images_at_risk", "outbox_backlog", "jobs", "gallery"],
        "properties": {
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "slots": {
                "type": "object",
                "required": ["in_use", "limit"],
                "properties": {"in_use": nullable({"type": "integer"}), "limit": {"type": "integer"}},
            },
            "images_at_risk": nullable({"type": "integer"}),
            "accounts_not_active": {
                "type": "array",
                "nullable": True,
                "items": ref("Account"),
                "description": "Paused or disabled accounts (the banner); null when unknown",
            },
            "outbox_backlog": nullable({"type": "integer"}),
            "jobs": {"type": "array", "items": ref("Job")},
            "tenants": {"type": "array", "items": {"type": "string"}, "description": "Every tenant's name"},
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
                        "sha256": nullable({"type": "string"}),
                        "bytes": nullable({"type": "integer"}),
                    },
                },
            },
        },
    }
    return {"Account": account, "AccountList": account_list, "Dashboard": dashboard}


def paths(secured: list[dict[str, list[str]]]) -> dict[str, Any]:
    # Here: webhook.openapi merges these parts and builds on what this module makes.
    from webhook.openapi import DB_DOWN, UNAUTHORIZED, _error, _json

    forbidden = _error("A tenant key: this route is the operator's (API_TOKEN) only")
    return {
        "/v1/accounts": {
            "get": {
                "summary": "Every provider account: state, slots in use, units today (never credentials)",
                "operationId": "listAccounts",
                "security": secured,
                "responses": {
                    "200": _json(ref("AccountList"), "The accounts"),
                    "401": UNAUTHORIZED,
                    "403": forbidden,
                },
            }
        },
        "/v1/dashboard": {
            "get": {
                "summary": "Everything the dashboard shows, in one read",
                "operationId": "getDashboard",
                "security": secured,
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "description": "Only recent jobs with this status",
                        "schema": {"type": "string", "enum": [s.value for s in JobStatus]},
                    },
                    {
                        "name": "tenant",
                        "in": "query",
                        "required": False,
                        "description": "Only recent jobs of this tenant (with `status`: in that status)",
                        "schema": {"type": "string", "pattern": f"^{NAME_PATTERN.pattern}$"},
                    },
                ],
                "responses": {
                    "200": _json(ref("Dashboard"), "Counts, slots, recent jobs and archived images"),
                    "400": _error("An unknown status, or a tenant name of the wrong form"),
                    "401": UNAUTHORIZED,
                    "403": forbidden,
                    "503": DB_DOWN,
                },
            }
        },
    }
