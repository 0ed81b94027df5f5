"""How long each provider task ran by the provider's clock (jobs.provider_seconds), which
expected-duration polling learns from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 20:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: no table rewrite on PostgreSQL.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("provider_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("provider_seconds")
