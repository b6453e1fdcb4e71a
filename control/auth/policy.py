"""Ownership rules, checked by servicers on top of the per-RPC role rule.

An API key scoped to a project acts only there: every other project and its jobs are refused,
and of files it reads and uses only its project's (require_file_in_scope).
Otherwise everyone signed in may read every project and job (viewers are read-only, not blind). Changing
a project takes its owner or an admin; changing a job takes its creator, the owner of its
project, or an admin; creating a job in a project takes the project's owner or an admin.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from control import files
from control.auth import principal as principal_ctx
from control.auth.principal import Principal
from control.db.models import File, Job, Project
from voxmesh.errors import PermissionDenied


def scope() -> uuid.UUID | None:
    """The one project the caller's API key may act in; None when unrestricted."""
    who = principal_ctx._current.get()
    return who.project_id if who is not None else None


def require_in_scope(project_id: uuid.UUID) -> None:
    """A project-scoped API key sees and changes only its project (checked wherever a
    project or job is loaded: get_project, get_job)."""
    only = scope()
    if only is not None and project_id != only:
        raise PermissionDenied(f"this API key acts only in project {only}")


async def require_file_in_scope(session: AsyncSession, row: File, field: str = "file_id") -> None:
    """A project-scoped API key reads and uses only its project's files: those uploaded through
    a key of that project or produced by its jobs, and those its jobs and saved voices use.
    Anything else (another project's files, the owner's other uploads) is refused."""
    only = scope()
    if only is None or row.project_id == only or await files.used_in_project(session, row.id, only):
        return
    raise PermissionDenied(
        f"this API key acts only in project {only}; file {row.id} is not one of its files",
        field=field,
    )


def require_project_owner(who: Principal, project: Project, action: str) -> None:
    if who.is_admin or project.owner_id == who.user_id:
        return
    raise PermissionDenied(f"only the owner of project {project.name!r} or an admin may {action}")


def require_job_editor(who: Principal, job: Job, project: Project, action: str) -> None:
    if who.is_admin or job.created_by == who.user_id or project.owner_id == who.user_id:
        return
    raise PermissionDenied(
        f"only the job's creator, the owner of project {project.name!r} or an admin may {action}"
    )
