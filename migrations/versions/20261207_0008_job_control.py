"""Job control: final states `cancelled` and `expired`, jobs.cancel_requested_at, jobs.deadline_at
(with a partial index for the expiry sweep) and jobs.retry_of (the failed job a retry replaces).

Revision ID: 0008_job_control
Revises: 0007_task_kinds
Create Date: 2026-12-07 02:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_job_control"
down_revision: str | Sequence[str] | None = "0007_task_kinds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('queued', 'submitted', 'processing', 'succeeded', 'archived', 'failed')"
NEW = (
    "status IN ('queued', 'submitted', 'processing', 'succeeded', 'archived', 'failed', "
    "'cancelled', 'expired')"
)
QUEUED_WITH_DEADLINE = sa.text("status = 'queued' AND deadline_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_status"), NEW)
        batch.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("retry_of", sa.String(length=36), nullable=True))
        batch.create_foreign_key(
            op.f("fk_jobs_retry_of_jobs"), "jobs", ["retry_of"], ["id"], ondelete="SET NULL"
        )
    op.create_index(
        "ix_jobs_queued_deadline",
        "jobs",
        ["deadline_at"],
        postgresql_where=QUEUED_WITH_DEADLINE,
        sqlite_where=QUEUED_WITH_DEADLINE,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_deadline", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("fk_jobs_retry_of_jobs"), type_="foreignkey")
        batch.drop_column("retry_of")
        batch.drop_column("deadline_at")
        batch.drop_column("cancel_requested_at")
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_status"), OLD)
