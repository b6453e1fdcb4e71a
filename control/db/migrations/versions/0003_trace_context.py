"""trace context: the W3C traceparent of the request that queued each run

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 22:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "outbox",
        sa.Column("traceparent", sa.String(length=55), server_default="", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("outbox", "traceparent")
