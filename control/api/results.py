"""JobResultService: what finished jobs produced."""

from __future__ import annotations

import grpc
from sqlalchemy import select

from control.api import pagination
from control.api.jobs import get_job
from control.api.projects import get_project
from control.app import ControlApp
from control.convert import job_type_from_pb, result_to_pb
from control.db.models import Job, JobResult
from control.validate import enum_field, required_uuid, uuid_field
from voxmesh.errors import NotFound
from voxmesh.v1 import jobs_pb2, results_pb2, results_pb2_grpc


class JobResultService(results_pb2_grpc.JobResultServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

    async def GetJobResult(
        self, request: results_pb2.GetJobResultRequest, context: grpc.aio.ServicerContext
    ) -> results_pb2.GetJobResultResponse:
        job_id = required_uuid(request.job_id, "job_id")
        async with self.app.sessions() as session:
            job = await get_job(session, job_id)
            result = await session.get(JobResult, job_id)
            if result is None:
                raise NotFound(
                    f"job {job_id} has no result yet; it is {job.status.value}", field="job_id"
                )
            return results_pb2.GetJobResultResponse(result=result_to_pb(result))

    async def ListJobResults(
        self, request: results_pb2.ListJobResultsRequest, context: grpc.aio.ServicerContext
    ) -> results_pb2.ListJobResultsResponse:
        project_id = uuid_field(request.project_id, "project_id", required=False)
        enum_field(jobs_pb2.JobType, request.job_type, "job_type")
        page = pagination.parse(request.page, ("results", project_id, request.job_type))
        stmt = select(JobResult).join(Job, Job.id == JobResult.job_id)
        if project_id is not None:
            stmt = stmt.where(Job.project_id == project_id)
        if request.job_type:
            stmt = stmt.where(Job.type == job_type_from_pb(request.job_type))
        async with self.app.sessions() as session:
            if project_id is not None:
                await get_project(session, project_id)
            rows, page_out = await pagination.fetch(
                session, stmt, page, JobResult.created_at, JobResult.job_id
            )
            return results_pb2.ListJobResultsResponse(
                results=[result_to_pb(r[0]) for r in rows], page=page_out
            )
