"""JobService: create (validated by the job's kind), read, list, update, delete, and the
lifecycle requests (start, cancel, retry) and watches. Generic: job types live in
control/kinds, status changes in control/lifecycle."""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from sqlalchemy import Select, String, bindparam, cast, func, null, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import raiseload

from control import settings_catalog, webhooks
from control.api import pagination
from control.api.projects import get_project
from control.app import ControlApp
from control.auth import policy, principal
from control.convert import (
    job_status_from_pb,
    job_to_pb,
    job_type_from_pb,
    params_to_json,
)
from control.db.models import Job, Project, SavedVoice
from control.dispatch.watch import job_events
from control.kinds import kind_for_field, kind_of
from control.kinds.base import JobKind, Request, UserDefaults
from control.lifecycle.transitions import Lifecycle
from control.validate import enum_field, mask_paths, required_uuid, text_field, uuid_field
from voxmesh.errors import InvalidArgument, NotFound, Unavailable
from voxmesh.speech.languages import SHIPPED_STT
from voxmesh.v1 import jobs_pb2, jobs_pb2_grpc

ID_PREFIX = re.compile(r"[0-9a-f-]{4,36}")
"""A job id as printed, or its start (ListJobs.id_prefix)."""


async def get_job(session: AsyncSession, job_id: uuid.UUID, *, lock: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id)
    if lock:
        stmt = stmt.with_for_update()
    job = await session.scalar(stmt)
    if job is None:
        raise NotFound(f"no job with id {job_id}", field="job_id")
    policy.require_in_scope(job.project_id)
    return job


def _creation_statements() -> dict[bool, Select[Any]]:
    """What CreateJob reads, in one round trip: the project (without its owner, which creating
    a job never needs), the creator's stored settings and, for a kind whose params name them,
    the project's saved voices. Built once; keyed by whether the voices are read."""
    voices = (
        select(func.coalesce(func.array_agg(SavedVoice.name), cast([], ARRAY(String))))
        .where(SavedVoice.project_id == Project.id)
        .scalar_subquery()
    )
    stored = settings_catalog.stored_rows(bindparam("user"))
    base = (
        select(Project, stored)
        .where(Project.id == bindparam("project"))
        .options(raiseload(Project.owner))
    )
    return {False: base.add_columns(null()), True: base.add_columns(voices)}


_CREATION = _creation_statements()


def _user_defaults(
    values: dict[str, tuple[Any, Any]], saved: Iterable[str], app: ControlApp
) -> tuple[UserDefaults, bool]:
    """The creator's defaults for job parameters (their settings, the voices the project saved),
    and whether their jobs start at once."""
    defaults = UserDefaults(
        preferred_voice=str(values["preferred_voice"][0]),
        default_language=str(values["default_language"][0]),
        max_text_length=int(values["max_text_length"][0]),
        saved_voices=frozenset(name.lower() for name in saved),
        stt_models=app.mesh.presence.stt_models() if app.mesh is not None else SHIPPED_STT,
    )
    return defaults, bool(values["auto_start_jobs"][0])


async def _defaults(
    session: AsyncSession, user_id: uuid.UUID, project_id: uuid.UUID, app: ControlApp,
    kind: JobKind[Any],
) -> tuple[UserDefaults, bool]:  # fmt: skip
    """`_user_defaults`, read on their own (for a job that exists)."""
    values = await settings_catalog.resolve(session, user_id)
    saved = (
        await session.scalars(select(SavedVoice.name).where(SavedVoice.project_id == project_id))
        if kind.names_saved_voices()
        else ()
    )
    return _user_defaults(values, saved, app)


