"""Writing to the transactional outbox (the worker's relay publishes rows to Celery after commit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import Connection, Table, insert
from sqlalchemy.orm import Session

from models.tables import Outbox

# Task names the relay maps to Celery tasks.
SUBMIT_JOB = "submit_job"  # a new job's first try; with a backlog it only joins the wait queue
DISPATCH_JOB = "dispatch_job"  # the same task for a job slots were just found for (the pump)
ARCHIVE_JOB = "archive_job"
RELEASE_SLOTS = "release_slots"
NOTIFY = "notify"
# An unsigned callback reported a final state: look the task up at the provider and apply that.
CONFIRM_JOB = "confirm_job"
# An account paused or resumed: a signed event to ALERT_WEBHOOK_URL (published directly, no row).
ALERT = "alert"


class QueuedTask(Protocol):
    """An outbox row as the publisher needs it: an `Outbox` object or an `OutboxEntry`."""

    @property
    def id(self) -> int: ...

    @property
    def task(self) -> str: ...

    @property
    def args(self) -> list[Any]: ...


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    task: str
    args: list[Any]


_OUTBOX = cast(Table, Outbox.__table__)
_INSERT = insert(_OUTBOX).returning(_OUTBOX.c.id, sort_by_parameter_order=True)


# `Session.info` key of the outbox rows written in the session's transaction: the after-commit
# hook (`worker.outbox.publish_after_commit`) publishes exactly these once it commits.
PENDING_ROWS = "kling.outbox_pending"


def enqueue_rows(db: Session | Connection, rows: Sequence[tuple[str, list[Any]]]) -> list[OutboxEntry]:
    """Write outbox rows, (task, args) each, in one statement in the caller's transaction; they are
    published only if it commits. Returns them; in a Session they are also kept for its
    after-commit hook."""
    if not rows:
        return []
    conn = db.connection() if isinstance(db, Session) else db
    ids = conn.execute(_INSERT, [{"task": task, "args": args} for task, args in rows]).scalars().all()
    entries = [OutboxEntry(id, task, args) for id, (task, args) in zip(ids, rows, strict=True)]
    if isinstance(db, Session):
        db.info.setdefault(PENDING_ROWS, []).extend(entries)
    return entries


def take_pending(session: Session) -> list[OutboxEntry]:
    """The rows written in the session's last transaction (the after-commit hook's input)."""
    rows: list[OutboxEntry] = session.info.pop(PENDING_ROWS, [])
    return rows
