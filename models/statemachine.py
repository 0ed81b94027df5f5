"""The one place that decides which job status moves are allowed, and applies them.

Order: queued < submitted < processing < succeeded < archived. `failed` is reachable from any
non-terminal status; `archived` and `failed` absorb everything; `archived` is reached only from
`succeeded`. Skipping provider states is allowed and writes a single transition row
(queued -> succeeded), never invented intermediate rows.

Every function here works inside the caller's transaction and the caller commits, except
`apply_callback`: one statement makes all its writes, so it needs no transaction (the callback
view runs it on a connection in autocommit mode).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    Connection,
    Integer,
    Select,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    null,
    select,
    true,
    update,
)
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
from models.tables import CallbackEvent, Image, Job, Outbox, Transition, new_job_id

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


_EVENT_COLUMNS = ("job_id", "dedupe_key", "task_status", "headers", "body", "outcome")


def _event_values(event: CallbackEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in _EVENT_COLUMNS}


def _store_event(conn: Connection, event: CallbackEvent) -> bool:
    """Insert the event unless its dedupe key is stored already; True when it was inserted.

    One statement where a lookup and an insert would take two: the unique key decides, also
    between two deliveries racing in parallel transactions (the second waits, then does nothing).
    """
    return (
        conn.execute(_INSERT_EVENT[conn.dialect.name], _event_values(event)).scalar_one_or_none() is not None
    )


def _outcome(current: JobStatus, target: JobStatus) -> EventOutcome:
    if current == target or (current is JobStatus.ARCHIVED and target is JobStatus.SUCCEEDED):
        return EventOutcome.DUPLICATE
    # Once the provider said `succeed` it has nothing newer to say: a later `failed` is stale.
    if current in _PROVIDER_DONE or not can_move(current, target):
        return EventOutcome.STALE
    return EventOutcome.APPLIED


# Built once: a statement object made per call costs more CPU than its round trip.
_JOBS, _IMAGES = cast(Table, Job.__table__), cast(Table, Image.__table__)
# What a decision (`_plan`) reads of a job. `apply_callback` re-checks the columns that can change
# (`_GUARDED`) in its write statement; webhook_url is set once, at creation. Images are read too,
# for a job that succeeded without them: `apply_callback` leaves that case to the row lock.
_GUARDED = ("status", "provider_task_id", "submitted_at")
_READ_JOB = select(_JOBS.c.id, _JOBS.c.webhook_url, *(_JOBS.c[name] for name in _GUARDED)).where(
    _JOBS.c.id == bindparam("job_id")
)
# FOR UPDATE serialises concurrent appliers on PostgreSQL; SQLite serialises writers anyway (our
# engines BEGIN IMMEDIATE) and SQLAlchemy renders no FOR UPDATE there.
_LOCK_JOB = _READ_JOB.with_for_update()
# Images are never deleted: once a job has some, no report fills them in, and no lock is needed
# to know it.
_READ_CALLBACK_JOB = _READ_JOB.add_columns(
    select(_IMAGES.c.id).where(_IMAGES.c.job_id == _JOBS.c.id).exists().label("has_images")
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


def _report_images(task: Task) -> list[tuple[int, str]]:
    """The report's images as (index, url); an index repeated in a report counts once."""
    seen: dict[int, str] = {}
    for image in (*task.images, *task.series_images):
        seen.setdefault(image.index, image.url)
    return list(seen.items())


@dataclass
class _Plan:
    """Every write a provider report calls for, decided from the job's row before any is made."""

    outcome: EventOutcome
    current: JobStatus
    changes: dict[str, Any]  # job columns
    moved: dict[str, Any] | None  # the transition row
    images: list[tuple[int, str]]  # for a job that has none yet
    image_created: datetime
    queued: list[str]  # outbox tasks, each with the job id as its argument

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.changes.get("status", self.current))