async def _creation_context(
    session: AsyncSession, project_id: uuid.UUID, user_id: uuid.UUID, app: ControlApp,
    kind: JobKind[Any],
) -> tuple[Project, UserDefaults, bool]:  # fmt: skip
    """The project a job is created in (NOT_FOUND, or out of the caller's scope) and the
    creator's defaults: one query."""
    found = (
        await session.execute(
            _CREATION[kind.names_saved_voices()], {"project": project_id, "user": user_id}
        )
    ).one_or_none()
    if found is None:
        raise NotFound(f"no project with id {project_id}", field="project_id")
    project, stored, saved = found
    policy.require_in_scope(project.id)
    return project, *_user_defaults(settings_catalog.values_of(stored), saved or (), app)


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

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
        kind = kind_for_field(which)
        title = text_field(request.title, "title", max_len=200)
        async with self.app.sessions() as session:
            project, defaults, auto_start = await _creation_context(
                session, project_id, who.user_id, self.app, kind
            )
            policy.require_project_owner(who, project, "create jobs in it")
            req = Request(session, who, project.id, defaults)
            params = kind.normalize(getattr(request, kind.field), defaults)
            input_file = await kind.input_file(req, params, request.input_file_id)
            await kind.check(req, params)
            hooks = await webhooks.check(session, who.user_id, request.webhooks, "webhooks")
            if hooks and not project.webhook_secret:  # a job's own URLs sign with it too
                project.webhook_secret = webhooks.new_secret()
            job = Job(
                id=uuid.uuid4(), project_id=project.id, created_by=who.user_id,
                type=kind.job_type, title=title, params=params_to_json(params),
                input_file_id=input_file, webhooks=hooks or list(project.webhooks),
            )  # fmt: skip
            lifecycle = Lifecycle(session)
            await lifecycle.create(job, auto_start=auto_start)
            await session.commit()
        await lifecycle.after_commit(self.app.mesh)
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
        project_id = project_id or policy.scope()
        prefix = request.id_prefix.lower()
        if prefix and not ID_PREFIX.fullmatch(prefix):
            raise InvalidArgument(
                "id_prefix must be 4 to 36 characters of a job id (hex digits and dashes)",
                field="id_prefix",
            )
        filters: tuple[Any, ...] = ("jobs", project_id, request.type, request.status, created_by,
                                    prefix)  # fmt: skip
        page = pagination.parse(request.page, filters)
        stmt = select(Job)
        if prefix:
            stmt = stmt.where(cast(Job.id, String).startswith(prefix, autoescape=True))
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
            lifecycle = Lifecycle(session)
            if "params" in paths:
                kind = kind_of(job.type)
                if request.WhichOneof("params") != kind.field:
                    raise InvalidArgument(
                        f"this is a {job.type.value} job: send its parameters in {kind.field!r}",
                        field="params",
                    )
                lifecycle.check_params_editable(job)
                defaults, _ = await _defaults(
                    session, job.created_by, job.project_id, self.app, kind
                )
                params = kind.normalize(getattr(request, kind.field), defaults)
                await kind.check(Request(session, who, job.project_id, defaults), params)
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
            lifecycle = Lifecycle(session)
            await lifecycle.delete(job)
            await session.commit()
        await lifecycle.after_commit(self.app.mesh)  # a queued run: the worker skips it
        return jobs_pb2.DeleteJobResponse()

    async def StartJob(
        self, request: jobs_pb2.StartJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.StartJobResponse:
        job = await self._transition(request.job_id, "start it", lambda lc, job: lc.start(job))
        return jobs_pb2.StartJobResponse(job=job_to_pb(job))

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        by = principal.current().username
        job = await self._transition(request.job_id, "cancel it", lambda lc, j: lc.cancel(j, by=by))
        return jobs_pb2.CancelJobResponse(job=job_to_pb(job))

    async def RetryJob(
        self, request: jobs_pb2.RetryJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.RetryJobResponse:
        by = principal.current().username
        job = await self._transition(request.job_id, "retry it", lambda lc, j: lc.retry(j, by=by))
        return jobs_pb2.RetryJobResponse(job=job_to_pb(job))

    async def _transition(
        self, raw_id: str, action: str, change: Callable[[Lifecycle, Job], object]
    ) -> Job:
        """Lock the job, check the caller may `action`, make the lifecycle change, commit, and
        run its after-commit effects (StartJob, CancelJob, RetryJob)."""
        job_id = required_uuid(raw_id, "job_id")
        async with self.app.sessions() as session:
            job, _ = await self._editable(session, job_id, action)
            lifecycle = Lifecycle(session)
            done = change(lifecycle, job)
            if inspect.isawaitable(done):
                await done
            await session.commit()
        await lifecycle.after_commit(self.app.mesh)
        return job

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
        events = job_events(
            self.app.sessions, self.app.mesh.broadcaster, job_id, request.after_seq,
            coalesce=request.coalesce_progress,
        )  # fmt: skip
        async for event in events:
            yield event

    async def WatchJobs(
        self, request: jobs_pb2.WatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobsResponse]:
        project_id = uuid_field(request.project_id, "project_id", required=False)
        # Every job the caller may list (ListJobs), so a page follows all it shows on one stream.
        project_id = project_id or policy.scope()
        if self.app.mesh is None:
            raise Unavailable("job events are not available: this server runs without NATS")
        if project_id is not None:
            async with self.app.sessions() as session:
                await get_project(session, project_id)
        with self.app.mesh.broadcaster.watch_project(
            str(project_id) if project_id else None
        ) as live:
            # Headers go out once subscribed: a client that awaits them knows nothing after
            # this moment is missed.
            await context.send_initial_metadata(())
            while True:
                yield jobs_pb2.WatchJobsResponse(job=await live.get())
