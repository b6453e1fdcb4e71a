"""JobService: create (validated per type, stored PENDING), read, list, update, delete."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control import job_params, settings_catalog
from control.api import pagination
from control.api.convert import (
    PARAMS_FIELD,
    TYPE_OF_PARAMS_FIELD,
    job_status_from_pb,
    job_to_pb,
    job_type_from_pb,
    params_to_json,
)
from control.api.projects import get_project
from control.api.validate import enum_field, mask_paths, required_uuid, text_field, uuid_field
from control.app import ControlApp
from control.auth import policy, principal
from control.auth.principal import Principal
from control.db.models import File, Job, JobStatus, Project
from voxmesh.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from voxmesh.v1 import jobs_pb2, jobs_pb2_grpc

TYPE_NAMES = ", ".join(sorted(TYPE_OF_PARAMS_FIELD))


async def get_job(session: AsyncSession, job_id: uuid.UUID, *, lock: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id)
    if lock:
        stmt = stmt.with_for_update()
    job = await session.scalar(stmt)
    if job is None:
        raise NotFound(f"no job with id {job_id}", field="job_id")
    return job


async def _defaults(session: AsyncSession, user_id: uuid.UUID) -> job_params.UserDefaults:
    values = await settings_catalog.resolve(session, user_id)
    return job_params.UserDefaults(
        preferred_voice=str(values["preferred_voice"][0]),
        default_language=str(values["default_language"][0]),
        max_text_length=int(values["max_text_length"][0]),
    )


async def _check_file(
    session: AsyncSession, who: Principal, raw_id: str, field: str
) -> uuid.UUID | None:
    file_id = uuid_field(raw_id, field, required=False)
    if file_id is None:
        return None
    stored = await session.get(File, file_id)
    if stored is None:
        raise NotFound(f"no file with id {file_id}; upload it first", field=field)
    if stored.owner_id != who.user_id and not who.is_admin:
        raise PermissionDenied(f"file {file_id} belongs to another user", field=field)
    return file_id


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

    async def CreateJob(
        self, request: jobs_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CreateJobResponse:
        who = principal.current()
        project_id = required_uuid(request.project_id, "project_id")
        which = request.WhichOneof("params")
        if which is None:
            raise InvalidArgument(
                f"set the parameters of one job type: one of {TYPE_NAMES}", field="params"
            )
        job_type = TYPE_OF_PARAMS_FIELD[which]
        title = text_field(request.title, "title", max_len=200)
        job_params.check_input_file(job_type, request.input_file_id)
        async with self.app.sessions() as session:
            project = await get_project(session, project_id)
            policy.require_project_owner(who, project, "create jobs in it")
            params = job_params.normalize(
                job_type, getattr(request, which), await _defaults(session, who.user_id)
            )
            input_file = await _check_file(session, who, request.input_file_id, "input_file_id")
            if which == "voice_cloning":
                await _check_file(
                    session,
                    who,
                    request.voice_cloning.source_file_id,
                    "voice_cloning.source_file_id",
                )
            job = Job(
                project_id=project.id,
                created_by=who.user_id,
                type=job_type,
                status=JobStatus.PENDING,
                title=title,
                params=params_to_json(params),
                input_file_id=input_file,
            )
            session.add(job)
            await session.commit()
            return jobs_pb2.CreateJobResponse(job=job_to_pb(job))

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        job_id = required_uuid(request.job_id, "job_id")
        async with self.app.sessions() as session:
            return jobs_pb2.GetJobResponse(job=job_to_pb(await get_job(session, job_id)))

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        project_id = uuid_field(request.project_id, "project_id", required=False)
        created_by = uuid_field(request.created_by, "created_by", required=False)
        enum_field(jobs_pb2.JobType, request.type, "type")
        enum_field(jobs_pb2.JobStatus, request.status, "status")
        filters: tuple[Any, ...] = ("jobs", project_id, request.type, request.status, created_by)
        page = pagination.parse(request.page, filters)
        stmt = select(Job)
        if project_id is not None:
            stmt = stmt.where(Job.project_id == project_id)
        if request.type:
            stmt = stmt.where(Job.type == job_type_from_pb(request.type))
        if request.status:
            stmt = stmt.where(Job.status == job_status_from_pb(request.status))
        if created_by is not None:
            stmt = stmt.where(Job.created_by == created_by)
        async with self.app.sessions() as session:
            if project_id is not None:
                await get_project(session, project_id)  # NOT_FOUND beats an empty list
            rows, page_out = await pagination.fetch(session, stmt, page, Job.created_at, Job.id)
        return jobs_pb2.ListJobsResponse(jobs=[job_to_pb(r[0]) for r in rows], page=page_out)

    async def UpdateJob(
        self, request: jobs_pb2.UpdateJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.UpdateJobResponse:
        who = principal.current()
        job_id = required_uuid(request.job_id, "job_id")
        paths = mask_paths(request.update_mask, {"title", "params"})
        title = text_field(request.title, "title", max_len=200) if "title" in paths else None
        async with self.app.sessions() as session:
            job = await get_job(session, job_id, lock=True)
            project = await session.get(Project, job.project_id)
            assert project is not None
            policy.require_job_editor(who, job, project, "change it")
            if "params" in paths:
                which = request.WhichOneof("params")
                expected = PARAMS_FIELD[job.type]
                if which != expected:
                    raise InvalidArgument(
                        f"this is a {job.type.value} job: send its parameters in {expected!r}",
                        field="params",
                    )
                if job.status is not JobStatus.PENDING:
                    raise FailedPrecondition(
                        f"parameters can only change while the job is PENDING; it is "
                        f"{job.status.value} (RetryJob re-queues a finished job)"
                    )
                params = job_params.normalize(
                    job.type, getattr(request, which), await _defaults(session, job.created_by)
                )
                if which == "voice_cloning":
                    await _check_file(
                        session,
                        who,
                        params.source_file_id,  # type: ignore[attr-defined]
                        "voice_cloning.source_file_id",
                    )
                job.params = params_to_json(params)
            if title is not None:
                job.title = title
            await session.commit()
            return jobs_pb2.UpdateJobResponse(job=job_to_pb(job))

    async def DeleteJob(
        self, request: jobs_pb2.DeleteJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.DeleteJobResponse:
        job_id = required_uuid(request.job_id, "job_id")
        async with self.app.sessions() as session:
            job = await get_job(session, job_id, lock=True)
            project = await session.get(Project, job.project_id)
            assert project is not None
            policy.require_job_editor(principal.current(), job, project, "delete it")
            if job.status is JobStatus.RUNNING:
                raise FailedPrecondition("the job is RUNNING; cancel it before deleting it")
            await session.delete(job)
            await session.commit()
        return jobs_pb2.DeleteJobResponse()
