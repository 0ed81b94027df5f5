"""The tables. Alembic migrations are written to match these exactly (`alembic check` enforces it)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    func,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

from models.base import Base, JSONType, UTCDateTime
from models.enums import EventOutcome, ImageStatus, JobStatus, TransitionSource, sql_in

DEFAULT_TENANT = "default"

# Row ids are 64-bit on PostgreSQL: int4 stops at 2^31 rows, about two years of callbacks and
# outbox rows at a million jobs a day. On SQLite only an INTEGER PRIMARY KEY is the (already
# 64-bit) rowid and autoincrements; a BIGINT one would not.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def new_job_id() -> str:
    return str(uuid.uuid4())


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(sql_in("status", JobStatus), name="status"),
        # Reconciler ("silent jobs in status X") and the API's status filter.
        Index(None, "status", "updated_at"),
        # API list ordered by a (created_at, id) cursor.
        Index(None, "created_at", "id"),
        # API list filtered by status, newest first, keyset on (created_at, id).
        Index(None, "status", "created_at", "id"),
        CheckConstraint("priority IN ('high', 'normal', 'low')", name="priority"),
        # The pump's queue order: queued jobs by their place (partial: only queued rows).
        Index(
            "ix_jobs_queue",
            "queue_at",
            "id",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        # A tenant's jobs, newest first (a tenant key's list). Partial: without the `default`
        # tenant's rows, a deployment without tenants pays for no index entry on each of a job's
        # updates (`of_tenant` lets the planner use it).
        Index(
            "ix_jobs_tenant_created_at_id",
            "tenant",
            "created_at",
            "id",
            postgresql_where=text(f"tenant <> '{DEFAULT_TENANT}'"),
            sqlite_where=text(f"tenant <> '{DEFAULT_TENANT}'"),
        ),
        # The pump's per-tenant queue heads (fair share between tenants, worker/tenancy.py).
        Index(
            "ix_jobs_tenant_queue",
            "tenant",
            "queue_at",
            "id",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        # An Idempotency-Key is the tenant's own: another tenant's same key is another job.
        UniqueConstraint("tenant", "idempotency_key"),
        # The expiry sweep: queued jobs with a deadline, soonest first (few rows: partial).
        Index(
            "ix_jobs_queued_deadline",
            "deadline_at",
            postgresql_where=text("status = 'queued' AND deadline_at IS NOT NULL"),
            sqlite_where=text("status = 'queued' AND deadline_at IS NOT NULL"),
        ),
    )
    __mapper_args__ = {"eager_defaults": True}

    # Also sent to the provider as external_task_id.
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    provider: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # A plain UNIQUE already allows many NULLs on both PostgreSQL and SQLite.
    provider_task_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16), server_default=JobStatus.QUEUED.value)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # `metadata` is reserved on declarative classes.
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    slots: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_provider_update_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # How long the provider task ran by the provider's own clock (its updated_at - created_at at
    # the final state): the samples expected-duration polling learns from (worker/polling.py).
    provider_seconds: Mapped[float | None] = mapped_column(Float)
    # One worker run owns a job's current step (submit or archive) until `claimed_until`; duplicate
    # messages and re-dispatches find it owned and stop, so provider calls never overlap.
    claim_token: Mapped[str | None] = mapped_column(String(36))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Creates sent to the provider: after the first, the task may exist, so look it up first.
    create_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # The provider account the job was (or is being) created on; every later call goes there.
    account: Mapped[str | None] = mapped_column(String(64))
    # The provider's final_unit_deduction for the task.
    units: Mapped[float | None] = mapped_column(Float)
    # The task kind (kling/kinds.py): what is created at the provider and what it yields.
    kind: Mapped[str] = mapped_column(String(32), server_default="image")
    # Job control: a cancel asked for once a create may have gone out (the task still runs and is
    # archived: it was paid for), the time a still-queued job expires, the job this one retries.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retry_of: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # models/priorities.py: the priority, and the job's place in the queue (arrival moved by it).
    priority: Mapped[str] = mapped_column(String(8), server_default="normal")
    queue_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Downstream events the webhook_url hears (models/events.py); NULL: how the job ended.
    webhook_events: Mapped[list[str] | None] = mapped_column(JSONType)
    # Who the job is for (models/tenants.py): what a tenant key sees, and its share of the slots.
    tenant: Mapped[str] = mapped_column(
        ForeignKey("tenants.name", ondelete="RESTRICT"), server_default=DEFAULT_TENANT
    )

    images: Mapped[list[Image]] = relationship(
        back_populates="job", order_by="Image.index", cascade="all, delete-orphan", passive_deletes=True
    )
    transitions: Mapped[list[Transition]] = relationship(
        back_populates="job", order_by="Transition.id", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def external_task_id(self) -> str:
        return self.id

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)


def of_tenant(tenant: str) -> ColumnElement[bool]:
    """Jobs of `tenant`, said so the planner may use `ix_jobs_tenant_created_at_id` (partial: no
    `default` rows) whatever the parameter's value; the `default` tenant's list walks
    `(created_at, id)` instead."""
    if tenant == DEFAULT_TENANT:
        return Job.tenant == DEFAULT_TENANT
    return and_(Job.tenant == tenant, Job.tenant != literal_column(f"'{DEFAULT_TENANT}'"))


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("job_id", "index"),
        CheckConstraint(sql_in("status", ImageStatus), name="status"),
        # The retention sweep: pending images by age.
        Index(None, "status", "provider_created_at"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    # An output of the job: `image` or `video` (the table holds both; see migration 0007).
    type: Mapped[str] = mapped_column(String(8), server_default="image")
    duration: Mapped[float | None] = mapped_column(Float)  # seconds, videos only
    source_url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), server_default=ImageStatus.PENDING.value)
    s3_bucket: Mapped[str | None] = mapped_column(String(255))
    s3_key: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    content_type: Mapped[str | None] = mapped_column(String(255))
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Starts the provider's 30-day deletion clock.
    provider_created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())

    job: Mapped[Job] = relationship(back_populates="images")


class Transition(Base):
    __tablename__ = "transitions"
    __table_args__ = (
        # One row per (job, to-status) is what makes repeated deliveries harmless.
        UniqueConstraint("job_id", "to_status"),
        CheckConstraint(sql_in("source", TransitionSource), name="source"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    job: Mapped[Job] = relationship(back_populates="transitions")


class CallbackEvent(Base):
    """Every callback that passed authentication, stored raw whether or not it changed anything."""

    __tablename__ = "callback_events"
    __table_args__ = (
        CheckConstraint(sql_in("outcome", EventOutcome), name="outcome"),
        # Pruning by age (CALLBACK_EVENTS_KEEP_DAYS).
        Index(None, "received_at"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    # `webhook-id` header, or the SHA-256 of the body when the sender gives none.
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    task_status: Mapped[str | None] = mapped_column(String(16))
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    outcome: Mapped[str] = mapped_column(String(16))


class Outbox(Base):
    """Transactional outbox: tasks written with the state change, published after commit."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_undispatched",
            "available_at",
            postgresql_where=text("dispatched_at IS NULL"),
            sqlite_where=text("dispatched_at IS NULL"),
        ),
        # Pruning published rows by age (OUTBOX_KEEP_DAYS).
        Index(
            "ix_outbox_dispatched",
            "dispatched_at",
            postgresql_where=text("dispatched_at IS NOT NULL"),
            sqlite_where=text("dispatched_at IS NOT NULL"),
        ),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task: Mapped[str] = mapped_column(String(64))
    args: Mapped[list[Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    available_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class Notification(Base):
    """Downstream webhook deliveries (`webhook_url`), one row per (job, event)."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("job_id", "event"),)
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class DeliveryAttempt(Base):
    """One POST of a downstream event: when, the answer (HTTP status or a failure word), how long."""

    __tablename__ = "delivery_attempts"
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(32))
    latency_ms: Mapped[float | None] = mapped_column(Float)


class WebhookEndpoint(Base):
    """A downstream URL's health: failing since when (NULL: its last delivery went through), and
    when it was disabled for failing too long (models/events.py DISABLE_AFTER_SECONDS)."""

    __tablename__ = "webhook_endpoints"

    url_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DisabledAccount(Base):
    """Accounts the operator disabled (`klingctl accounts disable NAME`): durable, unlike pauses."""

    __tablename__ = "disabled_accounts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    disabled_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class Tenant(Base):
    """Who jobs are for (`klingctl tenants create`): an API key stored as its SHA-256, the slots and
    daily units it may use, and its weight in the fair share of slots (models/tenants.py). The
    `default` tenant has no key: jobs the operator's `API_TOKEN` creates belong to it."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("weight >= 1", name="weight"),
        CheckConstraint("max_slots IS NULL OR max_slots >= 1", name="max_slots"),
        CheckConstraint("daily_units IS NULL OR daily_units > 0", name="daily_units"),
    )

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    # The key's first characters, to tell keys apart in lists (the key itself is never stored).
    key_hint: Mapped[str | None] = mapped_column(String(16))
    max_slots: Mapped[int | None] = mapped_column(Integer)
    daily_units: Mapped[float | None] = mapped_column(Float)
    weight: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
