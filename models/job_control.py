"""Job control: cancel, deadlines and retries (docs/api.md, "Job control").

Kling has no cancel: a job can be stopped only before its create may have gone out. `decide_cancel`
and `unsubmitted_end` decide with no I/O; `cancel_job`, `expire_overdue` and `retry_job` execute
in the caller's transaction (the caller commits; the session's after-commit hook publishes).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import literal_column, select
from sqlalchemy.orm import Session

from kling.errors import FieldError
from models.enums import JobStatus
from models.statemachine import Created, JobNotFound, create_job, transition
from models.tables import Job

# A job may wait in the queue at most this long (`deadline_seconds`).
MAX_DEADLINE_SECONDS = 30 * 86400
# A retry makes a new job of one that ended without results.
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED})


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # never created at the provider, and now never will be
    REQUESTED = "cancel_requested"  # a create may have gone out: it runs, and is archived if it ends well
    FINAL = "final"  # already ended otherwise: nothing to cancel


END_REASONS = {JobStatus.CANCELLED: "cancelled by the caller", JobStatus.EXPIRED: "deadline passed"}


class NotRetryable(ValueError):
    """Only a job that ended without results can be retried."""


def decide_cancel(status: JobStatus, *, create_attempts: int, claimed: bool) -> CancelOutcome:
    """A queued job no run owns and no create was counted for is surely not at the provider."""
    if status is JobStatus.CANCELLED:
        return CancelOutcome.CANCELLED
    if status.is_terminal:
        return CancelOutcome.FINAL
    if status is JobStatus.QUEUED and create_attempts == 0 and not claimed:
        return CancelOutcome.CANCELLED
    return CancelOutcome.REQUESTED


def unsubmitted_end(
    cancel_requested_at: datetime | None, deadline_at: datetime | None, now: datetime
) -> JobStatus | None:
    """What a queued job with surely no provider task becomes instead of being created, if anything."""
    if cancel_requested_at is not None:
        return JobStatus.CANCELLED
    if deadline_at is not None and deadline_at <= now:
        return JobStatus.EXPIRED
    return None


def deadline_from(value: Any, now: datetime) -> tuple[datetime | None, list[FieldError]]:
    """`deadline_seconds` of a create: seconds from now a still-queued job may wait (null: forever)."""
    if value is None:
        return None, []
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DEADLINE_SECONDS:
        rule = f"must be an integer from 1 to {MAX_DEADLINE_SECONDS} (30 days)"
        return None, [FieldError("deadline_seconds", "range", rule)]
    return now + timedelta(seconds=value), []


def cancel_job(session: Session, job_id: str, now: datetime) -> tuple[CancelOutcome, Job]:
    """Cancel the job, or record that its cancel was asked for. Raises `JobNotFound`."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise JobNotFound(job_id)
    claimed = job.claim_token is not None
    outcome = decide_cancel(job.job_status, create_attempts=job.create_attempts, claimed=claimed)
    if outcome is CancelOutcome.CANCELLED and job.status != JobStatus.CANCELLED:
        reason = {"reason": "cancelled by the caller"}
        transition(session, job, JobStatus.CANCELLED, source="api", detail=reason)
    elif outcome is CancelOutcome.REQUESTED and job.cancel_requested_at is None:
        job.cancel_requested_at = now
    session.flush()
    session.refresh(job)
    return outcome, job


def expire_overdue(session: Session, now: datetime, *, limit: int = 500) -> list[str]:
    """Queued jobs that were never sent (no create counted, no run owning them) end: `expired`
    past their deadline, `cancelled` when a cancel was asked while a run held them. Those with a
    create that may exist are settled by submit's lookup. The status is a literal, as in the
    pump's query: a bound parameter would keep a generic plan off the partial index."""
    never_sent = (
        Job.status == literal_column("'queued'"),
        Job.create_attempts == 0,
        Job.claim_token.is_(None),
    )
    overdue = select(Job.id).where(*never_sent, Job.deadline_at.is_not(None), Job.deadline_at <= now)
    asked = select(Job.id).where(*never_sent, Job.cancel_requested_at.is_not(None))
    ended: list[str] = []
    for query, order in ((overdue, Job.deadline_at), (asked, Job.cancel_requested_at)):
        ids = session.scalars(query.order_by(order).limit(limit).with_for_update(skip_locked=True)).all()
        for job_id in ids:
            job = session.get(Job, job_id)
            assert job is not None
            ending = unsubmitted_end(job.cancel_requested_at, job.deadline_at, now)
            if ending is not None and job_id not in ended:
                transition(session, job, ending, source="worker", detail={"reason": END_REASONS[ending]})
                ended.append(job_id)
    return ended


def retry_job(session: Session, job_id: str, *, idempotency_key: str | None = None) -> Created:
    """A new job with the same request, linked to the one it retries. Raises `JobNotFound` or
    `NotRetryable`."""
    old = session.get(Job, job_id)
    if old is None:
        raise JobNotFound(job_id)
    if old.job_status not in RETRYABLE:
        raise NotRetryable(f"a {old.status} job cannot be retried; only {', '.join(sorted(RETRYABLE))} ones")
    return create_job(
        session,
        old.params,
        provider=old.provider,
        webhook_url=old.webhook_url,
        metadata=old.meta,
        idempotency_key=idempotency_key,
        kind=old.kind,
        retry_of=old.id,
        webhook_events=old.webhook_events,
        priority=old.priority,
        tenant=old.tenant,
    )
