"""Callback events may be stored as `unconfirmed`: an unsigned final report waiting for a
provider lookup (webhook/callbacks.py).

Revision ID: 0005_unconfirmed
Revises: 0004
Create Date: 2026-12-06 23:20:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_unconfirmed"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "outcome IN ('applied', 'duplicate', 'stale', 'rejected')"
_NEW = "outcome IN ('applied', 'duplicate', 'stale', 'rejected', 'unconfirmed')"


def _check(condition: str) -> None:
    with op.batch_alter_table("callback_events") as batch:
        batch.drop_constraint(op.f("ck_callback_events_outcome"), type_="check")
        batch.create_check_constraint("outcome", condition)


def upgrade() -> None:
    _check(_NEW)


def downgrade() -> None:
    op.execute("UPDATE callback_events SET outcome = 'stale' WHERE outcome = 'unconfirmed'")
    _check(_OLD)
