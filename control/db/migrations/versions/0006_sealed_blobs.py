"""Blobs are sealed: each file keeps the key that opens its blob

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Files stored before keep NULL: their blobs are read as they are until the same bytes are
    # stored again, sealed, and every row of that sha256 learns the key (control.files).
    op.add_column("files", sa.Column("blob_key", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("files", "blob_key")
