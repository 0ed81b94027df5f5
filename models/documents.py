"""The job document: the JSON a job is shown as, in the API, the dashboard and downstream events.

One place for its fields and their one timestamp format (`iso_utc`: ISO 8601 in UTC with its
offset, `2026-12-06T05:17:27.123456+00:00`). `webhook.openapi` builds the `Job` schema's field list
from the tuples below, and tests check that the documents have exactly those keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Select,
    bindparam,
    select,
)
from sqlalchemy.orm import Session, defer

from kling.failures import FailureReason, failure_reason
from models.delivery import shown_error
from models.document_rows import child_queries, unfolded
from models.events import DEFAULT_EVENTS, EVENTS
from models.rules import PROVIDER_FAILED
from models.shown_params import public_params, stored_params
from models.tables import Image, Job

JOB_FIELDS = (
    "id",
    "status",
    "kind",
    "provider",
    "account",
    "provider_task_id",
    "external_task_id",
    "params",
    "error",
    "failure_reason",
    "webhook_url",
    "metadata",
    "created_at",
    "updated_at",
    "transitions",
    "images",
    "outputs",
    "notifications",
    "units",
    "waiting_for",
    "cancel_requested_at",
    "deadline_at",
    "retry_of",
    "webhook_events",
    "priority",
    "tenant",
)
TRANSITION_FIELDS = ("from", "to", "source", "at")
IMAGE_FIELDS = (
    "index",
    "status",
    "source_url",
    "s3_bucket",
    "s3_key",
    "sha256",
    "bytes",
    "content_type",
    "archived_at",
)
# Every output of the job, images and videos alike (`images` above shows the image rows only).
OUTPUT_FIELDS = (
    "type",
    "index",
    "status",
    "source_url",
    "s3_bucket",
    "s3_key",
    "sha256",
    "bytes",
    "content_type",
    "duration",
    "archived_at",
)
NOTIFICATION_FIELDS = (
    "event",
    "attempts",
    "last_status",
    "last_error",
    "created_at",
    "delivered_at",
    "next_attempt_at",
)
# A downstream event's `data`: the job without its request, webhook URL and history, and its
# images by their permanent S3 location only (the provider's URLs expire).
EVENT_JOB_FIELDS = (
    "id",
    "status",
    "kind",
    "tenant",
    "provider",
    "provider_task_id",
    "external_task_id",
    "error",
    "failure_reason",
    "metadata",
    "created_at",
    "updated_at",
    "images",
    "outputs",
)
EVENT_IMAGE_FIELDS = (
    "index",
    "status",
    "s3_bucket",
    "s3_key",
    "s3_uri",
    "sha256",
    "bytes",
    "content_type",
    "archived_at",
)


def iso_utc(value: datetime | None) -> str | None:
    """The documents' one timestamp format: ISO 8601 in UTC with its offset."""
    if value is None:
        return None
    # Stored timestamps already come back in UTC (`UTCDateTime`): convert only the others.
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat()


def _error(code: str | None, message: str | None) -> dict[str, Any] | None:
    return {"code": code, "message": message} if code else None


def shown_failure_reason(code: str | None, message: str | None) -> FailureReason | None:
    """Why the provider failed the task (`kling.failures`), read from its kept `task_status_msg`;
    None unless the provider reported the failure (our own failures carry their own codes)."""
    return failure_reason(message) if code == PROVIDER_FAILED else None


def _output(row: Any) -> dict[str, Any]:
    return {
        "type": row.type,
        "index": row.index,
        "status": row.status,
        "source_url": row.source_url,
        "s3_bucket": row.s3_bucket,
        "s3_key": row.s3_key,
        "sha256": row.sha256,
        "bytes": row.bytes,
        "content_type": row.content_type,
        "duration": row.duration,
        "archived_at": iso_utc(row.archived_at),
    }


