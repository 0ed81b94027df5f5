"""64-bit row ids on PostgreSQL, and the indexes that prune old outbox rows and callback events.

On PostgreSQL each `id` column and its sequence become bigint; this rewrites the five tables
under an exclusive lock (docs/operations.md). SQLite's INTEGER PRIMARY KEY is already a 64-bit
rowid, so there only the indexes are added.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 06:50:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID_TABLES = ("outbox", "callback_events", "images", "transitions", "notifications")


def _postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _sequence_as(table: str, type_name: str) -> None:
    # A serial's sequence is typed too (int4 caps it at 2^31 - 1); a DO block finds its name in
    # offline (--sql) mode as well.
    op.execute(
        f"DO $$ BEGIN EXECUTE 'ALTER SEQUENCE ' || pg_get_serial_sequence('{table}', 'id') "
        f"|| ' AS {type_name}'; END $$"
    )


def upgrade() -> None:
    if _postgresql():
        for table in ID_TABLES:
            op.alter_column(
                table, "id", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False
            )
            _sequence_as(table, "bigint")
    op.create_index(
        "ix_outbox_dispatched",
        "outbox",
        ["dispatched_at"],
        unique=False,
        postgresql_where=sa.text("dispatched_at IS NOT NULL"),
        sqlite_where=sa.text("dispatched_at IS NOT NULL"),
    )
    op.create_index(op.f("ix_callback_events_received_at"), "callback_events", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_callback_events_received_at"), table_name="callback_events")
    op.drop_index(
        "ix_outbox_dispatched",
        table_name="outbox",
        postgresql_where=sa.text("dispatched_at IS NOT NULL"),
        sqlite_where=sa.text("dispatched_at IS NOT NULL"),
    )
    if _postgresql():
        # Fails, changing nothing, once a table holds an id past 2^31 - 1.
        for table in ID_TABLES:
            _sequence_as(table, "integer")
            op.alter_column(
                table, "id", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False
            )
