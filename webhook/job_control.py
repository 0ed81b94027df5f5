"""Job control over HTTP (API token): `POST /v1/jobs/{id}/cancel` and `/retry`. The decisions
are `models.job_control`'s (`deadline_seconds` of a create too)."""

from __future__ import annotations

import logging

from flask import Flask

from kling.errors import FieldError
from models.base import utcnow
from models.db import session_scope
from models.job_control import CancelOutcome, NotRetryable, cancel_job, retry_job
from models.logging import log_context
from models.statemachine import JobNotFound
from webhook.api import (
    ApiError,
    api_blueprint,
    idempotency_key,
    known_job_id,
    one_document,
)
from webhook.auth import is_visible
from webhook.db import autocommit_sessions, sessions
from webhook.views import ViewResult

log = logging.getLogger(__name__)
bp = api_blueprint("job_control", __name__)

CANCEL_MESSAGES = {
    CancelOutcome.CANCELLED: "cancelled: never sent to the provider, nothing billed",
    CancelOutcome.REQUESTED: (
        "cancel requested: the task may already be at the provider, which cannot cancel it; "
        "it was paid for, so it runs on and its outputs are still archived"
    ),
}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel(job_id: str) -> ViewResult:
    job_id = known_job_id(job_id)
    with session_scope(sessions()) as session:
        try:
            if not is_visible(session, job_id):
                raise JobNotFound(job_id)
            outcome, job = cancel_job(session, job_id, utcnow())
        except JobNotFound:
            raise ApiError(404, "unknown job") from None
        status = job.status
    if outcome is CancelOutcome.FINAL:
        raise ApiError(409, f"the job already ended ({status}): nothing to cancel")
    if outcome is CancelOutcome.CANCELLED:
        _leave_wait_queues(job_id)
    with log_context(job_id=job_id):
        log.info("job %s", outcome.value)
    with autocommit_sessions() as read, read() as session:
        doc = one_document(session, job_id)
    return {"outcome": outcome.value, "message": CANCEL_MESSAGES[outcome], "job": doc}, 200


def _leave_wait_queues(job_id: str) -> None:
    """A cancelled job that waited for slots leaves the limiters' wait queues now (else a starving
    waiter reserves slots until its entry lapses). Best effort: the entry lapses by itself."""
    from webhook.accounts import services  # here: that module builds the worker's view lazily

    try:
        services().release(job_id)
    except Exception as exc:  # noqa: BLE001  (the cancel is committed; this only frees sooner)
        log.warning("cancel: wait queues not updated: %s", type(exc).__name__)


@bp.post("/v1/jobs/<job_id>/retry")
def retry(job_id: str) -> ViewResult:
    job_id = known_job_id(job_id)
    key = idempotency_key()
    with session_scope(sessions()) as session:
        try:
            if not is_visible(session, job_id):
                raise JobNotFound(job_id)
            result = retry_job(session, job_id, idempotency_key=key)
        except JobNotFound:
            raise ApiError(404, "unknown job") from None
        except NotRetryable as exc:
            raise ApiError(409, str(exc)) from None
        new_id, created = result.job.id, result.created
        if not created and result.job.retry_of != job_id:
            raise ApiError(
                422,
                "Idempotency-Key reused with a different request",
                [FieldError("Idempotency-Key", "reused", "was first used for another job; use a new key")],
            )
    with log_context(job_id=new_id):
        log.info("job created: retry of %s", job_id)
    with autocommit_sessions() as read, read() as session:
        doc = one_document(session, new_id)
    return doc, 202 if created else 200, {"Location": f"/v1/jobs/{new_id}"}