# --- the API's and the dashboard's documents, read with Core ------------------------------------
# Built from plain rows (Core), not ORM objects: a page of 50 jobs is ~400 rows, and the identity
# map and attribute instrumentation cost several times the queries themselves.
def job_select() -> Select[Any]:
    """The job columns a document needs; add WHERE / ORDER BY / LIMIT and pass to `job_documents`."""
    return select(
        Job.id,
        Job.status,
        Job.kind,
        Job.provider,
        Job.account,
        Job.units,
        Job.provider_task_id,
        stored_params().label("params"),
        Job.error_code,
        Job.error_message,
        Job.webhook_url,
        Job.meta.label("meta"),  # the column is named `metadata`
        Job.created_at,
        Job.updated_at,
        Job.cancel_requested_at,
        Job.deadline_at,
        Job.retry_of,
        Job.webhook_events,
        Job.priority,
        Job.tenant,
    )


def job_documents(
    session: Session,
    stmt: Select[Any],
    params: Mapping[str, Any] | None = None,
    *,
    waiting: Callable[[str, str], Any] | None = None,
) -> list[dict[str, Any]]:
    """The job documents for the rows of `stmt` (from `job_select`), in order. `waiting(provider,
    kind)` says why a queued job of that provider and kind waits (`waiting_for`); it is called for
    queued jobs only."""
    # On the session's connection: Core rows, without the ORM's result machinery.
    conn = session.connection()
    postgresql = conn.dialect.name == "postgresql"
    queries = child_queries(postgresql)
    if postgresql:  # each job's transitions and outputs in its own row: one round trip, not three
        stmt = _with_children(stmt)
    jobs = conn.execute(stmt, params).all()
    if not jobs:
        return []
    ids = [row.id for row in jobs]
    transitions: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in ids}
    images: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in ids}
    outputs: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in ids}
    notes: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in ids}
    transition_rows: Sequence[Any]
    output_rows: Sequence[Any]
    if postgresql:
        transition_rows, output_rows = unfolded(jobs)
    else:
        transition_rows = conn.execute(queries.transitions, {"ids": ids}).all()
        output_rows = conn.execute(queries.images, {"ids": ids}).all()
    for t in transition_rows:
        transitions[t.job_id].append(
            {"from": t.from_status, "to": t.to_status, "source": t.source, "at": iso_utc(t.at)}
        )
    for i in output_rows:
        output = _output(i)
        outputs[i.job_id].append(output)
        if i.type == "image":
            # `images[]` as before outputs existed: the image rows, without the output-only keys.
            images[i.job_id].append({k: v for k, v in output.items() if k in IMAGE_FIELDS})
    # Only a job with a webhook_url gets notification rows: most pages need no third query.
    with_webhooks = [job.id for job in jobs if job.webhook_url]
    if with_webhooks:
        for n in conn.execute(queries.notifications, {"ids": with_webhooks}).all():
            notes[n.job_id].append(
                {
                    "event": n.event,
                    "attempts": n.attempts,
                    "last_status": n.last_status,
                    "last_error": shown_error(n.last_error),
                    "created_at": iso_utc(n.created_at),
                    "delivered_at": iso_utc(n.delivered_at),
                    "next_attempt_at": iso_utc(n.next_attempt_at),
                }
            )
    return [
        {
            "id": job.id,
            "status": job.status,
            "kind": job.kind,
            "provider": job.provider,
            "account": job.account,
            "provider_task_id": job.provider_task_id,
            "external_task_id": job.id,
            "params": public_params(job.params),
            "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
            "failure_reason": shown_failure_reason(job.error_code, job.error_message),
            "webhook_url": job.webhook_url,
            "metadata": job.meta,
            "created_at": iso_utc(job.created_at),
            "updated_at": iso_utc(job.updated_at),
            "transitions": transitions[job.id],
            "images": images[job.id],
            "outputs": outputs[job.id],
            "notifications": notes[job.id],
            "units": job.units,
            "waiting_for": (
                waiting(job.provider, job.kind) if waiting is not None and job.status == "queued" else None
            ),
            "cancel_requested_at": iso_utc(job.cancel_requested_at),
            "deadline_at": iso_utc(job.deadline_at),
            "retry_of": job.retry_of,
            "webhook_events": (job.webhook_events or DEFAULT_ORDER) if job.webhook_url else None,
            "priority": job.priority,
            "tenant": job.tenant,
        }
        for job in jobs
    ]