def _plan(job: Any, task: Task, source: str) -> _Plan:
    """Check the task is the job's (`TaskMismatch`), then decide the writes."""
    _check_task(job.id, job.provider_task_id, task)
    current = JobStatus(job.status)
    target = PROVIDER_TO_JOB[task.status]
    outcome = _outcome(current, target)
    now = utcnow()
    plan = _Plan(outcome, current, {}, None, [], task.created_at or now, [])
    if job.provider_task_id is None:
        plan.changes["provider_task_id"] = task.task_id
    if outcome is EventOutcome.APPLIED:
        detail: dict[str, Any] = {"provider_status": task.status.value}
        if task.status_message:
            detail["message"] = task.status_message
        plan.moved = {
            "from_status": job.status,
            "to_status": target.value,
            "source": source,
            "at": now,
            "detail": detail,
        }
        plan.changes |= _move_changes(
            submitted_at=job.submitted_at,
            target=target,
            now=now,
            error_code=PROVIDER_FAILED,
            error_message=task.status_message or "the provider reported the task failed",
        )
        if target.is_terminal and job.webhook_url:
            plan.queued.append(NOTIFY)
        if target is JobStatus.SUCCEEDED:
            plan.images = _report_images(task)
            plan.queued.append(ARCHIVE_JOB)
        if task.status.is_final:
            plan.queued.append(RELEASE_SLOTS)
    elif target is JobStatus.SUCCEEDED and current is JobStatus.SUCCEEDED:
        # A first `succeed` may have come without images (a bare callback): the first report that
        # carries them sets them, once.
        plan.images = _report_images(task)
    if outcome is not EventOutcome.STALE:
        plan.changes["last_provider_update_at"] = now
    if source == TransitionSource.POLL:
        plan.changes["last_polled_at"] = now
    return plan


def _describe(event: CallbackEvent, job_id: str, task: Task, outcome: EventOutcome) -> None:
    event.job_id = job_id
    event.task_status = task.status.value
    event.outcome = outcome.value


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

    `db` is a Session (pollers) or a Connection in a transaction. Written with Core statements:
    the ORM's unit of work cost several times the SQL. A `Job` the session holds is expired.
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
    plan = _plan(job, task, source)
    if event is not None:
        _describe(event, job.id, task, plan.outcome)
        if not _store_event(conn, event):
            return ApplyResult(EventOutcome.DUPLICATE, plan.current, plan.current)
    if plan.moved is not None:
        conn.execute(_INSERT_TRANSITION, {"job_id": job.id, **plan.moved})
    if plan.images and (
        plan.moved is not None or conn.execute(_IMAGE_INDEXES, {"job_id": job.id}).first() is None
    ):
        rows = [
            {"job_id": job.id, "index": index, "source_url": url, "provider_created_at": plan.image_created}
            for index, url in plan.images
        ]
        conn.execute(_INSERT_IMAGES, rows)
    if plan.changes:
        conn.execute(_UPDATE_JOB.values(plan.changes), {"job_id": job.id})
    outbox = enqueue_rows(conn, [(name, [job.id]) for name in plan.queued])
    if isinstance(db, Session) and outbox:
        db.info[CORE_ROWS_WRITTEN] = True
    if isinstance(db, Session) and (loaded := db.identity_map.get(identity_key(Job, job.id))) is not None:
        db.expire(loaded)
    return ApplyResult(plan.outcome, plan.job_status, plan.current, tuple(outbox))


def apply_callback(conn: Connection, job_id: str, task: Task, *, event: CallbackEvent) -> ApplyResult | None:
    """`apply_provider_task` for a callback on PostgreSQL in two statements, no transaction.

    Reads the job without a lock, decides, then makes every write in one statement (see
    `_callback_writes`) that locks the job row and re-checks the columns the decision read. On a
    connection in autocommit mode each statement is its own transaction: three round trips with
    the pool's ping, where reading under the lock in a transaction takes five (BEGIN and COMMIT
    are round trips too). Raises `JobNotFound` or `TaskMismatch` (nothing written); a stored
    dedupe key answers `duplicate`.

    Returns None, having written nothing, when the job changed between the read and the write,
    or when the report may fill in the images of a job that succeeded without them (that they are
    still missing is only certain under a lock held across statements): the caller then applies
    it with `apply_provider_task` in a transaction, which always makes progress.
    """
    job = conn.execute(_READ_CALLBACK_JOB, {"job_id": job_id}).one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    plan = _plan(job, task, TransitionSource.CALLBACK.value)
    if plan.images and plan.moved is None:
        if not job.has_images:
            return None
        plan.images = []  # a repeated `succeed`: the images came with the first
    _describe(event, job.id, task, plan.outcome)
    params: dict[str, Any] = {
        "job_id": job.id,
        **{f"seen_{name}": getattr(job, name) for name in _GUARDED},
        **{f"ev_{name}": value for name, value in _event_values(event).items()},
        **{f"set_{name}": value for name, value in plan.changes.items()},
    }
    if plan.moved is not None:
        params |= {f"tr_{name}": value for name, value in plan.moved.items()}
    if plan.images:
        params |= {
            "image_indexes": [index for index, _ in plan.images],
            "image_urls": [url for _, url in plan.images],
            "image_created": plan.image_created,
        }
    if plan.queued:
        params["tasks"] = plan.queued
    shape = (tuple(plan.changes), plan.moved is not None, bool(plan.images), bool(plan.queued))
    rows = conn.execute(_callback_writes(*shape), params).all()
    if not rows[0].unchanged:
        return None
    if rows[0].event_id is None:
        return ApplyResult(EventOutcome.DUPLICATE, plan.current, plan.current)
    outbox = sorted(
        (OutboxEntry(row.outbox_id, row.task, [job.id]) for row in rows if row.outbox_id is not None),
        key=lambda entry: entry.id,
    )
    return ApplyResult(plan.outcome, plan.job_status, plan.current, tuple(outbox))


