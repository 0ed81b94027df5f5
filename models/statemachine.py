"""The SQL writers of the job state machine: each reads a job, asks `models.rules` for a `Plan`,
and executes it. Nothing here decides a move.

Every writer returns the outbox rows it wrote; in a Session they are also kept for the
after-commit hook (`models.outbox.enqueue_rows`), which publishes exactly those. Every function
works inside the caller's transaction and the caller commits, except `apply_callback`: one
statement makes all its writes, so it needs no transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Select,
    Table,
    bindparam,
    func,
    insert,
    inspect,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from kling.kinds import DEFAULT_KIND, kind_for
from kling.types import Task
from models import callback_statement
from models.base import utcnow
from models.callback_statement import EVENT_COLUMNS, GUARDED, JOBS
from models.enums import EventOutcome, JobStatus, TransitionSource
from models.outbox import SUBMIT_JOB, OutboxEntry, enqueue_rows
from models.priorities import queue_ahead
from models.rules import (
    PROVIDER_FAILED,
    PROVIDER_TO_JOB,
    JobState,
    Plan,
    TaskMismatch,
    can_move,
    decide,
    decide_move,
    decide_unconfirmed,
    needs_confirmation,
)
from models.tables import DEFAULT_TENANT, CallbackEvent, Image, Job, Transition, new_job_id

__all__ = [
    "PROVIDER_FAILED",
    "PROVIDER_TO_JOB",
    "ApplyResult",
    "Created",
    "JobNotFound",
    "TaskMismatch",
    "apply_callback",
    "apply_provider_task",
    "can_move",
    "create_job",
    "transition",
]


class JobNotFound(LookupError):
    """No job with that id."""


@dataclass(frozen=True)
class ApplyResult:
    outcome: EventOutcome
    job_status: JobStatus
    from_status: JobStatus
    # Outbox rows written with this change: after its commit exactly these are published.
    outbox: tuple[OutboxEntry, ...] = ()

    @property
    def changed(self) -> bool:
        return self.outcome is EventOutcome.APPLIED


@dataclass(frozen=True)
class Created:
    job: Job
    # False when an Idempotency-Key returned an existing job.
    created: bool = False
    # Its first submit; empty for an existing job, and for one deep in the queue (`QUEUE_DEPTH_FOR_PUMP`).
    outbox: tuple[OutboxEntry, ...] = ()


# With `defer_when_deep`, a new job of one slot with this many queued jobs of its tenant ahead of
# it gets no first submit: that run could only join the wait queue (20,000 of them in a backlog, a
# third of the worker's work). The pump dispatches it in queue order, at a slot's release or within
# RECONCILE_INTERVAL_SECONDS. docs/architecture.md ("Message priorities") says when that is safe.
QUEUE_DEPTH_FOR_PUMP = 200


def queued_ahead(tenant: str, queue_at: datetime, most: int) -> Select[int]:
    """How many queued jobs of `tenant` are ahead of `queue_at`, counting at most `most`: a
    bounded walk of `ix_jobs_tenant_queue` (the status is a literal, so even a generic plan uses it)."""
    ahead = (
        select(Job.id)
        .where(Job.status == literal_column("'queued'"), Job.tenant == tenant, Job.queue_at < queue_at)
        # The index's own order: a walk that stops at `most` (not a bitmap of every queued row, nor
        # a walk of `ix_jobs_queue` past the other tenants' jobs).
        .order_by(Job.tenant, Job.queue_at)
        .limit(most)
        .subquery()
    )
    return select(func.count()).select_from(ahead)


def create_job(
    session: Session,
    params: Mapping[str, Any],
    *,
    provider: str,
    kind: str = DEFAULT_KIND,
    webhook_url: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    deadline_at: datetime | None = None,
    retry_of: str | None = None,
    webhook_events: list[str] | None = None,
    priority: str = "normal",
    tenant: str = DEFAULT_TENANT,
    defer_when_deep: bool = False,
) -> Created:
    """Insert a queued job of task `kind` (`kling.kinds`), its first transition and the outbox row
    that submits it; the job holds the kind's slot weight for its params.

    With an `idempotency_key` already used (even by a concurrent request), return that job.
    `deadline_at`: still queued then, it expires; `retry_of`: the job this one retries. An
    Idempotency-Key is the `tenant`'s own: another tenant's same key makes another job.
    `defer_when_deep` (the API, with one account): no first submit for a one-slot job, not of
    `high` priority, with QUEUE_DEPTH_FOR_PUMP queued jobs of its tenant ahead of it; the pump
    sends it.
    """
    same_key = (Job.tenant == tenant, Job.idempotency_key == idempotency_key)
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(*same_key))
        if existing is not None:
            return Created(existing)
    job = Job(
        id=new_job_id(),
        provider=provider,
        params=dict(params),
        status=JobStatus.QUEUED.value,
        webhook_url=webhook_url,
        meta=dict(metadata) if metadata is not None else None,
        idempotency_key=idempotency_key,
        kind=kind,
        slots=kind_for(kind).slots(params),
        deadline_at=deadline_at,
        retry_of=retry_of,
        priority=priority,
        tenant=tenant,
        # Its place in the queue (the pump's order, the limiter's tickets): arrival moved by priority.
        queue_at=utcnow() - timedelta(seconds=queue_ahead(priority)),
    )
    if webhook_events is not None:  # else SQL NULL (the default set), not a JSON null
        job.webhook_events = list(webhook_events)
    if idempotency_key is None:
        session.add(job)  # nothing to recover from a failed insert: no savepoint (two round trips)
        session.flush()
    else:
        try:
            with session.begin_nested():
                session.add(job)
                session.flush()
        except IntegrityError:
            existing = session.scalar(select(Job).where(*same_key))
            if existing is None:
                raise
            return Created(existing)
    session.add(Transition(job_id=job.id, from_status=None, to_status=JobStatus.QUEUED.value, source="api"))
    depth = QUEUE_DEPTH_FOR_PUMP
    assert job.queue_at is not None
    if (
        defer_when_deep
        and job.slots == 1
        and priority != "high"  # its place in the wait queue puts it before the waiters the pump serves first
        and (session.scalar(queued_ahead(tenant, job.queue_at, depth)) or 0) >= depth
    ):
        return Created(job, created=True)
    return Created(job, created=True, outbox=tuple(enqueue_rows(session, [(SUBMIT_JOB, [job.id])])))


# Built once: a statement object made per call costs more CPU than its round trip.
_IMAGES = cast(Table, Image.__table__)
_JOB_ATTRIBUTES = {column.name: attr.key for attr in inspect(Job).column_attrs for column in attr.columns}
_READ_JOB = select(
    JOBS.c.id,
    JOBS.c.webhook_url,
    JOBS.c.webhook_events,
    *(JOBS.c[name] for name in GUARDED),
    # Images are never deleted: whether a job has some is known without a lock.
    select(_IMAGES.c.id).where(_IMAGES.c.job_id == JOBS.c.id).exists().label("has_images"),
).where(JOBS.c.id == bindparam("job_id"))
# FOR UPDATE serialises concurrent appliers on PostgreSQL; SQLite serialises writers anyway (our
# engines BEGIN IMMEDIATE) and SQLAlchemy renders no FOR UPDATE there.
_LOCK_JOB = _READ_JOB.with_for_update(of=JOBS)
_UPDATE_JOB = update(JOBS).where(JOBS.c.id == bindparam("job_id"))
_INSERT_TRANSITION = insert(cast(Table, Transition.__table__))
# A report's images once per (job, index): under READ COMMITTED the lock wait re-reads the job row
# but not `has_images` (its subquery keeps the statement's first snapshot), so two deliveries of a
# bare-then-full `succeed` could both decide to fill the images in; the second writes nothing.
_INSERT_IMAGES = {
    name: dialect.insert(_IMAGES).on_conflict_do_nothing(index_elements=["job_id", "index"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_INSERT_EVENT = {
    name: dialect.insert(cast(Table, CallbackEvent.__table__))
    .on_conflict_do_nothing(index_elements=["dedupe_key"])
    .returning(CallbackEvent.__table__.c.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def _state(row: Any) -> JobState:
    return JobState(
        id=row.id,
        status=JobStatus(row.status),
        provider_task_id=row.provider_task_id,
        submitted_at=row.submitted_at,
        webhook_url=row.webhook_url,
        has_images=bool(row.has_images),
        webhook_events=tuple(row.webhook_events) if row.webhook_events is not None else None,
    )


def _locked_state(conn: Connection, job_id: str) -> JobState:
    row = conn.execute(_LOCK_JOB, {"job_id": job_id}).one_or_none()
    if row is None:
        raise JobNotFound(job_id)
    return _state(row)


def _connection(db: Session | Connection) -> Connection:
    if isinstance(db, Session):
        db.flush()  # what the session changed before goes first
        return db.connection()
    return db


def _execute(db: Session | Connection, conn: Connection, job_id: str, plan: Plan) -> tuple[OutboxEntry, ...]:
    """Make a plan's writes on a connection in a transaction that holds the job's row lock."""
    if plan.transition is not None:
        conn.execute(_INSERT_TRANSITION, {"job_id": job_id, **plan.transition})
    if plan.images:
        rows = [
            {
                "job_id": job_id,
                "index": out.index,
                "source_url": out.url,
                "type": out.type,
                "duration": out.duration,
                "provider_created_at": plan.image_created,
            }
            for out in plan.images
        ]
        conn.execute(_INSERT_IMAGES[conn.dialect.name], rows)
    if plan.changes:
        conn.execute(_UPDATE_JOB.values(dict(plan.changes)), {"job_id": job_id})
    outbox = enqueue_rows(db, [(name, [job_id]) for name in plan.queued])
    if isinstance(db, Session) and (loaded := db.identity_map.get(identity_key(Job, job_id))) is not None:
        _refresh_loaded(db, loaded, plan)
    return tuple(outbox)


def _refresh_loaded(session: Session, job: Job, plan: Plan) -> None:
    """The Core writes changed the row under the session's `Job`: give it the new values as
    loaded ones (no reload, nothing to flush), and drop the child lists it holds."""
    for name, value in plan.changes.items():
        set_committed_value(job, _JOB_ATTRIBUTES[name], value)
    stale = [name for name in ("transitions", "images") if name in inspect(job).dict]
    if stale and plan.moved:
        session.expire(job, stale)


def _event_values(event: CallbackEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in EVENT_COLUMNS}


def _describe(event: CallbackEvent, job_id: str, task: Task, outcome: EventOutcome) -> None:
    event.job_id = job_id
    event.task_status = task.status.value
    event.outcome = outcome.value


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
) -> ApplyResult:
    """A move made by our own code (submit, archive, failure); `.changed` is False when the move
    is not allowed now. `provider_task_id` records the provider's task (queued -> submitted)."""
    conn = _connection(session)
    state = _locked_state(conn, job.id)
    plan = decide_move(
        state,
        to_status,
        source=source,
        now=utcnow(),
        detail=detail,
        error_code=error_code,
        error_message=error_message,
        provider_task_id=provider_task_id,
    )
    outbox = _execute(session, conn, job.id, plan)
    return ApplyResult(plan.outcome, plan.job_status, plan.current, outbox)


