"""The OpenAPI parts of job control and event subscriptions (webhook/job_control.py,
webhook/deliveries.py): request and job fields, schemas and paths, merged by webhook/openapi.py."""

from __future__ import annotations

from typing import Any

from models.events import EVENTS
from models.job_control import MAX_DEADLINE_SECONDS
from models.priorities import PRIORITIES
from webhook.openapi_parts import NULLABLE_TIME, Schema, nullable, ref

EVENT = {"type": "string", "enum": list(EVENTS)}


def request_properties() -> dict[str, Schema]:
    return {
        "deadline_seconds": nullable(
            {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_DEADLINE_SECONDS,
                "description": "Still queued this many seconds after creation: `expired`, never submitted",
            }
        ),
        "priority": nullable(
            {
                "type": "string",
                "enum": list(PRIORITIES),
                "description": "When slots are scarce higher ones go first; none starves (default normal)",
            }
        ),
        "tenant": nullable(
            {
                "type": "string",
                "description": "Whose job it is: a tenant key may name only its own tenant (its "
                "default); the operator any existing one (default `default`). Else 422",
            }
        ),
        "webhook_events": nullable(
            {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": EVENT,
                "description": "Events the webhook_url hears (needs webhook_url); default how the job ended",
            }
        ),
    }


def job_properties() -> dict[str, Schema]:
    return {
        "cancel_requested_at": NULLABLE_TIME,
        "deadline_at": NULLABLE_TIME,
        "retry_of": nullable({"type": "string", "description": "The job this one retries"}),
        "webhook_events": nullable({"type": "array", "items": EVENT}),
        "priority": {"type": "string", "enum": list(PRIORITIES)},
        "tenant": {"type": "string", "description": "The tenant the job belongs to"},
    }


def schemas() -> dict[str, Schema]:
    attempt = {
        "type": "object",
        "required": ["attempt", "at", "status", "error", "latency_ms"],
        "properties": {
            "attempt": {"type": "integer"},
            "at": {"type": "string", "format": "date-time"},
            "status": nullable({"type": "integer", "description": "The receiver's HTTP status"}),
            "error": nullable({"type": "string"}),
            "latency_ms": nullable({"type": "number"}),
        },
    }
    delivery = {
        "type": "object",
        "required": ["event", "state", "attempts", "last_status", "last_error", "delivered_at"],
        "properties": {
            "event": EVENT,
            "state": {"type": "string", "enum": ["delivered", "pending", "failed", "disabled"]},
            "attempts": {"type": "integer"},
            "last_status": nullable({"type": "integer"}),
            "last_error": nullable({"type": "string"}),
            "delivered_at": NULLABLE_TIME,
            "next_attempt_at": NULLABLE_TIME,
            "attempt_log": {"type": "array", "items": ref("DeliveryAttempt")},
        },
    }
    deliveries = {
        "type": "object",
        "required": ["endpoint", "deliveries"],
        "properties": {
            "endpoint": nullable(
                {
                    "type": "object",
                    "properties": {
                        "host": nullable({"type": "string"}),
                        "failing_since": NULLABLE_TIME,
                        "disabled_at": NULLABLE_TIME,
                    },
                }
            ),
            "deliveries": {"type": "array", "items": ref("Delivery")},
        },
    }
    cancel = {
        "type": "object",
        "required": ["outcome", "message", "job"],
        "properties": {
            "outcome": {"type": "string", "enum": ["cancelled", "cancel_requested"]},
            "message": {"type": "string"},
            "job": ref("Job"),
        },
    }
    return {
        "DeliveryAttempt": attempt,
        "Delivery": delivery,
        "Deliveries": deliveries,
        "CancelAnswer": cancel,
    }


def paths(secured: list[dict[str, list[str]]], location: dict[str, Any]) -> dict[str, Any]:
    # Here: webhook.openapi merges these parts and builds on what this module makes.
    from webhook.openapi import DB_DOWN, NOT_FOUND, UNAUTHORIZED, _error, _job_id_param, _json

    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }
    event = {"name": "event", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/v1/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a job (or, once a create may have gone out, ask for it)",
                "operationId": "cancelJob",
                "security": secured,
                "parameters": [_job_id_param()],
                "responses": {
                    "200": _json(ref("CancelAnswer"), "Cancelled, or cancel requested"),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                    "409": _error("The job already ended"),
                    "503": DB_DOWN,
                },
            }
        },
        "/v1/jobs/{job_id}/retry": {
            "post": {
                "summary": "A new job with the request of a failed, expired or cancelled one",
                "operationId": "retryJob",
                "security": secured,
                "parameters": [_job_id_param(), idempotency],
                "responses": {
                    "202": _json(ref("Job"), "The new job, queued", location),
                    "200": _json(ref("Job"), "The retry made earlier with this Idempotency-Key", location),
                    "400": _error("A bad Idempotency-Key"),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                    "409": _error("The job cannot be retried in its status"),
                    "422": _error("The Idempotency-Key belongs to another job"),
                    "503": DB_DOWN,
                },
            }
        },
        "/v1/jobs/{job_id}/deliveries": {
            "get": {
                "summary": "The job's downstream deliveries, each with every attempt",
                "operationId": "listDeliveries",
                "security": secured,
                "parameters": [_job_id_param()],
                "responses": {
                    "200": _json(ref("Deliveries"), "The deliveries and the endpoint's health"),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                    "503": DB_DOWN,
                },
            }
        },
        "/v1/jobs/{job_id}/deliveries/{event}/replay": {
            "post": {
                "summary": "Send an event again on a fresh schedule (enables a disabled endpoint)",
                "operationId": "replayDelivery",
                "security": secured,
                "parameters": [_job_id_param(), event],
                "responses": {
                    "202": _json(ref("Delivery"), "Queued"),
                    "401": UNAUTHORIZED,
                    "404": _error("Unknown job or event"),
                    "409": _error("No webhook_url, or the job has not reached that event"),
                    "503": DB_DOWN,
                },
            }
        },
    }
