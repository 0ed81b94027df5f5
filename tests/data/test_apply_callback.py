"""`apply_callback`: the callback view's path on PostgreSQL (read, decide, one guarded write)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, select, update
from sqlalchemy.orm import Session

from kling.types import TaskStatus
from models import (
    CallbackEvent,
    EventOutcome,
    Image,
    Job,
    JobBusy,
    JobNotFound,
    TaskMismatch,
    apply_callback,
    apply_provider_task,
)
from models.db import make_engine
from tests.data.helpers import outbox_tasks, transitions_of
from tests.data.test_statemachine import new_job, task_for


def event_row(key: str) -> CallbackEvent:
    return CallbackEvent(dedupe_key=key, headers={"webhook-id": key}, body="{}")


def test_outcomes_rows_and_dedupe_match_the_locking_path(db_session: Session) -> None:
    s = db_session
    job = new_job(s)
    conn = s.connection()

    def deliver(status: TaskStatus, key: str) -> Any:
        return apply_callback(conn, job.id, task_for(job, status), event=event_row(key))

    applied = deliver(TaskStatus.PROCESSING, "a")
    assert (applied.outcome, applied.from_status, applied.job_status) == ("applied", "queued", "processing")
    assert applied.outbox == ()
    assert deliver(TaskStatus.SUCCEEDED, "a").outcome == EventOutcome.DUPLICATE  # same key: nothing
    assert deliver(TaskStatus.PROCESSING, "b").outcome == EventOutcome.DUPLICATE
    assert deliver(TaskStatus.SUBMITTED, "c").outcome == EventOutcome.STALE
    done = deliver(TaskStatus.SUCCEEDED, "d")
    assert (done.outcome, done.job_status) == ("applied", "succeeded")
    # The outbox rows the statement wrote come back in id order, for the view to publish.
    assert [row.task for row in done.outbox] == ["archive_job", "release_slots"]
    assert [row.args for row in done.outbox] == [[job.id], [job.id]]
    assert done.outbox[0].id < done.outbox[1].id

    s.expire_all()
    stored = s.get(Job, job.id)
    assert stored is not None
    assert (stored.status, stored.provider_task_id) == ("succeeded", "task-1")
    assert stored.submitted_at is not None and stored.finished_at is None
    assert transitions_of(s, job.id) == [
        (None, "queued", "api"),
        ("queued", "processing", "callback"),
        ("processing", "succeeded", "callback"),
    ]
    images = s.scalars(select(Image).where(Image.job_id == job.id).order_by(Image.index)).all()
    assert [(i.index, i.source_url, i.status) for i in images] == [
        (0, "https://cdn.klingai.com/0.png", "pending"),
        (1, "https://cdn.klingai.com/1.png", "pending"),
    ]
    assert outbox_tasks(s, job.id) == ["submit_job", "archive_job", "release_slots"]
    rows = s.scalars(select(CallbackEvent).where(CallbackEvent.job_id == job.id).order_by(CallbackEvent.id))
    assert [(e.dedupe_key, e.outcome, e.task_status) for e in rows] == [
        ("a", "applied", "processing"),
        ("b", "duplicate", "processing"),
        ("c", "stale", "submitted"),
        ("d", "applied", "succeeded"),
    ]


def test_images_come_once_from_the_first_report_that_carries_them(db_session: Session) -> None:
    s = db_session
    job = new_job(s)
    conn = s.connection()
    bare = apply_callback(conn, job.id, task_for(job, TaskStatus.SUCCEEDED, images=0), event=event_row("a"))
    assert bare.outcome == EventOutcome.APPLIED
    later = apply_callback(conn, job.id, task_for(job, TaskStatus.SUCCEEDED, images=3), event=event_row("b"))
    again = apply_callback(conn, job.id, task_for(job, TaskStatus.SUCCEEDED, images=1), event=event_row("c"))
    assert (later.outcome, again.outcome) == (EventOutcome.DUPLICATE, EventOutcome.DUPLICATE)
    assert s.scalars(select(Image.index).where(Image.job_id == job.id).order_by(Image.index)).all() == [
        0,
        1,
        2,
    ]


def test_unknown_job_and_foreign_task_write_nothing(db_session: Session) -> None:
    s = db_session
    job = new_job(s)
    conn = s.connection()
    with pytest.raises(JobNotFound):
        apply_callback(conn, "no-such-job", task_for(job, TaskStatus.PROCESSING), event=event_row("a"))
    apply_callback(conn, job.id, task_for(job, TaskStatus.PROCESSING), event=event_row("b"))
    with pytest.raises(TaskMismatch):
        apply_callback(
            conn, job.id, task_for(job, TaskStatus.SUCCEEDED, task_id="task-2"), event=event_row("c")
        )
    keys = s.scalars(select(CallbackEvent.dedupe_key).where(CallbackEvent.job_id == job.id)).all()
    assert keys == ["b"]


@pytest.fixture
def committing(committed_pg_url: str) -> Iterator[Engine]:
    engine = make_engine(committed_pg_url)
    yield engine
    engine.dispose()


def _before_each_write(conn: Connection, change: Any) -> list[int]:
    """Run `change()` (on another connection) each time `conn` is about to send the guarded write,
    i.e. after the callback's read and before its write: the race the guard is for."""
    calls: list[int] = []

    @event.listens_for(conn, "before_cursor_execute")
    def interleave(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("WITH j AS"):
            calls.append(1)
            change(len(calls))

    return calls


def test_a_change_between_read_and_write_is_decided_again(committing: Engine) -> None:
    with Session(committing, expire_on_commit=False) as s:
        job = new_job(s)

    def poll_overtakes(call: int) -> None:
        if call == 1:  # a poller moves the job to succeeded while the callback decides `applied`
            with Session(committing) as other:
                apply_provider_task(other, job.id, task_for(job, TaskStatus.SUCCEEDED), source="poll")
                other.commit()

    with committing.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        calls = _before_each_write(conn, poll_overtakes)
        result = apply_callback(conn, job.id, task_for(job, TaskStatus.PROCESSING), event=event_row("late"))

    assert len(calls) == 2  # the first write found the job changed and wrote nothing
    assert (result.outcome, result.job_status) == (EventOutcome.STALE, "succeeded")
    with Session(committing) as s:
        assert transitions_of(s, job.id) == [(None, "queued", "api"), ("queued", "succeeded", "poll")]
        assert s.scalars(select(CallbackEvent.outcome).where(CallbackEvent.job_id == job.id)).all() == [
            "stale"
        ]
        assert len(s.scalars(select(Image).where(Image.job_id == job.id)).all()) == 2


def test_a_job_that_keeps_changing_gives_up_with_nothing_written(committing: Engine) -> None:
    with Session(committing, expire_on_commit=False) as s:
        job = new_job(s)

    def touch(call: int) -> None:
        # A new value each time: what the callback read is never what the job holds at its write.
        with committing.begin() as other:
            at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=call)
            other.execute(update(Job).where(Job.id == job.id).values(last_provider_update_at=at))

    with committing.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        calls = _before_each_write(conn, touch)
        with pytest.raises(JobBusy):
            apply_callback(
                conn, job.id, task_for(job, TaskStatus.PROCESSING), event=event_row("busy"), attempts=3
            )

    assert len(calls) == 3
    with Session(committing) as s:
        assert s.scalars(select(CallbackEvent).where(CallbackEvent.job_id == job.id)).all() == []
        assert transitions_of(s, job.id) == [(None, "queued", "api")]
