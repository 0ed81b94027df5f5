"""Writing to the transactional outbox (the worker's relay publishes rows to Celery after commit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from models.tables import Outbox

# Task names the relay maps to Celery tasks.
SUBMIT_JOB = "submit_job"
ARCHIVE_JOB = "archive_job"
RELEASE_SLOTS = "release_slots"
NOTIFY = "notify"


def enqueue(session: Session, task: str, *args: Any, available_at: datetime | None = None) -> Outbox:
    """Add an outbox row in the caller's transaction; it is published only if that commits."""
    row = Outbox(task=task, args=list(args))
    if available_at is not None:
        row.available_at = available_at
    session.add(row)
    return row
