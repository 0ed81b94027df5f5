"""Job control: final states `cancelled` and `expired`, jobs.cancel_requested_at, jobs.deadline_at
(with a partial index for the expiry sweep), jobs.retry_of (the failed job a retry replaces);
event subscriptions: jobs.webhook_events, delivery_attempts, webhook_endpoints; priorities:
jobs.priority and jobs.queue_at (the queue order, set for the queued rows here) with its index.

Revision ID: 0008_job_control
Revises: 0007_task_kinds
Create Date: 2026-12-07 02:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_job_control"
down_revision: str | Sequence[str] | None = "0007_task_kinds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('queued', 'submitted', 'processing', 'succeeded', 'archived', 'failed')"
NEW = (
    "status IN ('queued', 'submitted', 'processing', 'succeeded', 'archived', 'failed', "
    "'cancelled', 'expired')"
)
# As models.base: 64-bit ids on PostgreSQL, JSONB there (JSON elsewhere).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
QUEUED_WITH_DEADLINE = sa.text("status = 'queued' AND deadline_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_status"), NEW)
        batch.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("retry_of", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("webhook_events", JSON, nullable=True))
        batch.add_column(sa.Column("priority", sa.String(length=8), server_default="normal", nullable=False))
        batch.add_column(sa.Column("queue_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_check_constraint(op.f("ck_jobs_priority"), "priority IN ('high', 'normal', 'low')")
        batch.create_foreign_key(
            op.f("fk_jobs_retry_of_jobs"), "jobs", ["retry_of"], ["id"], ondelete="SET NULL"
        )
    # Only queued rows are ever read in queue order: the others keep NULL (no table rewrite).
    op.execute("UPDATE jobs SET queue_at = created_at WHERE status = 'queued'")
    op.create_index(
        "ix_jobs_queue",
        "jobs",
        ["queue_at", "id"],
        postgresql_where=sa.text("status = 'queued'"),
        sqlite_where=sa.text("status = 'queued'"),
    )
    op.create_table(
        "delivery_attempts",
        sa.Column("id", ID, nullable=False),
        sa.Column("notification_id", ID, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=32), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_delivery_attempts_notification_id_notifications"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    op.create_index(
        op.f("ix_delivery_attempts_notification_id"), "delivery_attempts", ["notification_id"], unique=False
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("url_sha256", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("url_sha256", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(
        "ix_jobs_queued_deadline",
        "jobs",
        ["deadline_at"],
        postgresql_where=QUEUED_WITH_DEADLINE,
        sqlite_where=QUEUED_WITH_DEADLINE,
    )


def downgrade() -> None:
    # The older schema has no such states: they were never created at the provider, so `failed`.
    op.execute(
        "UPDATE jobs SET error_code = status, status = 'failed' WHERE status IN ('cancelled', 'expired')"
    )
    op.drop_index("ix_jobs_queued_deadline", table_name="jobs")
    op.drop_index("ix_jobs_queue", table_name="jobs")
    op.drop_table("webhook_endpoints")
    op.drop_index(op.f("ix_delivery_attempts_notification_id"), table_name="delivery_attempts")
    op.drop_table("delivery_attempts")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_priority"), type_="check")
        batch.drop_column("queue_at")
        batch.drop_column("priority")
        batch.drop_column("webhook_events")
        batch.drop_constraint(op.f("fk_jobs_retry_of_jobs"), type_="foreignkey")
        batch.drop_column("retry_of")
        batch.drop_column("deadline_at")
        batch.drop_column("cancel_requested_at")
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_status"), OLD)
