"""Claims: which run owns a job's current step, so only one talks to the provider or S3 at a time."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import session_scope
from models.enums import JobStatus
from models.tables import Job
from worker.outcome import Outcome, Step
from worker.services import Services


def take_claim(s: Session, job_id: str, status: JobStatus, token: str | None, hold: float) -> str | None:
    """Take the job's current step for this run for `hold` seconds, or None if a live run owns it.

    Redelivered messages, re-dispatches by the reconciler and the pump all end here: only one run
    at a time talks to the provider or S3 for a job. A retry presents the claim it was given. A run
    that dies leaves its claim to expire (`STUCK_SUBMIT_SECONDS` / `STUCK_ARCHIVE_SECONDS`, longer
    than the slowest provider or S3 call), then the reconciler dispatches the step again.
    """
    new_token = token or str(uuid.uuid4())
    now = utcnow()
    free = or_(Job.claimed_until.is_(None), Job.claimed_until < now)
    if token is not None:
        free = or_(free, Job.claim_token == token)
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == status, free)
        .values(claim_token=new_token, claimed_until=now + timedelta(seconds=hold))
        .execution_options(synchronize_session=False)
    )
    return new_token if result.rowcount == 1 else None  # type: ignore[attr-defined]


def keep_claim(svc: Services, job_id: str, token: str, retry_in: float, hold: float) -> Outcome:
    """Hold the claim through the retry's countdown, so nothing else starts the step meanwhile."""
    until = utcnow() + timedelta(seconds=retry_in + hold)
    with session_scope(svc.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id, Job.claim_token == token).values(claimed_until=until))
    return Outcome(Step.RETRY, retry_in=retry_in, claim=token)


def unclaimed(now: datetime) -> ColumnElement[bool]:
    return or_(Job.claimed_until.is_(None), Job.claimed_until < now)
