"""JobService: create (validated per type, stored PENDING), read, list, update, delete."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sqlalchemy import delete, select
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
from control.db.models import (
    File,
    Job,
    JobEvent,
    JobResult,
    JobStatus,
    JobType,
    Project,
    SavedVoice,
)
from control.dispatch.journal import TERMINAL, Journal
from voxmesh.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from voxmesh.v1 import jobs_pb2, jobs_pb2_grpc

TYPE_NAMES = ", ".join(sorted(TYPE_OF_PARAMS_FIELD))
WATCH_RESYNC_SECONDS = 2.0


async def get_job(session: AsyncSession, job_id: uuid.UUID, *, lock: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id)
    if lock:
        stmt = stmt.with_for_update()
    job = await session.scalar(stmt)
    if job is None:
        raise NotFound(f"no job with id {job_id}", field="job_id")
    return job


async def _defaults(
    session: AsyncSession, user_id: uuid.UUID, project_id: uuid.UUID
) -> tuple[job_params.UserDefaults, bool]:
    """The creator's defaults for job parameters (and the voices the project saved), and
    whether their jobs start at once."""
    values = await settings_catalog.resolve(session, user_id)
    saved = await session.scalars(
        select(SavedVoice.name).where(SavedVoice.project_id == project_id)
    )
    defaults = job_params.UserDefaults(
        preferred_voice=str(values["preferred_voice"][0]),
        default_language=str(values["default_language"][0]),
        max_text_length=int(values["max_text_length"][0]),
        saved_voices=frozenset(name.lower() for name in saved),
    )
    return defaults, bool(values["auto_start_jobs"][0])


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


async def _revised_input(
    session: AsyncSession, project_id: uuid.UUID, request: jobs_pb2.CreateJobRequest,
    input_file: uuid.UUID | None,
) -> uuid.UUID | None:  # fmt: skip
    """A dubbing revision re-renders a finished dub of the same project, from its recording."""
    field = "dubbing.revise_job_id"
    revised = await session.get(Job, uuid.UUID(request.dubbing.revise_job_id))
    if revised is None or revised.project_id != project_id:
        raise NotFound(
            f"no dubbing job {request.dubbing.revise_job_id} in this project", field=field
        )
    if revised.type is not JobType.DUBBING or revised.status is not JobStatus.COMPLETED:
        raise FailedPrecondition(
            f"only a COMPLETED dubbing job can be revised; that one is a {revised.type.value} job, "
            f"{revised.status.value}"
        )
    if input_file is not None and input_file != revised.input_file_id:
        raise InvalidArgument(
            "a revision re-renders the revised job's recording: leave input_file_id empty",
            field="input_file_id",
        )
    return revised.input_file_id


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

    async def _published(self, journal: Journal) -> None:
        """After commit: watchers hear of the change and the dispatcher wakes."""
        if self.app.mesh is not None:
            await self.app.mesh.publish(journal)
            self.app.mesh.wake()

    async def _editable(
        self, session: AsyncSession, job_id: uuid.UUID, action: str
    ) -> tuple[Job, Project]:
        job = await get_job(session, job_id, lock=True)
        project = await session.get(Project, job.project_id)
        assert project is not None
        policy.require_job_editor(principal.current(), job, project, action)
        return job, project

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
        revising = which == "dubbing" and bool(request.dubbing.revise_job_id)
        if not revising:
            job_params.check_input_file(job_type, request.input_file_id)
        async with self.app.sessions() as session:
            project = await get_project(session, project_id)
            policy.require_project_owner(who, project, "create jobs in it")
            defaults, auto_start = await _defaults(session, who.user_id, project.id)
            params = job_params.normalize(job_type, getattr(request, which), defaults)
            input_file = await _check_file(session, who, request.input_file_id, "input_file_id")
            if revising:
                input_file = await _revised_input(session, project.id, request, input_file)
            if which == "voice_cloning":
                await _check_file(
                    session,
                    who,
                    request.voice_cloning.source_file_id,
                    "voice_cloning.source_file_id",
                )
            job = Job(
                id=uuid.uuid4(),
                project_id=project.id,
                created_by=who.user_id,
                type=job_type,
                status=JobStatus.PENDING,
                title=title,
                params=params_to_json(params),
                input_file_id=input_file,
                progress=0,
                attempts=0,
                run=0,
                last_event_seq=0,
            )
            session.add(job)
            journal = Journal()
            if auto_start:
                journal.queue(session, job)
            else:
                job.awaiting_start = True
                journal.changed[job.id] = job
            await session.commit()
        await self._published(journal)
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
            job, _ = await self._editable(session, job_id, "change it")
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
                if job.queued_at is not None:
                    raise FailedPrecondition(
                        "the job is already queued for a worker; cancel it and create a new one"
                    )
                defaults, _ = await _defaults(session, job.created_by, job.project_id)
                params = job_params.normalize(job.type, getattr(request, which), defaults)
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
            job, _ = await self._editable(session, job_id, "delete it")
            if job.status is JobStatus.RUNNING:
                raise FailedPrecondition("the job is RUNNING; cancel it before deleting it")
            queued_run = job.run if job.queued_at is not None else None
            await session.delete(job)
            await session.commit()
        if queued_run is not None and self.app.mesh is not None:
            await self.app.mesh.request_cancel(str(job_id), queued_run)  # the worker skips it
        return jobs_pb2.DeleteJobResponse()

    async def StartJob(
        self, request: jobs_pb2.StartJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.StartJobResponse:
        job_id = required_uuid(request.job_id, "job_id")
        journal = Journal()
        async with self.app.sessions() as session:
            job, _ = await self._editable(session, job_id, "start it")
            if job.status is not JobStatus.PENDING or not job.awaiting_start:
                raise FailedPrecondition(
                    f"only a PENDING job waiting for StartJob can be started; this one is "
                    f"{job.status.value}{' and already queued' if job.status is JobStatus.PENDING else ''}"
                )
            journal.queue(session, job)
            await session.commit()
        await self._published(journal)
        return jobs_pb2.StartJobResponse(job=job_to_pb(job))

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        job_id = required_uuid(request.job_id, "job_id")
        journal = Journal()
        async with self.app.sessions() as session:
            job, _ = await self._editable(session, job_id, "cancel it")
            if job.status not in (JobStatus.PENDING, JobStatus.RUNNING):
                raise FailedPrecondition(
                    f"the job is {job.status.value}; only PENDING or RUNNING jobs can be cancelled"
                )
            journal.log(session, job, f"cancelled by {principal.current().username}")
            await journal.finish(session, job, JobStatus.CANCELLED, error="cancelled")
            await session.commit()
        await self._published(journal)  # marks the run cancelled in KV: the worker stops
        return jobs_pb2.CancelJobResponse(job=job_to_pb(job))

    async def RetryJob(
        self, request: jobs_pb2.RetryJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.RetryJobResponse:
        job_id = required_uuid(request.job_id, "job_id")
        journal = Journal()
        async with self.app.sessions() as session:
            job, _ = await self._editable(session, job_id, "retry it")
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise FailedPrecondition(
                    f"the job is {job.status.value}; only FAILED or CANCELLED jobs can be retried"
                )
            await session.execute(delete(JobResult).where(JobResult.job_id == job.id))
            journal.queue(session, job)
            journal.log(session, job, f"retried by {principal.current().username} as run {job.run}")
            journal.status(session, job, JobStatus.PENDING)
            await session.commit()
        await self._published(journal)
        return jobs_pb2.RetryJobResponse(job=job_to_pb(job))

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        job_id = required_uuid(request.job_id, "job_id")
        if request.after_seq < 0:
            raise InvalidArgument(
                "after_seq must be 0 or a seq already received", field="after_seq"
            )
        if self.app.mesh is None:
            raise Unavailable("job events are not available: this server runs without NATS")
        with self.app.mesh.broadcaster.watch_job(str(job_id)) as live:
            async with self.app.sessions() as session:
                job = await get_job(session, job_id)
                if request.after_seq > job.last_event_seq:
                    raise InvalidArgument(
                        f"after_seq {request.after_seq} is beyond the job's last event "
                        f"({job.last_event_seq})", field="after_seq",
                    )  # fmt: skip
                snapshot = job_to_pb(job)
            yield jobs_pb2.WatchJobResponse(
                job_id=snapshot.id, seq=job.last_event_seq, time=snapshot.update_time,
                snapshot=snapshot,
            )  # fmt: skip
            last = request.after_seq
            async for old in self._replay(job_id, last):
                yield old
                last = old.seq
                if old.WhichOneof("event") == "result":
                    return  # it finished between the snapshot and the replay: that was the end
            if job.status in TERMINAL and last >= job.last_event_seq:
                return
            while True:
                event: jobs_pb2.WatchJobResponse | None
                try:
                    event = await asyncio.wait_for(live.get(), WATCH_RESYNC_SECONDS)
                except TimeoutError:
                    event = None  # quiet: check the log in case a live message was lost
                if event is not None and event.seq <= last:
                    continue
                if event is None or event.seq > last + 1:
                    async for missed in self._replay(job_id, last):
                        yield missed
                        last = missed.seq
                        if missed.WhichOneof("event") == "result":
                            return
                    continue
                yield event
                last = event.seq
                if event.WhichOneof("event") == "result":
                    return

    async def _replay(
        self, job_id: uuid.UUID, after: int
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        async with self.app.sessions() as session:
            payloads = list(
                await session.scalars(
                    select(JobEvent.payload)
                    .where(JobEvent.job_id == job_id, JobEvent.seq > after)
                    .order_by(JobEvent.seq)
                )
            )
        for payload in payloads:
            yield jobs_pb2.WatchJobResponse.FromString(payload)

    async def WatchJobs(
        self, request: jobs_pb2.WatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobsResponse]:
        project_id = uuid_field(request.project_id, "project_id", required=False)
        if project_id is None and not principal.current().is_admin:
            raise PermissionDenied("name a project_id; watching every job is for admins")
        if self.app.mesh is None:
            raise Unavailable("job events are not available: this server runs without NATS")
        if project_id is not None:
            async with self.app.sessions() as session:
                await get_project(session, project_id)
        with self.app.mesh.broadcaster.watch_project(
            str(project_id) if project_id else None
        ) as live:
            while True:
                yield jobs_pb2.WatchJobsResponse(job=await live.get())
