"""Files know the project they came from, so a project-scoped API key reads only its own

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 02:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("files", sa.Column("project_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        op.f("fk_files_project_id_projects"), "files", "projects", ["project_id"], ["id"],
        ondelete="SET NULL",
    )  # fmt: skip
    op.create_index(op.f("ix_files_project_id"), "files", ["project_id"])
    # What jobs produced belongs to their projects. Uploads made before are nobody's project
    # (a scoped key still reads those its project's jobs and voices use).
    op.execute(
        "UPDATE files SET project_id = j.project_id FROM job_results r"
        " JOIN jobs j ON j.id = r.job_id, jsonb_array_elements(r.files) e"
        " WHERE e->>'file_id' = files.id::text"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_files_project_id"), table_name="files")
    op.drop_constraint(op.f("fk_files_project_id_projects"), "files", type_="foreignkey")
    op.drop_column("files", "project_id")
