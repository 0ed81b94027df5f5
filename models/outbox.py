"""Writing to the transactional outbox (the worker's relay publishes rows to Celery after commit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Connection, Table, insert
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


# `Session.info` key set when outbox rows were written with Core statements in that session (no
# ORM object to see in a flush): a worker relays after its run only when rows were written.
CORE_ROWS_WRITTEN = "kling.outbox_rows_written"


def enqueue_rows(conn: Connection, rows: Sequence[tuple[str, list[Any]]]) -> list[OutboxEntry]:
    """`enqueue` on a Core connection, for many rows in one statement: (task, args) -> their rows."""
    if not rows:
        return []
    ids = conn.execute(_INSERT, [{"task": task, "args": args} for task, args in rows]).scalars().all()
    return [OutboxEntry(id, task, args) for id, (task, args) in zip(ids, rows, strict=True)]
