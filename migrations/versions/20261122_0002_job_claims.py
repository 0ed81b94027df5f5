"""Job claims (one worker run owns a job's submit or archive step), create attempts, and an index
for the API's status-filtered list.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:50:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claim_token", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("create_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
    op.create_index(
        op.f("ix_jobs_status_created_at_id"), "jobs", ["status", "created_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_status_created_at_id"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("create_attempts")
        batch.drop_column("claimed_until")
        batch.drop_column("claim_token")
