"""The gRPC calls an HTTP request makes, as its caller (their bearer credential forwarded)."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from gateway.http.errors import ApiError
from voxmesh.v1 import (
    files_pb2,
    files_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    pagination_pb2,
    projects_pb2,
    projects_pb2_grpc,
    results_pb2,
    results_pb2_grpc,
    settings_pb2,
    settings_pb2_grpc,
    users_pb2,
    users_pb2_grpc,
    voices_pb2,
    voices_pb2_grpc,
)

DEFAULT_PROJECT = "API"
"""Where HTTP requests make their jobs unless they name a project (or their key has one)."""
CACHE_SECONDS = 30.0
SINGLE_CALL_BYTES = 2 * 1024 * 1024
"""Files up to this size go in one UploadFile call (FileService's limit for it)."""
_TERMINAL = {
    jobs_pb2.JOB_STATUS_COMPLETED,
    jobs_pb2.JOB_STATUS_FAILED,
    jobs_pb2.JOB_STATUS_CANCELLED,
}


@dataclass
class _Known:
    """Per credential, for CACHE_SECONDS: who it is, its settings, its default project. Never
    instead of a call: every request still makes at least one call with the credential, so a
    revoked key fails on its next request."""

    at: float
    user_id: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    project_id: str = ""


_known: dict[str, _Known] = {}


@dataclass
class Finished:
    job: jobs_pb2.Job
    status: int
    result: jobs_pb2.JobResult | None

    def file(self, *, name: str = "", role: str = "") -> jobs_pb2.ResultFile:
        for f in self.result.files if self.result else ():
            if (name and f.name == name) or (role and f.role == role):
                return f
        raise ApiError(500, f"job {self.job.id} finished without its {name or role} file",
                       type_="server_error", code="missing_result")  # fmt: skip


def status_name(value: int) -> str:
    return jobs_pb2.JobStatus.Name(value).removeprefix("JOB_STATUS_").lower()


class Control:
    """The control plane, as one HTTP request's caller."""

    def __init__(self, channel: grpc.aio.Channel, credential: str) -> None:
        self.metadata = (("authorization", f"Bearer {credential}"),)
        self._cache_key = hashlib.sha256(credential.encode()).hexdigest()
        self.jobs = jobs_pb2_grpc.JobServiceStub(channel)
        self.files = files_pb2_grpc.FileServiceStub(channel)
        self.projects = projects_pb2_grpc.ProjectServiceStub(channel)
        self.results = results_pb2_grpc.JobResultServiceStub(channel)
        self.settings = settings_pb2_grpc.SettingsServiceStub(channel)
        self.users = users_pb2_grpc.UserServiceStub(channel)
        self.voice_service = voices_pb2_grpc.VoiceServiceStub(channel)

    async def call(self, method: Any, request: Any) -> Any:
        return await method(request, metadata=self.metadata, timeout=60)

    # --- who, and where -------------------------------------------------------------------
    async def _known_now(self) -> _Known:
        known = _known.get(self._cache_key)
        if known is None or time.monotonic() - known.at > CACHE_SECONDS:
            me = await self.call(self.users.GetCurrentUser, users_pb2.GetCurrentUserRequest())
            effective = await self.call(
                self.settings.GetEffectiveSettings, settings_pb2.GetEffectiveSettingsRequest()
            )
            known = _Known(
                at=time.monotonic(),
                user_id=me.user.id,
                settings={s.key: json_format.MessageToDict(s.value) for s in effective.settings},
            )
            if len(_known) > 10_000:
                _known.clear()
            _known[self._cache_key] = known
        return known

    async def check(self) -> None:
        """Is this credential good now (a revoked key fails here, on its next call)."""
        await self.call(self.users.GetCurrentUser, users_pb2.GetCurrentUserRequest())

    async def setting(self, key: str) -> Any:
        return (await self._known_now()).settings.get(key)

    async def project(self, wanted: str | None) -> str:
        """The project a request's job goes in: the one it names (an id, or the name of one of
        the caller's projects), else its key's project, else the caller's "API" project."""
        known = await self._known_now()
        if wanted:
            try:
                return str(uuid.UUID(wanted))
            except ValueError:
                pass
            found = await self._find(known.user_id, wanted)
            if found is None:
                raise ApiError(404, f"you have no project named {wanted!r}", param="project",
                               code="project_not_found")  # fmt: skip
            return found
        if known.project_id:
            return known.project_id
        found = await self._find(known.user_id, DEFAULT_PROJECT)
        if found is None:
            try:
                made = await self.call(
                    self.projects.CreateProject,
                    projects_pb2.CreateProjectRequest(
                        name=DEFAULT_PROJECT, description="Jobs made through the HTTP API (/v1)"
                    ),
                )
                found = made.project.id
            except grpc.aio.AioRpcError as e:
                if e.code() is grpc.StatusCode.ALREADY_EXISTS:  # a concurrent request made it
                    found = await self._find(known.user_id, DEFAULT_PROJECT)
                elif e.code() is grpc.StatusCode.PERMISSION_DENIED:
                    # A key scoped to one project: the only one it can list.
                    listed = await self.call(
                        self.projects.ListProjects, projects_pb2.ListProjectsRequest()
                    )
                    if len(listed.projects) != 1:
                        raise
                    found = listed.projects[0].id
                else:
                    raise
        assert found is not None
        known.project_id = found
        return found

    async def _find(self, owner: str, name: str) -> str | None:
        token = ""
        while True:
            page = await self.call(
                self.projects.ListProjects,
                projects_pb2.ListProjectsRequest(
                    owner_id=owner,
                    page=pagination_pb2.PageRequest(page_size=100, page_token=token),
                ),
            )
            for p in page.projects:
                if p.name.lower() == name.lower():
                    return str(p.id)
            token = page.page.next_page_token
            if not token:
                return None

    async def refuse_if_busy(self) -> None:
        """A request that waits for its result is refused (429) rather than queued behind the
        caller's running jobs when their concurrency cap is full; `?async=true` queues."""
        known = await self._known_now()
        cap = int(known.settings.get("max_concurrent_jobs") or 0)
        if cap <= 0:
            return
        running = await self.call(
            self.jobs.ListJobs,
            jobs_pb2.ListJobsRequest(
                created_by=known.user_id,
                status=jobs_pb2.JOB_STATUS_RUNNING,
                page=pagination_pb2.PageRequest(page_size=cap),
            ),
        )
        if len(running.jobs) >= cap:
            raise ApiError(
                429,
                f"you already run {cap} job{'s' if cap != 1 else ''} at once (max_concurrent_jobs); "
                "try again shortly, "
                "or send the request with ?async=true to queue it",
                type_="rate_limit_error", code="concurrency_limit", headers={"retry-after": "5"},
            )  # fmt: skip

    # --- files ----------------------------------------------------------------------------
    async def upload(self, filename: str, content_type: str, data: bytes) -> str:
        if not data:
            raise ApiError(400, "the file is empty", param="file", code="invalid_value")
        if len(data) <= SINGLE_CALL_BYTES:  # one call, no upload rows: most requests' clips
            stored = await self.call(
                self.files.UploadFile,
                files_pb2.UploadFileRequest(
                    filename=filename[:255] or "upload", content_type=content_type[:127],
                    data=data, sha256=hashlib.sha256(data).hexdigest(),
                ),
            )  # fmt: skip
            return str(stored.file.id)
        started = await self.call(
            self.files.StartUpload,
            files_pb2.StartUploadRequest(
                filename=filename[:255] or "upload", content_type=content_type[:127],
                size_bytes=len(data),
            ),
        )  # fmt: skip
        step = started.chunk_size_bytes or 1 << 20
        for offset in range(0, len(data), step):
            await self.call(
                self.files.UploadChunk,
                files_pb2.UploadChunkRequest(
                    upload_id=started.upload_id, offset=offset, data=data[offset : offset + step]
                ),
            )
        finished = await self.call(
            self.files.FinishUpload,
            files_pb2.FinishUploadRequest(
                upload_id=started.upload_id, sha256=hashlib.sha256(data).hexdigest()
            ),
        )
        return str(finished.file.id)

    async def download(self, file_id: str) -> bytes:
        return b"".join([chunk async for chunk in self.stream_file(file_id)])

    async def content(self, file: jobs_pb2.ResultFile) -> bytes:
        """A result file's bytes: those the live result carried (a short job's transcripts),
        else downloaded."""
        if file.data or not file.size_bytes:
            return bytes(file.data)
        return await self.download(file.file_id)

    async def stream_file(self, file_id: str) -> AsyncIterator[bytes]:
        stream = self.files.DownloadFile(
            files_pb2.DownloadFileRequest(file_id=file_id), metadata=self.metadata
        )
        async for message in stream:
            if message.data:
                yield message.data

    # --- jobs -----------------------------------------------------------------------------
    async def create(self, request: jobs_pb2.CreateJobRequest) -> jobs_pb2.Job:
        response = await self.call(self.jobs.CreateJob, request)
        return response.job

    async def get(self, job_id: str) -> tuple[jobs_pb2.Job, jobs_pb2.JobResult | None]:
        job = (await self.call(self.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id))).job
        result = None
        if job.status in _TERMINAL:
            try:
                result = (
                    await self.call(
                        self.results.GetJobResult, results_pb2.GetJobResultRequest(job_id=job_id)
                    )
                ).result
            except grpc.aio.AioRpcError as e:
                if e.code() is not grpc.StatusCode.NOT_FOUND:
                    raise
        return job, result

    async def events(self, job_id: str) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        """The job's events from its first, ending with its result."""
        stream = self.jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job_id, after_seq=0), metadata=self.metadata
        )
        async for event in stream:
            yield event
            if event.WhichOneof("event") == "result":
                stream.cancel()
                return

    async def wait(self, job: jobs_pb2.Job) -> Finished:
        """Follow the job to its end. Its stream says all a reply needs (the final status and
        error, then the result), so no call follows it; only a stream that stopped without its
        end is made good with GetJob."""
        final = jobs_pb2.Job()
        final.CopyFrom(job)
        result = None
        async for event in self.events(job.id):
            which = event.WhichOneof("event")
            if which == "snapshot":
                final.CopyFrom(event.snapshot)
            elif which == "status":
                final.status, final.error = event.status.status, event.status.error
            elif which == "result":
                result = event.result
        if result is None or final.status not in _TERMINAL:
            final, result = await self.get(job.id)
        return Finished(final, final.status, result)

    async def voices(self) -> list[voices_pb2.VoiceInfo]:
        listed = await self.call(self.voice_service.ListVoices, voices_pb2.ListVoicesRequest())
        return list(listed.voices)
