"""The job document's schemas in the OpenAPI document (`Job` and its parts), checked against the
field tuples of `models.documents` so the document and its schema cannot drift apart."""

from __future__ import annotations

from kling.failures import FAILURE_REASONS
from kling.kinds import KIND_NAMES
from models.delivery import VOCABULARY
from models.documents import IMAGE_FIELDS, JOB_FIELDS, NOTIFICATION_FIELDS, OUTPUT_FIELDS, TRANSITION_FIELDS
from models.enums import ImageStatus, JobStatus, TransitionSource
from webhook.job_fields import PROVIDERS
from webhook.openapi_control import job_properties
from webhook.openapi_parts import NULLABLE_TIME, TIME, Schema, document, nullable, ref


def job_schemas() -> dict[str, Schema]:
    """`Transition`, `Image`, `Output`, `Notification` and `Job`."""
    transition = document(
        TRANSITION_FIELDS,
        {
            "from": nullable({"type": "string", "enum": [s.value for s in JobStatus]}),
            "to": {"type": "string", "enum": [s.value for s in JobStatus]},
            "source": {"type": "string", "enum": [s.value for s in TransitionSource]},
            "at": TIME,
        },
    )
    # One schema per stored column: an image row and an output row show the same ones.
    stored: dict[str, Schema] = {
        "type": {"type": "string", "enum": ["image", "video"]},
        "index": {"type": "integer", "minimum": 0},
        "status": {"type": "string", "enum": [s.value for s in ImageStatus]},
        "source_url": {"type": "string"},
        "s3_bucket": nullable({"type": "string"}),
        "s3_key": nullable({"type": "string"}),
        "sha256": nullable({"type": "string"}),
        "bytes": nullable({"type": "integer"}),
        "content_type": nullable({"type": "string"}),
        "duration": nullable({"type": "number", "description": "Seconds (videos only)"}),
        "archived_at": NULLABLE_TIME,
    }
    image = document(IMAGE_FIELDS, {name: stored[name] for name in IMAGE_FIELDS})
    output = document(OUTPUT_FIELDS, {name: stored[name] for name in OUTPUT_FIELDS})
    notification = document(
        NOTIFICATION_FIELDS,
        {
            "event": {"type": "string"},
            "attempts": {"type": "integer"},
            "last_status": nullable({"type": "integer"}),
            "last_error": nullable(
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
    job = document(
        JOB_FIELDS,
        {
            "id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": [s.value for s in JobStatus]},
            "kind": {"type": "string", "enum": list(KIND_NAMES), "description": "The task kind"},
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "account": nullable(
                {"type": "string", "description": "The provider account the job was created on"}
            ),
            "provider_task_id": nullable({"type": "string"}),
            "external_task_id": {"type": "string"},
            "params": {
                "type": "object",
                "additionalProperties": True,
                "description": "The request's provider fields; an inline base64 `image` is shown as a marker",
            },
            "error": nullable(
                {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": nullable({"type": "string"})},
                }
            ),
            "failure_reason": nullable(
                {
                    "type": "string",
                    "enum": [*FAILURE_REASONS, None],  # 3.0.3: a nullable enum lists null
                    "description": "Why the provider failed the task, read from its message (kept in "
                    "`error.message`); null unless the provider reported the failure",
                }
            ),
            "webhook_url": nullable({"type": "string"}),
            "metadata": nullable({"type": "object", "additionalProperties": True}),
            "created_at": TIME,
            "updated_at": TIME,
            "transitions": {"type": "array", "items": ref("Transition")},
            "images": {
                "type": "array",
                "items": ref("Image"),
                "description": "The image outputs (none for a video kind)",
            },
            "outputs": {
                "type": "array",
                "items": ref("Output"),
                "description": "Every output, images and videos",
            },
            "notifications": {"type": "array", "items": ref("Notification")},
            "units": nullable({"type": "number", "description": "Units the task deducted from the pack"}),
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
                                "additionalProperties": nullable({"type": "string"}),
                            },
                        },
                    },
                ],
            },
            **job_properties(),
        },
    )
    return {
        "Transition": transition,
        "Image": image,
        "Output": output,
        "Notification": notification,
        "Job": job,
    }


__all__ = ["job_schemas"]
