"""`apply_callback`: the callback view's path on PostgreSQL (read, decide, one guarded write)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Connection, Engine, event, select, text, update
from sqlalchemy.orm import Session

from kling.types import TaskStatus
from models import (
    ApplyResult,
    CallbackEvent,
    EventOutcome,
    Image,
    Job,
    JobNotFound,
    JobStatus,
    TaskMismatch,
    apply_callback,
    apply_provider_task,
    callback_token,
    create_job,
)
from models.db import make_engine, make_sessionmaker
from models.settings import Settings
from tests.conftest import TEST_CALLBACK_SECRET
from tests.data.helpers import PARAMS, encode, legacy_body, new_job, outbox_tasks, task_for, transitions_of
from webhook import create_app


def event_row(key: str) -> CallbackEvent:
    return CallbackEvent(dedupe_key=key, headers={"webhook-id": key}, body="{}")


def events_of(session: Session, job_id: str) -> list[tuple[str, str, str | None]]:
    rows = session.scalars(
        select(CallbackEvent).where(CallbackEvent.job_id == job_id).order_by(CallbackEvent.id)
    )
    return [(e.dedupe_key, e.outcome, e.task_status) for e in rows]


def test_outcomes_rows_and_dedupe_match_the_locking_path(db_session: Session) -> None:
    s = db_session
    job = new_job(s)
    conn = s.connection()

    def deliver(status: TaskStatus, key: str) -> ApplyResult | None:
        return apply_callback(conn, job.id, task_for(job, status), event=event_row(key))

    applied = deliver(TaskStatus.PROCESSING, "a")
    assert applied is not None
    assert (applied.outcome, applied.from_status, applied.job_status) == ("applied", "queued", "processing")
    assert applied.outbox == ()
    processing = JobStatus.PROCESSING
    # A stored dedupe key: nothing written, whatever the report says.
    assert deliver(TaskStatus.SUCCEEDED, "a") == ApplyResult(EventOutcome.DUPLICATE, processing, processing)
    assert deliver(TaskStatus.PROCESSING, "b") == ApplyResult(EventOutcome.DUPLICATE, processing, processing)
    s.expire_all()
    before_stale = s.get(Job, job.id)
    assert before_stale is not None
    seen_update = before_stale.last_provider_update_at
    # A stale report is recorded and leaves the job alone.
    assert deliver(TaskStatus.SUBMITTED, "c") == ApplyResult(EventOutcome.STALE, processing, processing)
    s.expire_all()
    assert s.get(Job, job.id).last_provider_update_at == seen_update  # type: ignore[union-attr]
    done = deliver(TaskStatus.SUCCEEDED, "d")
    assert done is not None
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
    assert events_of(s, job.id) == [
        ("a", "applied", "processing"),
        ("b", "duplicate", "processing"),
        ("c", "stale", "submitted"),
        ("d", "applied", "succeeded"),
    ]


def test_a_failure_with_a_webhook_url_notifies_and_records_the_error(db_session: Session) -> None:
    s = db_session
    job = create_job(s, PARAMS, provider="kling", webhook_url="https://hooks.example.com/done").job
    s.commit()
    failed = apply_callback(
        s.connection(), job.id, task_for(job, TaskStatus.FAILED, msg="content risk"), event=event_row("f")
    )
    assert failed is not None
    assert [row.task for row in failed.outbox] == ["notify", "release_slots"]
    s.expire_all()
    stored = s.get(Job, job.id)
    assert stored is not None
    assert (stored.status, stored.error_code, stored.error_message) == (
        "failed",
        "provider_failed",
        "content risk",
    )
    assert stored.finished_at is not None


def test_filling_in_images_is_left_to_the_row_lock_once(db_session: Session) -> None:
    s = db_session
    job = new_job(s)
    conn = s.connection()
    bare = apply_callback(conn, job.id, task_for(job, TaskStatus.SUCCEEDED, images=0), event=event_row("a"))
    assert bare is not None and bare.outcome == EventOutcome.APPLIED
    # Whether the job still has no images is only certain under a lock held to the write.
    assert (
        apply_callback(conn, job.id, task_for(job, TaskStatus.SUCCEEDED, images=3), event=event_row("b"))
        is None
    )
    assert events_of(s, job.id) == [("a", "applied", "succeeded")]
    assert s.scalars(select(Image.index).where(Image.job_id == job.id)).all() == []
    filled = apply_provider_task(
        s, job.id, task_for(job, TaskStatus.SUCCEEDED, images=3), source="callback", event=event_row("b")
    )
    assert filled.outcome == EventOutcome.DUPLICATE
    # Once the job has images, a repeated `succeed` stays on the one-statement path and adds none.
    again = apply_callback(conn, job.id, task_for(job, TaskStatus.SUCCEEDED, images=5), event=event_row("c"))
    assert again == ApplyResult(EventOutcome.DUPLICATE, JobStatus.SUCCEEDED, JobStatus.SUCCEEDED)
    assert s.scalars(select(Image.index).where(Image.job_id == job.id).order_by(Image.index)).all() == [
        0,
        1,
        2,
    ]
    assert [(key, outcome) for key, outcome, _ in events_of(s, job.id)] == [
        ("a", "applied"),
        ("b", "duplicate"),
        ("c", "duplicate"),
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
    assert [key for key, _, _ in events_of(s, job.id)] == ["b"]


# --- races, on a database that commits -----------------------------------------------------------
@pytest.fixture
def committing(committed_pg_url: str) -> Iterator[Engine]:
    engine = make_engine(committed_pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def committed_job(committing: Engine) -> Job:
    with Session(committing, expire_on_commit=False) as s:
        return new_job(s)


def _before_the_write(conn: Connection, change: Callable[[], None]) -> list[int]:
    """Run `change()` once, on another connection, when `conn` is about to send the guarded write:
    after the callback's read and before its write, the race the guard is for."""
    calls: list[int] = []

    @event.listens_for(conn, "before_cursor_execute")
    def interleave(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("WITH j AS") and not calls:
            calls.append(1)
            change()

    return calls


def _poll_succeeds(engine: Engine, job: Job) -> Callable[[], None]:
    def change() -> None:
        with Session(engine) as other:
            apply_provider_task(other, job.id, task_for(job, TaskStatus.SUCCEEDED), source="poll")
            other.commit()

    return change


def test_a_change_between_read_and_write_writes_nothing(committing: Engine, committed_job: Job) -> None:
    job = committed_job
    with committing.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        calls = _before_the_write(conn, _poll_succeeds(committing, job))
        result = apply_callback(conn, job.id, task_for(job, TaskStatus.PROCESSING), event=event_row("late"))
    assert calls == [1]
    assert result is None
    with Session(committing) as s:
        assert events_of(s, job.id) == []
        assert transitions_of(s, job.id) == [(None, "queued", "api"), ("queued", "succeeded", "poll")]


def test_the_view_decides_again_under_the_row_lock(committing: Engine, committed_job: Job) -> None:
    job = committed_job
    settings = Settings(database_url="sqlite://", callback_secret=SecretStr(TEST_CALLBACK_SECRET))
    app = create_app(settings, session_factory=make_sessionmaker(committing))

    def race_every_connection(conn: Connection) -> None:
        _before_the_write(conn, _poll_succeeds(committing, job))

    event.listen(committing, "engine_connect", race_every_connection)
    try:
        answer = app.test_client().post(
            f"/callbacks/kling/{job.id}/{callback_token(TEST_CALLBACK_SECRET, job.id)}",
            data=encode(legacy_body("task-1", "processing", external_task_id=job.id)),
        )
    finally:
        event.remove(committing, "engine_connect", race_every_connection)
    assert (answer.status_code, answer.get_json()) == (200, {"outcome": "stale"})
    with Session(committing) as s:
        assert [outcome for _, outcome, _ in events_of(s, job.id)] == ["stale"]
        assert transitions_of(s, job.id) == [(None, "queued", "api"), ("queued", "succeeded", "poll")]


def _wait_for_lock_waiter(engine: Engine, deadline: float = 10.0) -> None:
    """Poll until some backend waits on a row lock (the callback's guarded write)."""
    end = time.monotonic() + deadline
    with engine.connect() as probe:
        while time.monotonic() < end:
            waiting = probe.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE 'WITH j AS%'"
                )
            ).scalar_one()
            probe.rollback()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the callback never waited on the row lock")