def apply_provider_task(
    db: Session | Connection,
    job_id: str,
    task: Task,
    *,
    source: str,
    event: CallbackEvent | None = None,
    now: datetime | None = None,
    trusted: bool = True,
) -> ApplyResult:
    """Apply a provider task state (from a callback or a poll) to a job, in the caller's transaction.

    Raises `JobNotFound` or `TaskMismatch` (nothing written). `event`, when given, is a new
    `CallbackEvent` (dedupe_key, headers, body set); it is stored with its outcome, unless its
    dedupe key was seen before, in which case the answer is `duplicate` and nothing is written.
    An untrusted report (an unsigned callback) that would end the provider task or set images is
    not applied: the answer is `unconfirmed` and a CONFIRM_JOB outbox row asks the provider.
    """
    TransitionSource(source)
    conn = _connection(db)
    state = _locked_state(conn, job_id)
    plan = decide(state, task, source, now or utcnow())
    if not trusted and needs_confirmation(plan, task):
        plan = decide_unconfirmed(state)
    if event is not None:
        _describe(event, state.id, task, plan.outcome)
        # One statement where a lookup and an insert would take two: the unique key decides, also
        # between two deliveries racing in parallel transactions.
        if conn.execute(_INSERT_EVENT[conn.dialect.name], _event_values(event)).scalar_one_or_none() is None:
            return ApplyResult(EventOutcome.DUPLICATE, plan.current, plan.current)
    outbox = _execute(db, conn, state.id, plan)
    return ApplyResult(plan.outcome, plan.job_status, plan.current, outbox)


