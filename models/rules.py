"""The job state machine's rules, as pure functions: no database, no clock.

`decide` turns a provider report into a `Plan` (every write it calls for); `decide_move` does the
same for a move our own code makes (submit, archive, failure). The SQL writers in
`models/statemachine.py` only execute plans, so a new job column or outbox task is one edit here.
See docs/architecture.md ("Job lifecycle") for the rules in prose.

Order: queued < submitted < processing < succeeded < archived. `failed` is reachable from any
non-terminal status; `archived` and `failed` absorb everything; `archived` is reached only from
`succeeded`. Skipping provider states writes a single transition (queued -> succeeded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kling.types import Task, TaskStatus
from models.enums import EventOutcome, JobStatus, TransitionSource
from models.events import event_for, subscribed
from models.outbox import ARCHIVE_JOB, CONFIRM_JOB, NOTIFY, RELEASE_SLOTS

_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.PROCESSING: 2,
    JobStatus.SUCCEEDED: 3,
    JobStatus.ARCHIVED: 4,
}

PROVIDER_TO_JOB = {
    TaskStatus.SUBMITTED: JobStatus.SUBMITTED,
    TaskStatus.PROCESSING: JobStatus.PROCESSING,
    TaskStatus.SUCCEEDED: JobStatus.SUCCEEDED,
    TaskStatus.FAILED: JobStatus.FAILED,
}

PROVIDER_FAILED = "provider_failed"

_NEVER_CREATED = frozenset({JobStatus.CANCELLED, JobStatus.EXPIRED})

# Statuses after which provider reports cannot move a job (only our own code can).
_PROVIDER_DONE = frozenset({JobStatus.SUCCEEDED, JobStatus.ARCHIVED, JobStatus.FAILED})


class TaskMismatch(ValueError):
    """The provider task does not belong to this job."""


@dataclass(frozen=True)
class ReportedOutput:
    """One output row to insert: an image or a video (`duration` in seconds, videos only)."""

    index: int
    url: str
    type: str = "image"
    duration: float | None = None


@dataclass(frozen=True)
class JobState:
    """What a decision reads of a job row."""

    id: str
    status: JobStatus
    provider_task_id: str | None = None
    submitted_at: datetime | None = None
    webhook_url: str | None = None
    has_images: bool = False
    webhook_events: tuple[str, ...] | None = None  # None: models.events.DEFAULT_EVENTS


@dataclass(frozen=True)
class Plan:
    """Every write a report or a move calls for, decided before any is made."""

    outcome: EventOutcome
    current: JobStatus
    changes: Mapping[str, Any] = field(default_factory=dict)  # job columns
    transition: Mapping[str, Any] | None = None  # the transition row, without job_id
    images: tuple[ReportedOutput, ...] = ()  # output rows (images and videos) to insert
    image_created: datetime | None = None
    queued: tuple[str, ...] = ()  # outbox tasks, each with the job id as its argument

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.changes.get("status", self.current))

    @property
    def moved(self) -> bool:
        return self.transition is not None


def can_move(current: JobStatus | str, target: JobStatus | str) -> bool:
    """Whether `current -> target` is an allowed (forward, non-empty) move."""
    current, target = JobStatus(current), JobStatus(target)
    if current.is_terminal or current == target:
        return False
    if target is JobStatus.FAILED:
        return True
    if target in _NEVER_CREATED:
        # Only a job that was never created at the provider: nothing was billed, nothing will come.
        return current is JobStatus.QUEUED
    if target is JobStatus.ARCHIVED:
        # Archived means "every image is in S3": only the archiver, after success, may say so.
        return current is JobStatus.SUCCEEDED
    return _RANK[target] > _RANK[current]


def report_outcome(current: JobStatus, target: JobStatus) -> EventOutcome:
    """What a provider report of `target` means for a job at `current`."""
    if current == target or (current is JobStatus.ARCHIVED and target is JobStatus.SUCCEEDED):
        return EventOutcome.DUPLICATE
    # Once the provider said `succeed` it has nothing newer to say: a later `failed` is stale.
    if current in _PROVIDER_DONE or not can_move(current, target):
        return EventOutcome.STALE
    return EventOutcome.APPLIED


def check_task(job: JobState, task: Task) -> None:
    """Raise `TaskMismatch` unless the reported task is the job's."""
    if job.provider_task_id is None:
        # Before our submit commits, a task is ours only if it carries our job id.
        if task.external_task_id != job.id:
            raise TaskMismatch(f"task {task.task_id} is not known to belong to job {job.id}")
    elif task.task_id != job.provider_task_id:
        raise TaskMismatch(f"task {task.task_id} does not belong to job {job.id}")


