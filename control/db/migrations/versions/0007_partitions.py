"""Outbox rows carry their job's partition, so each control-plane replica publishes its own

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from voxmesh.mesh import partition_of

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("partition", sa.SmallInteger(), nullable=True))
    bind = op.get_bind()
    # Rows still to publish need their partition; published ones are history (any value).
    for row_id, job_id in bind.execute(
        sa.text("SELECT id, job_id FROM outbox WHERE published_at IS NULL")
    ):
        bind.execute(
            sa.text("UPDATE outbox SET partition = :p WHERE id = :id"),
            {"p": partition_of(str(job_id)), "id": row_id},
        )
    op.execute("UPDATE outbox SET partition = 0 WHERE partition IS NULL")
    op.alter_column("outbox", "partition", nullable=False)
    op.drop_index("ix_outbox_unpublished", table_name="outbox")
    op.create_index(
        "ix_outbox_unpublished_by_partition", "outbox", ["partition", "id"],
        postgresql_where=sa.text("published_at IS NULL"),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_outbox_unpublished_by_partition", table_name="outbox")
    op.create_index(
        "ix_outbox_unpublished", "outbox", ["id"], postgresql_where=sa.text("published_at IS NULL")
    )
    op.drop_column("outbox", "partition")
