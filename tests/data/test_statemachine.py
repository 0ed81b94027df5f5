"""The job state machine on both backends (PostgreSQL and SQLite, schema from the migrations)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from kling.types import Task, TaskStatus
from models import (
    CallbackEvent,
    EventOutcome,
    Image,
    Job,
    JobNotFound,
    JobStatus,
    TaskMismatch,
    apply_provider_task,
    can_move,
    statemachine,
    transition,
)
from models.statemachine import create_job
from models.tenants import create_tenant
from tests.data.helpers import PARAMS, new_job, outbox_tasks, task_for, transitions_of


def test_allowed_moves() -> None:
    assert can_move("queued", "succeeded")
    assert can_move("processing", "failed")
    assert not can_move("processing", "submitted")
    assert not can_move("succeeded", "succeeded")
    assert can_move("succeeded", "archived")
    assert not can_move("processing", "archived")
    for terminal in ("archived", "failed"):
        for target in JobStatus:
            assert not can_move(terminal, target)


def test_create_job_writes_job_transition_and_outbox(any_db_session: Session) -> None:
    s = any_db_session
    job = new_job(s, webhook_url="https://example.com/hook", metadata={"user": 7})
    assert job.status == "queued"
    assert job.slots == 2
    assert job.external_task_id == job.id
    assert job.meta == {"user": 7}
    assert job.created_at.tzinfo is not None
    assert transitions_of(s, job.id) == [(None, "queued", "api")]
    assert outbox_tasks(s, job.id) == ["submit_job"]


def test_a_job_deep_in_its_tenants_queue_is_left_to_the_pump(
    any_db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first submit could only join the wait queue: no row, no message, no worker run."""
    monkeypatch.setattr(statemachine, "QUEUE_DEPTH_FOR_PUMP", 2)
    s = any_db_session
    one = {**PARAMS, "n": 1}
    first, second = new_job(s), new_job(s)
    behind = create_job(s, one, provider="kling", defer_when_deep=True)
    s.commit()
    assert behind.created and behind.outbox == ()
    assert outbox_tasks(s, behind.job.id) == []
    assert (behind.job.status, transitions_of(s, behind.job.id)) == ("queued", [(None, "queued", "api")])
    assert outbox_tasks(s, first.id) == outbox_tasks(s, second.id) == ["submit_job"]
    # A high-priority job keeps its first submit (the pump serves waiters before the queue), and
    # another tenant's queue is its own.
    high = create_job(s, one, provider="kling", priority="high", defer_when_deep=True)
    highs = [create_job(s, one, provider="kling", priority="high", defer_when_deep=True) for _ in range(2)]
    assert [row.task for c in highs for row in c.outbox] == ["submit_job"] * 2  # two high ones ahead
    create_tenant(s, "acme")
    other = create_job(s, one, provider="kling", tenant="acme", defer_when_deep=True)
    # A job of several slots keeps its first submit (its place in the wait queue starts the
    # starvation clock the pump cannot), and so does every job unless the caller asks.
    big = create_job(s, PARAMS, provider="kling", defer_when_deep=True)
    asked = create_job(s, one, provider="kling")
    firsts = [row.task for c in (high, other, big, asked) for row in c.outbox]
    assert firsts == ["submit_job"] * 4
    # Once the jobs ahead have left the queue, a new job's first submit goes out again.
    for job in (first, second, high.job, big.job, asked.job, *(c.job for c in highs)):
        transition(s, job, JobStatus.FAILED, source="api")
    s.commit()
    again = create_job(s, one, provider="kling", defer_when_deep=True)
    assert [row.task for row in again.outbox] == ["submit_job"]


def test_idempotency_key_returns_the_same_job(any_db_session: Session) -> None:
    s = any_db_session
    first = new_job(s, idempotency_key="key-1")
    second = new_job(s, idempotency_key="key-1")
    other = new_job(s, idempotency_key="key-2")
    assert second.id == first.id
    assert other.id != first.id
    assert len(s.scalars(select(Job)).all()) == 2
    assert outbox_tasks(s, first.id) == ["submit_job"]


def test_full_lifecycle_one_transition_per_status(any_db_session: Session) -> None:
    s = any_db_session
    job = new_job(s, webhook_url="https://example.com/hook")
    assert transition(s, job, "submitted", source="worker", provider_task_id="task-1").changed
    for status in (TaskStatus.SUBMITTED, TaskStatus.PROCESSING, TaskStatus.SUCCEEDED):
        apply_provider_task(s, job.id, task_for(job, status), source="callback")
    assert transition(s, job, "archived", source="archiver").changed
    s.commit()
    assert transitions_of(s, job.id) == [
        (None, "queued", "api"),
        ("queued", "submitted", "worker"),
        ("submitted", "processing", "callback"),
        ("processing", "succeeded", "callback"),
        ("succeeded", "archived", "archiver"),
    ]
    assert job.submitted_at is not None
    assert job.finished_at is not None
    assert outbox_tasks(s, job.id) == ["submit_job", "archive_job", "release_slots", "notify"]