def _move(
    job: JobState,
    target: JobStatus,
    *,
    source: str,
    now: datetime,
    detail: Mapping[str, Any] | None,
    error: tuple[str | None, str | None],
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The job columns, transition row and outbox tasks of an allowed move to `target`;
    `error` (code, message) is kept by a move to `failed`."""
    changes: dict[str, Any] = {
        "status": target.value,
        "updated_at": now,
        # A worker's claim is on the step of the old status (submit, archive): the new status is a
        # new step, free for the run it calls for (e.g. archiving after a callback overtook the
        # submit).
        "claim_token": None,
        "claimed_until": None,
    }
    if job.submitted_at is None and target not in (JobStatus.QUEUED, JobStatus.FAILED, *_NEVER_CREATED):
        changes["submitted_at"] = now
    if target is JobStatus.FAILED:
        changes["error_code"] = error[0] or "failed"
        changes["error_message"] = error[1]
    if target.is_terminal:
        changes["finished_at"] = now
    row = {
        "from_status": job.status.value,
        "to_status": target.value,
        "source": TransitionSource(source).value,
        "at": now,
        "detail": dict(detail) if detail else None,
    }
    event = event_for(target)
    heard = job.webhook_url and event is not None and event in subscribed(job.webhook_events)
    queued = [NOTIFY] if heard else []
    return changes, row, queued


def decide_move(
    job: JobState,
    target: JobStatus | str,
    *,
    source: str,
    now: datetime,
    detail: Mapping[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    provider_task_id: str | None = None,
) -> Plan:
    """A move our own code makes. `provider_task_id` (queued -> submitted) is recorded even when
    a callback already moved the job further; a different one raises `TaskMismatch`."""
    target = JobStatus(target)
    changes: dict[str, Any] = {}
    if provider_task_id is not None:
        if job.provider_task_id is None:
            changes["provider_task_id"] = provider_task_id
        elif job.provider_task_id != provider_task_id:
            raise TaskMismatch(f"job {job.id} already has provider task {job.provider_task_id}")
    if not can_move(job.status, target):
        return Plan(EventOutcome.STALE, job.status, changes)
    moved, row, queued = _move(
        job, target, source=source, now=now, detail=detail, error=(error_code, error_message)
    )
    return Plan(EventOutcome.APPLIED, job.status, changes | moved, row, queued=tuple(queued))


def _report_images(task: Task) -> tuple[ReportedOutput, ...]:
    """The report's outputs (images and videos); an index repeated in a report counts once.
    A task built without `outputs` (tests, old callers) is read from its images."""
    if task.outputs:
        found = [ReportedOutput(o.index, o.url, o.type, o.duration) for o in task.outputs]
    else:
        found = [ReportedOutput(i.index, i.url) for i in (*task.images, *task.series_images)]
    seen: dict[int, ReportedOutput] = {}
    for output in found:
        seen.setdefault(output.index, output)
    return tuple(seen.values())


def decide(job: JobState, report: Task, source: str, now: datetime) -> Plan:
    """A provider report (callback or poll) applied to a job: check the task is the job's
    (`TaskMismatch`), then decide every write."""
    check_task(job, report)
    source = TransitionSource(source).value
    target = PROVIDER_TO_JOB[report.status]
    outcome = report_outcome(job.status, target)
    changes: dict[str, Any] = {}
    row: dict[str, Any] | None = None
    images: tuple[ReportedOutput, ...] = ()
    queued: list[str] = []
    if job.provider_task_id is None:
        changes["provider_task_id"] = report.task_id
    if outcome is EventOutcome.APPLIED:
        detail: dict[str, Any] = {"provider_status": report.status.value}
        if report.status_message:
            detail["message"] = report.status_message
        failure = (PROVIDER_FAILED, report.status_message or "the provider reported the task failed")
        moved, row, queued = _move(job, target, source=source, now=now, detail=detail, error=failure)
        changes |= moved
        if target is JobStatus.SUCCEEDED:
            images = _report_images(report)
            queued.append(ARCHIVE_JOB)
        if report.status.is_final:
            queued.append(RELEASE_SLOTS)
            if report.created_at is not None and report.updated_at is not None:
                ran = (report.updated_at - report.created_at).total_seconds()
                changes["provider_seconds"] = max(0.0, ran)
            # The units the task deducted from the account's pack (`final_unit_deduction`).
            units = getattr(report, "units", None)
            if units is not None:
                changes["units"] = float(units)
    elif target is JobStatus.SUCCEEDED and job.status is JobStatus.SUCCEEDED and not job.has_images:
        # A first `succeed` may have come without images (a bare callback): the first report that
        # carries them sets them, once.
        images = _report_images(report)
    if outcome is not EventOutcome.STALE:
        changes["last_provider_update_at"] = now
    if source == TransitionSource.POLL:
        changes["last_polled_at"] = now
    return Plan(
        outcome,
        job.status,
        changes,
        row,
        images,
        report.created_at or now,
        tuple(queued),
    )


def needs_confirmation(plan: Plan, report: Task) -> bool:
    """Whether a report's plan is one only the provider may make: it ends the provider task
    (`succeeded`, `failed`) or sets the job's images. An unsigned callback proves only that its
    sender holds the job's URL, so such a plan waits for a provider lookup (`unconfirmed`)."""
    return bool(plan.images) or (plan.moved and report.status.is_final)


def decide_unconfirmed(job: JobState) -> Plan:
    """An unsigned final report: change nothing, queue one lookup of the job's task."""
    return Plan(EventOutcome.UNCONFIRMED, job.status, queued=(CONFIRM_JOB,))
