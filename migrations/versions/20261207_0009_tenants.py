"""Tenants: the tenants table (hashed API keys, max slots, daily units, weight) with its `default`
row, jobs.tenant (every existing job belongs to `default`), an Idempotency-Key unique per tenant,
and the indexes of a tenant's list and of its queue head.

Revision ID: 0009_tenants
Revises: 0008_job_control
Create Date: 2026-12-07 05:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_tenants"
down_revision: str | Sequence[str] | None = "0008_job_control"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("status = 'queued'")
NOT_DEFAULT = sa.text("tenant <> 'default'")


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_sha256", sa.String(length=64), nullable=True),
        sa.Column("key_hint", sa.String(length=16), nullable=True),
        sa.Column("max_slots", sa.Integer(), nullable=True),
        sa.Column("daily_units", sa.Float(), nullable=True),
        sa.Column("weight", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("weight >= 1", name=op.f("ck_tenants_weight")),
        sa.CheckConstraint("max_slots IS NULL OR max_slots >= 1", name=op.f("ck_tenants_max_slots")),
        sa.CheckConstraint("daily_units IS NULL OR daily_units > 0", name=op.f("ck_tenants_daily_units")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tenants")),
        sa.UniqueConstraint("key_sha256", name=op.f("uq_tenants_key_sha256")),
    )
    op.bulk_insert(tenants, [{"name": "default"}])
    # A constant default: PostgreSQL adds the column without rewriting the table.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tenant", sa.String(length=64), server_default="default", nullable=False))
        batch.create_foreign_key(
            op.f("fk_jobs_tenant_tenants"), "tenants", ["tenant"], ["name"], ondelete="RESTRICT"
        )
        batch.drop_constraint(op.f("uq_jobs_idempotency_key"), type_="unique")
        batch.create_unique_constraint(op.f("uq_jobs_tenant_idempotency_key"), ["tenant", "idempotency_key"])
    # Partial: the `default` tenant's rows (every job of a deployment without tenants) would cost
    # an index entry on each non-HOT update of a job; its list walks (created_at, id) instead.
    op.create_index(
        "ix_jobs_tenant_created_at_id",
        "jobs",
        ["tenant", "created_at", "id"],
        postgresql_where=NOT_DEFAULT,
        sqlite_where=NOT_DEFAULT,
    )
    op.create_index(
        "ix_jobs_tenant_queue",
        "jobs",
        ["tenant", "queue_at", "id"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_queue", table_name="jobs")
    op.drop_index("ix_jobs_tenant_created_at_id", table_name="jobs")
    # Keys were unique per tenant only: the first job of a key keeps it, the others lose it.
    op.execute(
        "UPDATE jobs SET idempotency_key = NULL WHERE id IN (SELECT id FROM (SELECT id, row_number() "
        "OVER (PARTITION BY idempotency_key ORDER BY created_at, id) AS nth FROM jobs "
        "WHERE idempotency_key IS NOT NULL) AS keyed WHERE nth > 1)"
    )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("uq_jobs_tenant_idempotency_key"), type_="unique")
        batch.create_unique_constraint(op.f("uq_jobs_idempotency_key"), ["idempotency_key"])
        batch.drop_constraint(op.f("fk_jobs_tenant_tenants"), type_="foreignkey")
        batch.drop_column("tenant")
    op.drop_table("tenants")