_EVENTS, _TRANSITIONS = cast(Table, CallbackEvent.__table__), cast(Table, Transition.__table__)
_OUTBOX = cast(Table, Outbox.__table__)


@cache
def _callback_writes(
    change_columns: tuple[str, ...], transition: bool, images: bool, outbox: bool
) -> Select[Any]:
    """A callback's writes as one PostgreSQL statement of data-modifying CTEs.

    `j` locks the job row if the columns the decision read are unchanged (a row a concurrent
    writer held is re-checked in its new version once that writer commits); the event INSERT
    reads `j`, and every other write reads the event's `ev` (INSERT ... ON CONFLICT DO NOTHING).
    So a changed job or a redelivered event (no row) writes nothing, and the statement commits
    whole or not at all. Rows back: one per outbox row written (`outbox_id`, `task`), or one
    without; each carries `unchanged` (j found the job as read) and `event_id` (None for a
    redelivery). Built once per shape: which columns change, which rows are written.
    """
    job_id = bindparam("job_id", type_=_JOBS.c.id.type)

    def param(prefix: str, table: Table, name: str) -> Any:
        return bindparam(f"{prefix}_{name}", type_=table.c[name].type)

    j = (
        select(_JOBS.c.id)
        .where(
            _JOBS.c.id == job_id,
            *(_JOBS.c[name].is_not_distinct_from(param("seen", _JOBS, name)) for name in _GUARDED),
        )
        .with_for_update()
        .cte("j")
    )
    event = select(*(param("ev", _EVENTS, name) for name in _EVENT_COLUMNS)).select_from(j)
    ev = (
        postgresql.insert(_EVENTS)
        .from_select(list(_EVENT_COLUMNS), event)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(_EVENTS.c.id)
        .cte("ev")
    )
    writes = []
    if transition:
        names = ("from_status", "to_status", "source", "at", "detail")
        row = select(job_id, *(param("tr", _TRANSITIONS, name) for name in names)).select_from(ev)
        writes.append(insert(_TRANSITIONS).from_select(["job_id", *names], row).cte("tr"))
    if images:
        report = (
            func.unnest(
                bindparam("image_indexes", type_=ARRAY(Integer)), bindparam("image_urls", type_=ARRAY(Text))
            )
            .table_valued("index", "url")
            .render_derived(name="report")
        )
        created = bindparam("image_created", type_=_IMAGES.c.provider_created_at.type)
        rows = select(job_id, report.c.index, report.c.url, created).select_from(ev).join(report, true())
        writes.append(
            insert(_IMAGES)
            .from_select(["job_id", "index", "source_url", "provider_created_at"], rows)
            .cte("im")
        )
    if change_columns:
        writes.append(
            update(_JOBS)
            .where(_JOBS.c.id == job_id, select(ev.c.id).exists())
            .values({name: param("set", _JOBS, name) for name in change_columns})
            .cte("up")
        )
    one = select(true().label("one")).subquery("one")
    unchanged = select(j.c.id).exists().label("unchanged")
    if not outbox:
        found = select(unchanged, ev.c.id.label("event_id"), null().label("outbox_id"), null().label("task"))
        return found.select_from(one.outerjoin(ev, true())).add_cte(*writes)
    tasks = (
        func.unnest(bindparam("tasks", type_=ARRAY(String)))
        .table_valued("task", with_ordinality="n")
        .render_derived(name="queued")
    )
    queued = (
        select(tasks.c.task, func.jsonb_build_array(job_id))
        .select_from(ev)
        .join(tasks, true())
        .order_by(tasks.c.n)
    )
    ob = (
        insert(_OUTBOX)
        .from_select(["task", "args"], queued)
        .returning(_OUTBOX.c.id, _OUTBOX.c.task)
        .cte("ob")
    )
    found = select(unchanged, ev.c.id.label("event_id"), ob.c.id.label("outbox_id"), ob.c.task)
    return found.select_from(one.outerjoin(ev, true()).outerjoin(ob, true())).add_cte(*writes)