def _deliver_while_locked(engine: Engine, job: Job, holder_change: Any) -> ApplyResult | None:
    """Hold the job's row lock in another transaction, let the callback's write wait on it, make
    `holder_change` and commit: the write then re-checks its guard against the new row version."""
    results: list[ApplyResult | None] = []
    with engine.connect() as holder:
        holder.execute(select(Job.id).where(Job.id == job.id).with_for_update())
        holder.execute(holder_change)

        def deliver() -> None:
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                results.append(
                    apply_callback(conn, job.id, task_for(job, TaskStatus.SUCCEEDED), event=event_row("s"))
                )

        thread = threading.Thread(target=deliver)
        thread.start()
        _wait_for_lock_waiter(engine)
        holder.commit()
        thread.join(timeout=30)
    assert not thread.is_alive()
    return results[0]


def test_a_write_that_waited_applies_to_the_new_row_version(committing: Engine, committed_job: Job) -> None:
    job = committed_job
    # The holder changes columns the decision does not read: a worker's claim, a poll's stamp.
    touched = (
        update(Job).where(Job.id == job.id).values(claim_token="worker-1", last_polled_at=Job.created_at)
    )
    result = _deliver_while_locked(committing, job, touched)
    assert result is not None and result.outcome == EventOutcome.APPLIED
    with Session(committing) as s:
        stored = s.get(Job, job.id)
        assert stored is not None
        # The callback's move on top of the holder's change: the claim ends with the step, the
        # poll stamp stays.
        assert (stored.status, stored.claim_token) == ("succeeded", None)
        assert stored.last_polled_at == stored.created_at
        assert len(s.scalars(select(Image).where(Image.job_id == job.id)).all()) == 2


def test_a_write_that_waited_on_a_status_change_writes_nothing(
    committing: Engine, committed_job: Job
) -> None:
    job = committed_job
    result = _deliver_while_locked(
        committing, job, update(Job).where(Job.id == job.id).values(status="failed")
    )
    assert result is None
    with Session(committing) as s:
        assert events_of(s, job.id) == []
        assert s.scalars(select(Image).where(Image.job_id == job.id)).all() == []
