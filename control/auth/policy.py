"""Ownership rules, checked by servicers on top of the per-RPC role rule.

Everyone signed in may read every project and job (viewers are read-only, not blind). Changing
a project takes its owner or an admin; changing a job takes its creator, the owner of its
project, or an admin; creating a job in a project takes the project's owner or an admin.
"""

from __future__ import annotations

from control.auth.principal import Principal
from control.db.models import Job, Project
from voxmesh.errors import PermissionDenied


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
