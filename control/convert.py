"""Database rows to API messages, and API enums to database enums."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from control.db import models
from control.kinds import kind_of
from control.lifecycle.states import State, state_of
from voxmesh.v1 import jobs_pb2, projects_pb2, users_pb2, webhooks_pb2


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def role_to_pb(role: models.UserRole) -> users_pb2.UserRole:
    return cast(users_pb2.UserRole, users_pb2.UserRole.Value(f"USER_ROLE_{role.value}"))


def role_from_pb(value: int) -> models.UserRole:
    return models.UserRole(users_pb2.UserRole.Name(value).removeprefix("USER_ROLE_"))


def job_type_to_pb(job_type: models.JobType) -> jobs_pb2.JobType:
    return cast(jobs_pb2.JobType, jobs_pb2.JobType.Value(f"JOB_TYPE_{job_type.value}"))


def job_type_from_pb(value: int) -> models.JobType:
    return models.JobType(jobs_pb2.JobType.Name(value).removeprefix("JOB_TYPE_"))


def job_status_to_pb(status: models.JobStatus) -> jobs_pb2.JobStatus:
    return cast(jobs_pb2.JobStatus, jobs_pb2.JobStatus.Value(f"JOB_STATUS_{status.value}"))


def job_status_from_pb(value: int) -> models.JobStatus:
    return models.JobStatus(jobs_pb2.JobStatus.Name(value).removeprefix("JOB_STATUS_"))


def user_to_pb(user: models.User) -> users_pb2.User:
    profile = user.profile
    return users_pb2.User(
        id=str(user.id),
        username=user.username,
        email=user.email or "",
        is_active=user.is_active,
        profile=users_pb2.Profile(
            role=role_to_pb(profile.role), display_name=profile.display_name, bio=profile.bio
        ),
        create_time=ts(user.created_at),
        update_time=ts(max(user.updated_at, profile.updated_at)),
        last_login_time=ts(user.last_login_at),
        service_account=user.is_service_account,
    )


def project_to_pb(
    project: models.Project, jobs_count: int, *, reveal_secret: bool = False
) -> projects_pb2.Project:
    return projects_pb2.Project(
        webhooks=[webhooks_pb2.Webhook(url=h["url"], stages=h["stages"]) for h in project.webhooks],
        webhook_secret=project.webhook_secret if reveal_secret else "",
        id=str(project.id),
        name=project.name,
        description=project.description,
        owner_id=str(project.owner_id),
        owner_username=project.owner.username,
        jobs_count=jobs_count,
        create_time=ts(project.created_at),
        update_time=ts(project.updated_at),
    )


def params_to_json(message: Any) -> dict[str, Any]:
    """A params message as the JSON a job stores."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


PENDING_STATES = {
    State.AWAITING_START: jobs_pb2.PENDING_STATE_AWAITING_START,
    State.WAITING_FOR_SLOT: jobs_pb2.PENDING_STATE_WAITING_FOR_SLOT,
    State.QUEUED: jobs_pb2.PENDING_STATE_QUEUED,
}


def pending_state(job: models.Job) -> jobs_pb2.PendingState:
    """What a PENDING job waits for (unspecified in any other status)."""
    return PENDING_STATES.get(state_of(job), jobs_pb2.PENDING_STATE_UNSPECIFIED)


def job_to_pb(job: models.Job) -> jobs_pb2.Job:
    out = jobs_pb2.Job(
        id=str(job.id),
        project_id=str(job.project_id),
        created_by=str(job.created_by),
        type=job_type_to_pb(job.type),
        status=job_status_to_pb(job.status),
        progress=job.progress,
        title=job.title,
        input_file_id=str(job.input_file_id) if job.input_file_id else "",
        attempts=job.attempts,
        error=job.error,
        create_time=ts(job.created_at),
        update_time=ts(job.updated_at),
        start_time=ts(job.started_at),
        finish_time=ts(job.finished_at),
        last_event_seq=job.last_event_seq,
        awaiting_start=job.awaiting_start,
        pending_state=pending_state(job),
        stage=job.stage or "",
    )
    field = kind_of(job.type).field
    json_format.ParseDict(job.params, getattr(out, field), ignore_unknown_fields=True)
    if not job.params:  # an empty params message still says which type it is
        getattr(out, field).SetInParent()
    return out


def result_to_pb(result: models.JobResult) -> jobs_pb2.JobResult:
    meta = struct_pb2.Struct()
    meta.update(result.meta)
    return jobs_pb2.JobResult(
        job_id=str(result.job_id),
        job_type=job_type_to_pb(result.job.type),
        project_id=str(result.job.project_id),
        result_url=result.result_url,
        files=[
            jobs_pb2.ResultFile(
                file_id=str(f.get("file_id", "")),
                name=str(f.get("name", "")),
                content_type=str(f.get("content_type", "")),
                size_bytes=int(f.get("size_bytes", 0)),
                role=str(f.get("role", "")),
            )
            for f in result.files
        ],
        logs=result.logs,
        meta=meta,
        finish_time=ts(result.finished_at),
    )
