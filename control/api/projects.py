"""ProjectService: projects with their owner and jobs_count."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control import webhooks
from control.api import pagination
from control.app import ControlApp
from control.auth import policy, principal
from control.convert import project_to_pb
from control.db.models import Job, JobStatus, Project
from control.lifecycle.transitions import Lifecycle
from control.validate import mask_paths, required_uuid, text_field, uuid_field
from voxmesh.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from voxmesh.v1 import projects_pb2, projects_pb2_grpc

_JOBS_COUNT = (
    select(func.count(Job.id))
    .where(Job.project_id == Project.id)
    .correlate(Project)
    .scalar_subquery()
)


def _with_count() -> Select[Any]:
    return select(Project, _JOBS_COUNT.label("jobs_count"))


async def get_project(session: AsyncSession, project_id: uuid.UUID) -> Project:
    project = await session.get(Project, project_id)
    if project is None:
        raise NotFound(f"no project with id {project_id}", field="project_id")
    policy.require_in_scope(project.id)
    return project


async def _project_pb(session: AsyncSession, project_id: uuid.UUID) -> projects_pb2.Project:
    policy.require_in_scope(project_id)
    row = (await session.execute(_with_count().where(Project.id == project_id))).one_or_none()
    if row is None:
        raise NotFound(f"no project with id {project_id}", field="project_id")
    return project_to_pb(row[0], row[1], reveal_secret=_may_see_secret(row[0]))


def _may_see_secret(project: Project) -> bool:
    who = principal.current()
    return who.is_admin or project.owner_id == who.user_id


def _name(value: str) -> str:
    return text_field(value, "name", min_len=1, max_len=200)


def _description(value: str) -> str:
    return text_field(value, "description", max_len=2000, multiline=True)


async def _ensure_unique_name(
    session: AsyncSession, owner_id: uuid.UUID, name: str, exclude: uuid.UUID | None = None
) -> None:
    stmt = select(Project.id).where(Project.owner_id == owner_id, Project.name == name)
    if exclude is not None:
        stmt = stmt.where(Project.id != exclude)
    if await session.scalar(stmt) is not None:
        raise AlreadyExists(f"the owner already has a project named {name!r}", field="name")


class ProjectService(projects_pb2_grpc.ProjectServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

    async def CreateProject(
        self, request: projects_pb2.CreateProjectRequest, context: grpc.aio.ServicerContext
    ) -> projects_pb2.CreateProjectResponse:
        name, description = _name(request.name), _description(request.description)
        if policy.scope() is not None:
            raise PermissionDenied("this API key acts only in one project; it cannot create others")
        owner = principal.current().user_id
        async with self.app.sessions() as session:
            await _ensure_unique_name(session, owner, name)
            project = Project(name=name, description=description, owner_id=owner)
            session.add(project)
            try:
                await session.commit()
            except IntegrityError:  # lost a race with an identical create
                raise AlreadyExists(
                    f"you already have a project named {name!r}", field="name"
                ) from None
            return projects_pb2.CreateProjectResponse(
                project=await _project_pb(session, project.id)
            )

    async def GetProject(
        self, request: projects_pb2.GetProjectRequest, context: grpc.aio.ServicerContext
    ) -> projects_pb2.GetProjectResponse:
        project_id = required_uuid(request.project_id, "project_id")
        async with self.app.sessions() as session:
            return projects_pb2.GetProjectResponse(project=await _project_pb(session, project_id))

    async def ListProjects(
        self, request: projects_pb2.ListProjectsRequest, context: grpc.aio.ServicerContext
    ) -> projects_pb2.ListProjectsResponse:
        owner = uuid_field(request.owner_id, "owner_id", required=False)
        page = pagination.parse(request.page, ("projects", owner))
        stmt = _with_count()
        if owner is not None:
            stmt = stmt.where(Project.owner_id == owner)
        if (only := policy.scope()) is not None:
            stmt = stmt.where(Project.id == only)
        async with self.app.sessions() as session:
            rows, page_out = await pagination.fetch(
                session, stmt, page, Project.created_at, Project.id
            )
        return projects_pb2.ListProjectsResponse(
            projects=[
                project_to_pb(p, count, reveal_secret=_may_see_secret(p)) for p, count in rows
            ],
            page=page_out,
        )

    async def UpdateProject(
        self, request: projects_pb2.UpdateProjectRequest, context: grpc.aio.ServicerContext
    ) -> projects_pb2.UpdateProjectResponse:
        project_id = required_uuid(request.project_id, "project_id")
        paths = mask_paths(request.update_mask, {"name", "description", "webhooks"})
        name = _name(request.name) if "name" in paths else None
        description = _description(request.description) if "description" in paths else None
        async with self.app.sessions() as session:
            project = await get_project(session, project_id)
            policy.require_project_owner(principal.current(), project, "change it")
            if name is not None and name != project.name:
                await _ensure_unique_name(session, project.owner_id, name, exclude=project.id)
                project.name = name
            if description is not None:
                project.description = description
            if "webhooks" in paths:
                project.webhooks = await webhooks.check(
                    session, principal.current().user_id, request.webhooks, "webhooks"
                )
                if project.webhooks and not project.webhook_secret:
                    project.webhook_secret = webhooks.new_secret()
            await session.commit()
            return projects_pb2.UpdateProjectResponse(
                project=await _project_pb(session, project.id)
            )

    async def DeleteProject(
        self, request: projects_pb2.DeleteProjectRequest, context: grpc.aio.ServicerContext
    ) -> projects_pb2.DeleteProjectResponse:
        project_id = required_uuid(request.project_id, "project_id")
        async with self.app.sessions() as session:
            project = await get_project(session, project_id)
            policy.require_project_owner(principal.current(), project, "delete it")
            # Lock the project's jobs so none starts running while we decide.
            jobs = list(
                await session.scalars(
                    select(Job).where(Job.project_id == project_id).with_for_update()
                )
            )
            statuses = [job.status for job in jobs]
            running = sum(1 for s in statuses if s is JobStatus.RUNNING)
            if running:
                raise FailedPrecondition(
                    f"project {project.name!r} has {running} running job(s); cancel them first"
                )
            if statuses and not request.force:
                raise FailedPrecondition(
                    f"project {project.name!r} has {len(statuses)} job(s); "
                    "pass force=true to delete them and their results too"
                )
            lifecycle = Lifecycle(session)
            for job in jobs:  # a queued run is marked so that the worker that takes it skips it
                await lifecycle.delete(job)
            await session.delete(project)
            await session.commit()
        await lifecycle.after_commit(self.app.mesh)
        return projects_pb2.DeleteProjectResponse(deleted_jobs=len(statuses))