def apply_callback(conn: Connection, job_id: str, task: Task, *, event: CallbackEvent) -> ApplyResult | None:
    """`apply_provider_task` for a callback on PostgreSQL in two statements, no transaction.

    Reads the job without a lock, decides, then makes every write in one statement
    (`models.callback_statement`) that locks the job row and re-checks the columns the decision
    read. Raises `JobNotFound` or `TaskMismatch` (nothing written); a stored dedupe key answers
    `duplicate`.

    Returns None, having written nothing, when the job changed between the read and the write, or
    when the report fills in the images of a job that succeeded without them (that they are still
    missing is only certain under a lock): the caller then applies it with `apply_provider_task`
    in a transaction, which always makes progress.
    """
    row = conn.execute(_READ_JOB, {"job_id": job_id}).one_or_none()
    if row is None:
        raise JobNotFound(job_id)
    state = _state(row)
    plan = decide(state, task, TransitionSource.CALLBACK.value, utcnow())
    if plan.images and not plan.moved:
        return None
    _describe(event, state.id, task, plan.outcome)
    values = callback_statement.parameters(state, plan, _event_values(event))
    rows = conn.execute(callback_statement.statement_for(plan), values).all()
    if not rows[0].unchanged:
        return None
    if rows[0].event_id is None:
        return ApplyResult(EventOutcome.DUPLICATE, plan.current, plan.current)
    outbox = sorted(
        (OutboxEntry(row.outbox_id, row.task, [state.id]) for row in rows if row.outbox_id is not None),
        key=lambda entry: entry.id,
    )
    return ApplyResult(plan.outcome, plan.job_status, plan.current, tuple(outbox))
