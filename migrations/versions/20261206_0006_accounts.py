"""Accounts: the account a job runs on (jobs.account), the units its task deducted (jobs.units),
and the accounts an operator disabled (disabled_accounts).

Revision ID: 0006_accounts
Revises: 0005_unconfirmed
Create Date: 2026-12-06 23:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_accounts"
down_revision: str | Sequence[str] | None = "0005_unconfirmed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns without defaults: no table rewrite on PostgreSQL.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("account", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("units", sa.Float(), nullable=True))
    op.create_table(
        "disabled_accounts",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_disabled_accounts")),
    )


def downgrade() -> None:
    op.drop_table("disabled_accounts")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("units")
        batch.drop_column("account")
