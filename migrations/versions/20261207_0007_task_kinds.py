"""Task kinds: the kind of a job (jobs.kind, `image` for every earlier job) and typed outputs
(images.type `image`|`video`, images.duration for videos, images.bytes widened to 64 bits for
videos up to ARCHIVE_MAX_BYTES_VIDEO). The `images` table holds every output of a job.

Revision ID: 0007_task_kinds
Revises: 0006_accounts
Create Date: 2026-12-07 02:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_task_kinds"
down_revision: str | Sequence[str] | None = "0006_accounts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Constant server defaults: PostgreSQL 11+ adds these columns without a table rewrite.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=32), server_default="image", nullable=False))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("type", sa.String(length=8), server_default="image", nullable=False))
        batch.add_column(sa.Column("duration", sa.Float(), nullable=True))
        batch.alter_column("bytes", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.alter_column("bytes", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=True)
        batch.drop_column("duration")
        batch.drop_column("type")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("kind")
