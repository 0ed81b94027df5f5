"""The one place that decides which job status moves are allowed, and applies them.

Order: queued < submitted < processing < succeeded < archived. `failed` is reachable from any
non-terminal status; `archived` and `failed` absorb everything; `archived` is reached only from
`succeeded`. Skipping provider states is allowed and writes a single transition row
(queued -> succeeded), never invented intermediate rows.

Every function here works inside the caller's transaction; the caller commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from kling.types import Task, TaskStatus
from models.base import utcnow
from models.enums import EventOutcome, JobStatus, TransitionSource
from models.outbox import (
    ARCHIVE_JOB,
    CORE_ROWS_WRITTEN,
    NOTIFY,
    RELEASE_SLOTS,
    SUBMIT_JOB,
    OutboxEntry,
    enqueue,
    enqueue_rows,
)
from models.tables import CallbackEvent, Image, Job, Transition, new_job_id

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

# Statuses after which provider reports cannot move a job (only our own code can).
_PROVIDER_DONE = frozenset({JobStatus.SUCCEEDED, JobStatus.ARCHIVED, JobStatus.FAILED})


class JobNotFound(LookupError):
    """No job with that id."""


class TaskMismatch(ValueError):
    """The provider task does not belong to this job."""


@dataclass(frozen=True)
class ApplyResult:
    outcome: EventOutcome
    job_status: JobStatus
    from_status: JobStatus
    # Outbox rows written with this change: after its commit the caller can publish exactly these,
    # instead of scanning the outbox.
    outbox: tuple[OutboxEntry, ...] = ()

    @property
    def changed(self) -> bool:
        return self.outcome is EventOutcome.APPLIED


def can_move(current: JobStatus | str, target: JobStatus | str) -> bool:
    """Whether `current -> target` is an allowed (forward, non-empty) move."""
    current, target = JobStatus(current), JobStatus(target)
    if current.is_terminal or current == target:
        return False
    if target is JobStatus.FAILED:
        return True
    if target is JobStatus.ARCHIVED:
        # Archived means "every image is in S3": only the archiver, after success, may say so.
        return current is JobStatus.SUCCEEDED
    return _RANK[target] > _RANK[current]


def _slots(params: Mapping[str, Any]) -> int:
    n = params.get("n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


def create_job(
    session: Session,
    params: Mapping[str, Any],
    *,
    provider: str,
    webhook_url: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """Insert a queued job, its first transition and the outbox row that submits it.

    With an `idempotency_key` already used (even by a concurrent request), return that job.
    """
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is not None:
            return existing
    job = Job(
        id=new_job_id(),
        provider=provider,
        params=dict(params),
        status=JobStatus.QUEUED.value,
        webhook_url=webhook_url,
        meta=dict(metadata) if metadata is not None else None,
        idempotency_key=idempotency_key,
        slots=_slots(params),
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return existing
    session.add(Transition(job_id=job.id, from_status=None, to_status=JobStatus.QUEUED.value, source="api"))
    enqueue(session, SUBMIT_JOB, job.id)
    return job


def _move_changes(
    *,
    submitted_at: datetime | None,
    target: JobStatus,
    now: datetime,
    error_code: str | None = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    """The job columns a move to `target` sets; the move must already be checked."""
    changes: dict[str, Any] = {
        "status": target.value,
        "updated_at": now,
        # A worker's claim is on the step of the old status (submit, archive): the new status is a
        # new step, free for the run it calls for (e.g. archiving after a callback overtook the
        # submit).
        "claim_token": None,
        "claimed_until": None,
    }
    if submitted_at is None and target not in (JobStatus.QUEUED, JobStatus.FAILED):
        changes["submitted_at"] = now
    if target is JobStatus.FAILED:
        changes["error_code"] = error_code or "failed"
        changes["error_message"] = error_message
    if target.is_terminal:
        changes["finished_at"] = now
    return changes


def _move(
    session: Session,
    job: Job,
    target: JobStatus,
    *,
    source: str,
    now: datetime,
    detail: Mapping[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    """Write the transition row and update the job (ORM); the move must already be checked."""
    TransitionSource(source)
    session.add(
        Transition(
            job_id=job.id,
            from_status=job.status,
            to_status=target.value,
            source=source,
            at=now,
            detail=dict(detail) if detail else None,
        )
    )
    changes = _move_changes(
        submitted_at=job.submitted_at,
        target=target,
        now=now,
        error_code=error_code,
        error_message=error_message,
    )
    for name, value in changes.items():
        setattr(job, name, value)
    if target.is_terminal and job.webhook_url:
        enqueue(session, NOTIFY, job.id)


def transition(
    session: Session,
    job: Job,
    to_status: JobStatus | str,
    *,
    source: str,
    detail: Mapping[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    provider_task_id: str | None = None,
) -> bool:
    """A move made by our own code (submit, archive, expiry). Returns False if not allowed now.

    `provider_task_id` records the provider's task id (queued -> submitted); it is kept even when
    a callback already moved the job further.
    """
    target = JobStatus(to_status)
    # Flush first: refresh would silently drop this session's unflushed changes to the job.
    session.flush()
    session.refresh(job, with_for_update=True)
    if provider_task_id is not None:
        if job.provider_task_id is None:
            job.provider_task_id = provider_task_id
        elif job.provider_task_id != provider_task_id:
            raise TaskMismatch(f"job {job.id} already has provider task {job.provider_task_id}")
    if not can_move(job.status, target):
        return False
    _move(
        session,
        job,
        target,
        source=source,
        now=utcnow(),
        detail=detail,
        error_code=error_code,
        error_message=error_message,
    )
    return True


def _check_task(job_id: str, provider_task_id: str | None, task: Task) -> None:
    if provider_task_id is None:
        # Before our submit commits, a task is ours only if it carries our job id.
        if task.external_task_id != job_id:
            raise TaskMismatch(f"task {task.task_id} is not known to belong to job {job_id}")
    elif task.task_id != provider_task_id:
        raise TaskMismatch(f"task {task.task_id} does not belong to job {job_id}")


def _store_event(conn: Connection, event: CallbackEvent) -> bool:
    """Insert the event unless its dedupe key is stored already; True when it was inserted.

    One statement where a lookup and an insert would take two: the unique key decides, also
    between two deliveries racing in parallel transactions (the second waits, then does nothing).
    """
    values = {
        "job_id": event.job_id,
        "dedupe_key": event.dedupe_key,
        "task_status": event.task_status,
        "headers": event.headers,
        "body": event.body,
        "outcome": event.outcome,
    }
    return conn.execute(_INSERT_EVENT[conn.dialect.name], values).scalar_one_or_none() is not None


def _outcome(current: JobStatus, target: JobStatus) -> EventOutcome:
    if current == target or (current is JobStatus.ARCHIVED and target is JobStatus.SUCCEEDED):
        return EventOutcome.DUPLICATE
    # Once the provider said `succeed` it has nothing newer to say: a later `failed` is stale.
    if current in _PROVIDER_DONE or not can_move(current, target):
        return EventOutcome.STALE
    return EventOutcome.APPLIED


# Built once: a statement object made per call costs more CPU than its round trip.
_JOBS, _IMAGES = cast(Table, Job.__table__), cast(Table, Image.__table__)
_LOCK_JOB = (
    select(_JOBS.c.id, _JOBS.c.status, _JOBS.c.provider_task_id, _JOBS.c.submitted_at, _JOBS.c.webhook_url)
    .where(_JOBS.c.id == bindparam("job_id"))
    # FOR UPDATE serialises concurrent appliers on PostgreSQL; SQLite serialises writers anyway
    # (our engines BEGIN IMMEDIATE) and SQLAlchemy renders no FOR UPDATE there.
    .with_for_update()
)
_UPDATE_JOB = update(_JOBS).where(_JOBS.c.id == bindparam("job_id"))
_INSERT_TRANSITION = insert(cast(Table, Transition.__table__))
_INSERT_IMAGES = insert(_IMAGES)
_IMAGE_INDEXES = select(_IMAGES.c.index).where(_IMAGES.c.job_id == bindparam("job_id"))
_INSERT_EVENT = {
    name: dialect.insert(cast(Table, CallbackEvent.__table__))
    .on_conflict_do_nothing(index_elements=["dedupe_key"])
    .returning(CallbackEvent.__table__.c.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def _add_images(conn: Connection, job_id: str, task: Task, now: datetime) -> None:
    """The report's images, for a job that has none yet (indexes repeated in a report count once)."""
    existing: set[int] = set()
    created = task.created_at or now
    rows = []
    for image in (*task.images, *task.series_images):
        if image.index not in existing:
            existing.add(image.index)
            rows.append(
                {
                    "job_id": job_id,
                    "index": image.index,
                    "source_url": image.url,
                    "provider_created_at": created,
                }
            )
    if rows:
        conn.execute(_INSERT_IMAGES, rows)