def test_skip_writes_one_transition_and_images_once(any_db_session: Session) -> None:
    s = any_db_session
    job = new_job(s)
    result = apply_provider_task(s, job.id, task_for(job, TaskStatus.SUCCEEDED), source="callback")
    assert (result.outcome, result.job_status, result.from_status) == ("applied", "succeeded", "queued")
    again = apply_provider_task(s, job.id, task_for(job, TaskStatus.SUCCEEDED), source="poll")
    assert again.outcome == EventOutcome.DUPLICATE
    s.commit()
    assert transitions_of(s, job.id) == [(None, "queued", "api"), ("queued", "succeeded", "callback")]
    images = s.scalars(select(Image).where(Image.job_id == job.id).order_by(Image.index)).all()
    assert [(i.index, i.status) for i in images] == [(0, "pending"), (1, "pending")]
    assert images[0].provider_created_at == datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    # The task id was adopted from the first task that carried our job id.
    assert job.provider_task_id == "task-1"
    assert job.last_polled_at is not None
    assert outbox_tasks(s, job.id) == ["submit_job", "archive_job", "release_slots"]


def test_out_of_order_never_regresses(any_db_session: Session) -> None:
    s = any_db_session
    job = new_job(s)
    apply_provider_task(s, job.id, task_for(job, TaskStatus.SUCCEEDED), source="callback")
    late = apply_provider_task(s, job.id, task_for(job, TaskStatus.PROCESSING), source="callback")
    failed = apply_provider_task(s, job.id, task_for(job, TaskStatus.FAILED), source="callback")
    s.commit()
    assert late.outcome == failed.outcome == EventOutcome.STALE
    assert job.status == "succeeded"
    assert job.error_code is None
    assert [t[1] for t in transitions_of(s, job.id)] == ["queued", "succeeded"]


def test_provider_failure_keeps_message_and_absorbs(any_db_session: Session) -> None:
    s = any_db_session
    job = new_job(s, webhook_url="https://example.com/hook")
    apply_provider_task(s, job.id, task_for(job, TaskStatus.PROCESSING), source="poll")
    apply_provider_task(s, job.id, task_for(job, TaskStatus.FAILED, msg="content risk"), source="callback")
    after = apply_provider_task(s, job.id, task_for(job, TaskStatus.SUCCEEDED), source="callback")
    s.commit()
    assert after.outcome == EventOutcome.STALE
    assert (job.status, job.error_code, job.error_message) == ("failed", "provider_failed", "content risk")
    assert not transition(s, job, "archived", source="archiver").changed
    assert s.scalars(select(Image).where(Image.job_id == job.id)).all() == []
    assert outbox_tasks(s, job.id) == ["submit_job", "notify", "release_slots"]


def test_event_rows_record_outcomes_and_dedupe_key(any_db_session: Session) -> None:
    s = any_db_session
    job = new_job(s)

    def event(key: str) -> CallbackEvent:
        return CallbackEvent(dedupe_key=key, headers={"webhook-id": key}, body="{}")

    r1 = apply_provider_task(
        s, job.id, task_for(job, TaskStatus.PROCESSING), source="callback", event=event("a")
    )
    r2 = apply_provider_task(
        s, job.id, task_for(job, TaskStatus.SUCCEEDED), source="callback", event=event("a")
    )
    r3 = apply_provider_task(
        s, job.id, task_for(job, TaskStatus.PROCESSING), source="callback", event=event("b")
    )
    r4 = apply_provider_task(
        s, job.id, task_for(job, TaskStatus.SUBMITTED), source="callback", event=event("c")
    )
    s.commit()
    # Same dedupe key: a duplicate even though the body differs; nothing applied.
    assert [r.outcome for r in (r1, r2, r3, r4)] == ["applied", "duplicate", "duplicate", "stale"]
    assert job.status == "processing"
    rows = s.scalars(select(CallbackEvent).where(CallbackEvent.job_id == job.id).order_by(CallbackEvent.id))
    assert [(e.dedupe_key, e.outcome, e.task_status) for e in rows] == [
        ("a", "applied", "processing"),
        ("b", "duplicate", "processing"),
        ("c", "stale", "submitted"),
    ]


def test_foreign_task_is_refused(any_db_session: Session) -> None:
    s = any_db_session
    job = new_job(s)
    stranger = Task(task_id="other", status=TaskStatus.SUCCEEDED, external_task_id="another-job")
    with pytest.raises(TaskMismatch):
        apply_provider_task(s, job.id, stranger, source="callback")
    assert transition(s, job, "submitted", source="worker", provider_task_id="task-1").changed
    with pytest.raises(TaskMismatch):
        apply_provider_task(
            s, job.id, task_for(job, TaskStatus.SUCCEEDED, task_id="task-2"), source="callback"
        )
    with pytest.raises(JobNotFound):
        apply_provider_task(s, "no-such-job", task_for(job, TaskStatus.SUCCEEDED), source="callback")
    s.commit()
    assert job.status == "submitted"


def test_worker_transition_after_callback_keeps_task_id(any_db_session: Session) -> None:
    s = any_db_session
    job = new_job(s)
    # The callback can land before the worker records its submission.
    apply_provider_task(s, job.id, task_for(job, TaskStatus.PROCESSING), source="callback")
    assert not transition(s, job, "submitted", source="worker", provider_task_id="task-1").changed
    with pytest.raises(TaskMismatch):
        transition(s, job, "submitted", source="worker", provider_task_id="task-9")
    s.commit()
    assert (job.status, job.provider_task_id) == ("processing", "task-1")


def test_expired_images_fail_the_job(any_db_session: Session) -> None:
    s = any_db_session
    job = new_job(s)
    apply_provider_task(s, job.id, task_for(job, TaskStatus.SUCCEEDED), source="poll")
    assert transition(
        s, job, "failed", source="sweep", error_code="source_expired", error_message="gone"
    ).changed
    s.commit()
    assert (job.status, job.error_code) == ("failed", "source_expired")
    assert transitions_of(s, job.id)[-1] == ("succeeded", "failed", "sweep")