def _with_children(stmt: Select[Any]) -> Select[Any]:
    """`stmt` with its jobs' transitions and outputs (PostgreSQL). One job's statements are built
    once: a new statement object costs SQLAlchemy a re-match of its result columns on every run.
    The subqueries correlate to `jobs`: `stmt` must select from that table (`job_select`)."""
    if (built := _ONE_JOB_WITH_CHILDREN.get(stmt)) is not None:
        return built
    queries = child_queries(True)
    return stmt.add_columns(queries.folded_transitions, queries.folded_outputs)


DEFAULT_ORDER = [e for e in EVENTS if e in DEFAULT_EVENTS]
_ONE_JOB = job_select().where(Job.id == bindparam("job_id"))
_TENANTS_JOB = _ONE_JOB.where(Job.tenant == bindparam("tenant"))
_ONE_JOB_WITH_CHILDREN: dict[Select[Any], Select[Any]] = {}
_ONE_JOB_WITH_CHILDREN.update((stmt, _with_children(stmt)) for stmt in (_ONE_JOB, _TENANTS_JOB))


def job_document(
    session: Session,
    job_id: str,
    *,
    waiting: Callable[[str, str], Any] | None = None,
    tenant: str | None = None,
) -> dict[str, Any] | None:
    """One job's document, or None when there is no such job (or, given `tenant`, when it is
    another tenant's)."""
    stmt, params = (
        (_ONE_JOB, {"job_id": job_id})
        if tenant is None
        else (_TENANTS_JOB, {"job_id": job_id, "tenant": tenant})
    )
    docs = job_documents(session, stmt, params, waiting=waiting)
    return docs[0] if docs else None


# --- downstream events, from the ORM job the worker holds ----------------------------------------
def event_job(session: Session, job_id: str) -> Job | None:
    """The job to build an event from, without `params` (an inline image can be 13 MB and the
    event never shows it): reading `params` on it raises rather than loading the column."""
    return session.get(Job, job_id, options=[defer(Job.params, raiseload=True)])


def _event_output(img: Image) -> dict[str, Any]:
    return {
        "type": img.type,
        "index": img.index,
        "status": img.status,
        "s3_bucket": img.s3_bucket,
        "s3_key": img.s3_key,
        "s3_uri": f"s3://{img.s3_bucket}/{img.s3_key}" if img.s3_key else None,
        "sha256": img.sha256,
        "bytes": img.bytes,
        "content_type": img.content_type,
        "duration": img.duration,
        "archived_at": iso_utc(img.archived_at),
    }


def event_job_document(job: Job) -> dict[str, Any]:
    """A downstream event's `data` (`EVENT_JOB_FIELDS`) for a loaded job and its outputs;
    `images` holds the image outputs only, as the API's document does."""
    outputs = [_event_output(img) for img in job.images]
    return {
        "id": job.id,
        "status": job.status,
        "kind": job.kind,
        "tenant": job.tenant,
        "provider": job.provider,
        "provider_task_id": job.provider_task_id,
        "external_task_id": job.id,
        "error": _error(job.error_code, job.error_message),
        "failure_reason": shown_failure_reason(job.error_code, job.error_message),
        "metadata": job.meta,
        "created_at": iso_utc(job.created_at),
        "updated_at": iso_utc(job.updated_at),
        "images": [
            {k: v for k, v in output.items() if k in EVENT_IMAGE_FIELDS}
            for output in outputs
            if output["type"] == "image"
        ],
        "outputs": outputs,
    }


__all__ = [
    "EVENT_IMAGE_FIELDS",
    "EVENT_JOB_FIELDS",
    "IMAGE_FIELDS",
    "JOB_FIELDS",
    "NOTIFICATION_FIELDS",
    "OUTPUT_FIELDS",
    "TRANSITION_FIELDS",
    "event_job",
    "event_job_document",
    "iso_utc",
    "job_document",
    "job_documents",
    "job_select",
    "public_params",
    "shown_failure_reason",
    "stored_params",
]