def apply_provider_task(
    db: Session | Connection,
    job_id: str,
    task: Task,
    *,
    source: str,
    event: CallbackEvent | None = None,
) -> ApplyResult:
    """Apply a provider task state (from a callback or a poll) to a job, in the caller's transaction.

    Raises `JobNotFound` or `TaskMismatch` (nothing written). `event`, when given, is a new
    `CallbackEvent` (dedupe_key, headers, body set); it is stored with its outcome, unless its
    dedupe key was seen before, in which case the answer is `duplicate` and nothing is written.

    `db` is a Session (pollers) or a Connection in a transaction (the callback view). Written with
    Core statements: this is every callback's path, and the ORM's unit of work cost several times
    the SQL. A `Job` the session holds is expired.
    """
    TransitionSource(source)
    if isinstance(db, Session):
        db.flush()  # what the session changed before goes first
        conn = db.connection()
    else:
        conn = db
    job = conn.execute(_LOCK_JOB, {"job_id": job_id}).one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    current = JobStatus(job.status)
    _check_task(job.id, job.provider_task_id, task)
    target = PROVIDER_TO_JOB[task.status]
    outcome = _outcome(current, target)
    if event is not None:
        event.job_id = job.id
        event.task_status = task.status.value
        event.outcome = outcome.value
        if not _store_event(conn, event):
            return ApplyResult(EventOutcome.DUPLICATE, current, current)

    now = utcnow()
    changes: dict[str, Any] = {}
    if job.provider_task_id is None:
        changes["provider_task_id"] = task.task_id
    queued: list[tuple[str, list[Any]]] = []
    if outcome is EventOutcome.APPLIED:
        detail: dict[str, Any] = {"provider_status": task.status.value}
        if task.status_message:
            detail["message"] = task.status_message
        conn.execute(
            _INSERT_TRANSITION,
            {
                "job_id": job.id,
                "from_status": job.status,
                "to_status": target.value,
                "source": source,
                "at": now,
                "detail": detail,
            },
        )
        changes |= _move_changes(
            submitted_at=job.submitted_at,
            target=target,
            now=now,
            error_code=PROVIDER_FAILED,
            error_message=task.status_message or "the provider reported the task failed",
        )
        if target.is_terminal and job.webhook_url:
            queued.append((NOTIFY, [job.id]))
        if target is JobStatus.SUCCEEDED:
            _add_images(conn, job.id, task, now)
            queued.append((ARCHIVE_JOB, [job.id]))
        if task.status.is_final:
            queued.append((RELEASE_SLOTS, [job.id]))
    elif (
        target is JobStatus.SUCCEEDED
        and current is JobStatus.SUCCEEDED
        and conn.execute(_IMAGE_INDEXES, {"job_id": job.id}).first() is None
    ):
        # A first `succeed` may have come without images (a bare callback): the first report that
        # carries them sets them, once.
        _add_images(conn, job.id, task, now)
    if outcome is not EventOutcome.STALE:
        changes["last_provider_update_at"] = now
    if source == TransitionSource.POLL:
        changes["last_polled_at"] = now
    if changes:
        conn.execute(_UPDATE_JOB.values(changes), {"job_id": job.id})
    outbox = enqueue_rows(conn, queued)
    if isinstance(db, Session) and outbox:
        db.info[CORE_ROWS_WRITTEN] = True
    if isinstance(db, Session) and (loaded := db.identity_map.get(identity_key(Job, job.id))) is not None:
        db.expire(loaded)
    return ApplyResult(outcome, JobStatus(changes.get("status", current)), current, tuple(outbox))
