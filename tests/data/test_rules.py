"""`models.rules` alone: the pure decision checked against the independent model of the rules in
tests/data/helpers.py, over every job state and report Hypothesis can build. No database."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling.types import Task, TaskImage, TaskStatus
from models.enums import EventOutcome, JobStatus, TransitionSource
from models.outbox import ARCHIVE_JOB, CONFIRM_JOB, NOTIFY, RELEASE_SLOTS
from models.rules import (
    PROVIDER_TO_JOB,
    JobState,
    TaskMismatch,
    decide,
    decide_move,
    decide_unconfirmed,
    needs_confirmation,
)
from tests.data.helpers import expected_move, expected_outcome

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
JOB_ID = "job-1"


@st.composite
def job_states(draw: st.DrawFn) -> JobState:
    status = draw(st.sampled_from(JobStatus))
    return JobState(
        id=JOB_ID,
        status=status,
        provider_task_id=draw(st.sampled_from([None, "task-1"])),
        submitted_at=draw(st.sampled_from([None, NOW - timedelta(seconds=5)])),
        webhook_url=draw(st.sampled_from([None, "https://hooks.example.com/done"])),
        has_images=draw(st.booleans()) if status in (JobStatus.SUCCEEDED, JobStatus.ARCHIVED) else False,
    )


@st.composite
def reports(draw: st.DrawFn) -> Task:
    status = draw(st.sampled_from(TaskStatus))
    indexes = draw(st.lists(st.integers(0, 3), max_size=4)) if status is TaskStatus.SUCCEEDED else []
    return Task(
        task_id="task-1",
        status=status,
        status_message=draw(st.sampled_from(["", "policy"])),
        external_task_id=JOB_ID,
        created_at=draw(st.sampled_from([None, NOW - timedelta(seconds=3)])),
        images=tuple(
            TaskImage(index=i, url=f"https://cdn.klingai.com/{n}.png") for n, i in enumerate(indexes)
        ),
    )


sources = st.sampled_from([TransitionSource.CALLBACK.value, TransitionSource.POLL.value])


@given(job_states(), reports(), sources)
def test_a_report_is_decided_as_the_model_says(job: JobState, report: Task, source: str) -> None:
    plan = decide(job, report, source, NOW)
    target = PROVIDER_TO_JOB[report.status]
    assert plan.outcome.value == expected_outcome(job.status.value, target.value)
    assert plan.current is job.status
    applied = plan.outcome is EventOutcome.APPLIED
    # A transition row and a status change exactly when applied; never backwards.
    assert plan.moved is applied
    assert plan.job_status is (target if applied else job.status)
    if applied:
        assert plan.transition is not None
        assert (plan.transition["from_status"], plan.transition["to_status"]) == (job.status, target)
        assert plan.transition["source"] == source and plan.transition["at"] == NOW
    # Outbox tasks: notify on a final state with a webhook, archive on success, release on any end.
    expected_queue = []
    if applied and target.is_terminal and job.webhook_url:
        expected_queue.append(NOTIFY)
    if applied and target is JobStatus.SUCCEEDED:
        expected_queue.append(ARCHIVE_JOB)
    if applied and report.status.is_final:
        expected_queue.append(RELEASE_SLOTS)
    assert list(plan.queued) == expected_queue
    # Images: set with the move to succeeded, or filled in once on a job that succeeded without.
    fills = job.status is JobStatus.SUCCEEDED and target is JobStatus.SUCCEEDED and not job.has_images
    if (applied and target is JobStatus.SUCCEEDED) or fills:
        first: dict[int, str] = {}
        for image in report.images:
            first.setdefault(image.index, image.url)  # an index repeated in a report counts once
        assert [(o.index, o.url) for o in plan.images] == list(first.items())
    else:
        assert plan.images == ()
    # Bookkeeping columns.
    assert ("provider_task_id" in plan.changes) is (job.provider_task_id is None)
    assert ("last_provider_update_at" in plan.changes) is (plan.outcome is not EventOutcome.STALE)
    assert ("last_polled_at" in plan.changes) is (source == TransitionSource.POLL)
    if applied:
        assert plan.changes["claim_token"] is None and plan.changes["updated_at"] == NOW
        assert ("finished_at" in plan.changes) is target.is_terminal
        assert ("submitted_at" in plan.changes) is (
            job.submitted_at is None and target is not JobStatus.FAILED
        )
        if target is JobStatus.FAILED:
            assert plan.changes["error_code"] == "provider_failed"
            assert plan.changes["error_message"] == (
                report.status_message or "the provider reported the task failed"
            )
    assert plan.image_created == (report.created_at or NOW)


@given(job_states(), st.sampled_from(JobStatus), st.sampled_from(["worker", "archiver", "sweep"]))
def test_our_own_moves_follow_the_model(job: JobState, target: JobStatus, source: str) -> None:
    plan = decide_move(job, target, source=source, now=NOW, error_code="boom", error_message="why")
    allowed = expected_move(job.status.value, target.value)
    assert plan.moved is allowed
    assert plan.job_status is (target if allowed else job.status)
    assert list(plan.queued) == ([NOTIFY] if allowed and target.is_terminal and job.webhook_url else [])
    if allowed and target is JobStatus.FAILED:
        assert (plan.changes["error_code"], plan.changes["error_message"]) == ("boom", "why")
    if not allowed:
        assert plan.changes == {}


@given(job_states())
def test_a_task_id_is_recorded_once_and_never_replaced(job: JobState) -> None:
    if job.provider_task_id is None:
        plan = decide_move(job, JobStatus.SUBMITTED, source="worker", now=NOW, provider_task_id="task-9")
        assert plan.changes["provider_task_id"] == "task-9"
    else:
        with pytest.raises(TaskMismatch):
            decide_move(job, JobStatus.SUBMITTED, source="worker", now=NOW, provider_task_id="task-9")


@given(job_states(), reports())
def test_a_report_for_another_task_is_refused(job: JobState, report: Task) -> None:
    foreign = Task(task_id="task-other", status=report.status, external_task_id="job-other")
    with pytest.raises(TaskMismatch):
        decide(job, foreign, "callback", NOW)


def test_decide_reads_no_clock() -> None:
    job = JobState(id=JOB_ID, status=JobStatus.QUEUED)
    report = Task(task_id="task-1", status=TaskStatus.PROCESSING, external_task_id=JOB_ID)
    past = datetime(2001, 1, 1, tzinfo=UTC)
    plan = decide(job, report, "callback", past)
    assert (
        plan.changes["updated_at"] == past and plan.transition is not None and plan.transition["at"] == past
    )


@given(job_states(), reports(), sources, st.sampled_from([None, NOW - timedelta(seconds=1)]))
def test_a_final_report_records_how_long_the_provider_ran_by_its_clock(
    job: JobState, report: Task, source: str, updated: datetime | None
) -> None:
    report = dataclasses.replace(report, updated_at=updated)
    plan = decide(job, report, source, NOW)
    timed = report.created_at is not None and updated is not None
    if plan.outcome is EventOutcome.APPLIED and report.status.is_final and timed:
        # created 3 s before NOW, updated 1 s before: 2 s, whatever our own clock says.
        assert plan.changes["provider_seconds"] == 2.0
    else:
        assert "provider_seconds" not in plan.changes


@given(job_states(), reports())
def test_an_untrusted_report_needs_confirmation_exactly_when_it_would_end_the_task_or_set_images(
    job: JobState, report: Task
) -> None:
    """Issue 16: what an unsigned callback may not do alone. `processing`/`submitted` moves,
    duplicates and stale reports stay direct; a move to `succeeded`/`failed` or new image rows
    wait for the provider's lookup, and the plan that replaces them writes nothing but the lookup."""
    try:
        plan = decide(job, report, TransitionSource.CALLBACK, NOW)
    except TaskMismatch:
        return
    ends = plan.job_status in (JobStatus.SUCCEEDED, JobStatus.FAILED) and plan.moved
    assert needs_confirmation(plan, report) is (ends or bool(plan.images))
    if report.status in (TaskStatus.SUBMITTED, TaskStatus.PROCESSING):
        assert not needs_confirmation(plan, report)
    held = decide_unconfirmed(job)
    assert (held.outcome, held.changes, held.transition, held.images) == (
        EventOutcome.UNCONFIRMED,
        {},
        None,
        (),
    )
    assert held.queued == (CONFIRM_JOB,) and held.job_status is job.status
