"""Every RPC called as every role, and without a valid token.

EXPECTED is written here, independently of the `(voxmesh.v1.access)` options in the protos: the
test fails if an RPC is added without updating it, if a rule in the protos changes, or if the
guard lets the wrong caller through. Each allowed call is a real, valid request on objects the
caller owns, and must succeed; each refused call must be UNAUTHENTICATED (no valid token) or
PERMISSION_DENIED (role too low).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from control.db.models import Job, JobStatus, SavedVoice, Upload, UploadChunk, UserRole
from control.sample_data import tone_wav
from control.server import SERVICES
from tests.harness import Caller, Client, Harness
from voxmesh.v1 import (
    auth_pb2,
    files_pb2,
    jobs_pb2,
    keys_pb2,
    projects_pb2,
    results_pb2,
    settings_pb2,
    users_pb2,
    voices_pb2,
    webhooks_pb2,
)

PUBLIC, VIEWER, EDITOR, ADMIN = "public", "viewer", "editor", "admin"
RANK = {PUBLIC: 0, VIEWER: 1, EDITOR: 2, ADMIN: 3}

EXPECTED = {
    "AuthService/Login": PUBLIC,
    "AuthService/RefreshToken": PUBLIC,
    "AuthService/VerifyToken": PUBLIC,
    "AuthService/Logout": PUBLIC,
    "UserService/CreateUser": ADMIN,
    "UserService/GetUser": ADMIN,
    "UserService/ListUsers": ADMIN,
    "UserService/UpdateUser": ADMIN,
    "UserService/DeleteUser": ADMIN,
    "UserService/GetCurrentUser": VIEWER,
    "UserService/UpdateCurrentUser": VIEWER,
    "UserService/ChangePassword": VIEWER,
    "ProjectService/CreateProject": EDITOR,
    "ProjectService/GetProject": VIEWER,
    "ProjectService/ListProjects": VIEWER,
    "ProjectService/UpdateProject": EDITOR,
    "ProjectService/DeleteProject": EDITOR,
    "JobService/CreateJob": EDITOR,
    "JobService/GetJob": VIEWER,
    "JobService/ListJobs": VIEWER,
    "JobService/UpdateJob": EDITOR,
    "JobService/DeleteJob": EDITOR,
    "JobService/StartJob": EDITOR,
    "JobService/CancelJob": EDITOR,
    "JobService/RetryJob": EDITOR,
    "JobService/WatchJob": VIEWER,
    "JobService/WatchJobs": VIEWER,
    "JobResultService/GetJobResult": VIEWER,
    "JobResultService/ListJobResults": VIEWER,
    "FileService/UploadFile": EDITOR,
    "FileService/StartUpload": EDITOR,
    "FileService/UploadChunk": EDITOR,
    "FileService/GetUpload": EDITOR,
    "FileService/FinishUpload": EDITOR,
    "FileService/GetFile": VIEWER,
    "FileService/DownloadFile": VIEWER,
    "VoiceService/ListVoices": VIEWER,
    "VoiceService/ListModels": VIEWER,
    "VoiceService/DeleteVoice": EDITOR,
    "SettingsService/ListSettings": VIEWER,
    "SettingsService/SetSetting": EDITOR,
    "SettingsService/DeleteSetting": EDITOR,
    "KeyService/CreateApiKey": VIEWER,
    "KeyService/ListApiKeys": VIEWER,
    "KeyService/RevokeApiKey": VIEWER,
    "WebhookService/ListWebhookDeliveries": VIEWER,
    "SettingsService/GetEffectiveSettings": VIEWER,
}

Call = Callable[[Harness, Caller, Client], Awaitable[Any]]


async def _owned_project(h: Harness, who: Caller) -> str:
    return str(await h.project(who.user_id))


async def _owned_job(h: Harness, who: Caller, status: JobStatus = JobStatus.PENDING) -> str:
    return str(await h.job(await h.project(who.user_id), who.user_id, status=status))


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def login(h: Harness, who: Caller, c: Client) -> Any:
    return await c.auth.Login(auth_pb2.LoginRequest(username=who.username, password=who.password))


async def refresh(h: Harness, who: Caller, c: Client) -> Any:
    return await c.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=who.refresh))


async def verify(h: Harness, who: Caller, c: Client) -> Any:
    return await c.auth.VerifyToken(auth_pb2.VerifyTokenRequest(token=who.access))


async def logout(h: Harness, who: Caller, c: Client) -> Any:
    return await c.auth.Logout(auth_pb2.LogoutRequest(refresh_token=who.refresh))


async def create_user(h: Harness, who: Caller, c: Client) -> Any:
    return await c.users.CreateUser(
        users_pb2.CreateUserRequest(
            username=f"new_{who.username}",
            password="a-long-password",
            role=users_pb2.USER_ROLE_VIEWER,
        )
    )


async def get_user(h: Harness, who: Caller, c: Client) -> Any:
    return await c.users.GetUser(users_pb2.GetUserRequest(user_id=str(who.user_id)))


async def list_users(h: Harness, who: Caller, c: Client) -> Any:
    return await c.users.ListUsers(users_pb2.ListUsersRequest())


async def update_user(h: Harness, who: Caller, c: Client) -> Any:
    target = await h.user(UserRole.VIEWER, login=False)
    return await c.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user_id=str(target.user_id), update_mask=mask("display_name"), display_name="Renamed"
        )
    )


async def delete_user(h: Harness, who: Caller, c: Client) -> Any:
    target = await h.user(UserRole.VIEWER, login=False)
    return await c.users.DeleteUser(users_pb2.DeleteUserRequest(user_id=str(target.user_id)))


async def get_current_user(h: Harness, who: Caller, c: Client) -> Any:
    return await c.users.GetCurrentUser(users_pb2.GetCurrentUserRequest())


async def update_current_user(h: Harness, who: Caller, c: Client) -> Any:
    return await c.users.UpdateCurrentUser(
        users_pb2.UpdateCurrentUserRequest(update_mask=mask("bio"), bio="Hello")
    )


async def change_password(h: Harness, who: Caller, c: Client) -> Any:
    return await c.users.ChangePassword(
        users_pb2.ChangePasswordRequest(
            current_password=who.password, new_password="brand-new-pass"
        )
    )


async def create_project(h: Harness, who: Caller, c: Client) -> Any:
    return await c.projects.CreateProject(projects_pb2.CreateProjectRequest(name="Mine"))


async def get_project(h: Harness, who: Caller, c: Client) -> Any:
    return await c.projects.GetProject(
        projects_pb2.GetProjectRequest(project_id=await _owned_project(h, who))
    )


async def list_projects(h: Harness, who: Caller, c: Client) -> Any:
    return await c.projects.ListProjects(projects_pb2.ListProjectsRequest())


async def update_project(h: Harness, who: Caller, c: Client) -> Any:
    return await c.projects.UpdateProject(
        projects_pb2.UpdateProjectRequest(
            project_id=await _owned_project(h, who), update_mask=mask("name"), name="Renamed"
        )
    )


async def delete_project(h: Harness, who: Caller, c: Client) -> Any:
    return await c.projects.DeleteProject(
        projects_pb2.DeleteProjectRequest(project_id=await _owned_project(h, who))
    )


async def create_job(h: Harness, who: Caller, c: Client) -> Any:
    return await c.jobs.CreateJob(
        jobs_pb2.CreateJobRequest(
            project_id=await _owned_project(h, who), tts=jobs_pb2.TtsParams(text="Hello.")
        )
    )


async def get_job(h: Harness, who: Caller, c: Client) -> Any:
    return await c.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=await _owned_job(h, who)))


async def list_jobs(h: Harness, who: Caller, c: Client) -> Any:
    return await c.jobs.ListJobs(jobs_pb2.ListJobsRequest())


async def update_job(h: Harness, who: Caller, c: Client) -> Any:
    return await c.jobs.UpdateJob(
        jobs_pb2.UpdateJobRequest(
            job_id=await _owned_job(h, who), update_mask=mask("title"), title="New title"
        )
    )


async def delete_job(h: Harness, who: Caller, c: Client) -> Any:
    return await c.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=await _owned_job(h, who)))


async def start_job(h: Harness, who: Caller, c: Client) -> Any:
    job_id = await _owned_job(h, who)
    async with h.app.sessions() as session:  # a job whose creator has auto_start_jobs=false
        job = await session.get(Job, uuid.UUID(job_id))
        assert job is not None
        job.awaiting_start = True
        await session.commit()
    return await c.jobs.StartJob(jobs_pb2.StartJobRequest(job_id=job_id))


async def cancel_job(h: Harness, who: Caller, c: Client) -> Any:
    return await c.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=await _owned_job(h, who)))


async def retry_job(h: Harness, who: Caller, c: Client) -> Any:
    job_id = await _owned_job(h, who, JobStatus.FAILED)
    return await c.jobs.RetryJob(jobs_pb2.RetryJobRequest(job_id=job_id))


async def _first_message(call: Any) -> Any:
    """A stream is allowed if it opens: errors arrive at the first read, before any event."""
    try:
        return await asyncio.wait_for(call.read(), 1.0)
    except TimeoutError:
        return None
    finally:
        call.cancel()


async def watch_job(h: Harness, who: Caller, c: Client) -> Any:
    return await _first_message(
        c.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=await _owned_job(h, who)))
    )


async def watch_jobs(h: Harness, who: Caller, c: Client) -> Any:
    project = await _owned_project(h, who)
    return await _first_message(c.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(project_id=project)))


async def get_job_result(h: Harness, who: Caller, c: Client) -> Any:
    job_id = await _owned_job(h, who, JobStatus.COMPLETED)
    await h.result(uuid.UUID(job_id))
    return await c.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=job_id))


async def list_job_results(h: Harness, who: Caller, c: Client) -> Any:
    return await c.results.ListJobResults(results_pb2.ListJobResultsRequest())


WAV = tone_wav(seconds=0.1)


async def _upload_id(h: Harness, who: Caller, received: bool = False) -> str:
    async with h.app.sessions() as session:
        row = Upload(id=uuid.uuid4(), owner_id=who.user_id, filename="a.wav",
                     content_type="audio/wav", size_bytes=len(WAV), received_bytes=0)  # fmt: skip
        session.add(row)
        if received:
            session.add(UploadChunk(upload_id=row.id, offset=0, data=WAV))
            row.received_bytes = len(WAV)
        await session.commit()
        return str(row.id)


async def upload_file(h: Harness, who: Caller, c: Client) -> Any:
    return await c.files.UploadFile(files_pb2.UploadFileRequest(filename="a.wav", data=WAV))


async def start_upload(h: Harness, who: Caller, c: Client) -> Any:
    return await c.files.StartUpload(
        files_pb2.StartUploadRequest(filename="a.wav", size_bytes=len(WAV))
    )


async def upload_chunk(h: Harness, who: Caller, c: Client) -> Any:
    return await c.files.UploadChunk(
        files_pb2.UploadChunkRequest(upload_id=await _upload_id(h, who), offset=0, data=WAV)
    )


async def get_upload(h: Harness, who: Caller, c: Client) -> Any:
    return await c.files.GetUpload(files_pb2.GetUploadRequest(upload_id=await _upload_id(h, who)))


async def finish_upload(h: Harness, who: Caller, c: Client) -> Any:
    upload_id = await _upload_id(h, who, received=True)
    sha = hashlib.sha256(WAV).hexdigest()
    return await c.files.FinishUpload(
        files_pb2.FinishUploadRequest(upload_id=upload_id, sha256=sha)
    )


async def get_file(h: Harness, who: Caller, c: Client) -> Any:
    return await c.files.GetFile(files_pb2.GetFileRequest(file_id=str(await h.file(who.user_id))))


async def download_file(h: Harness, who: Caller, c: Client) -> Any:
    assert h.app.mesh is not None
    file_id = await h.file(who.user_id, WAV)
    return await _first_message(
        c.files.DownloadFile(files_pb2.DownloadFileRequest(file_id=str(file_id)))
    )


async def list_voices(h: Harness, who: Caller, c: Client) -> Any:
    return await c.voices.ListVoices(voices_pb2.ListVoicesRequest(engine="piper"))


async def list_models(h: Harness, who: Caller, c: Client) -> Any:
    return await c.voices.ListModels(voices_pb2.ListModelsRequest(job_type="stt"))


async def delete_voice(h: Harness, who: Caller, c: Client) -> Any:
    project = await _owned_project(h, who)
    async with h.app.sessions() as session:
        session.add(SavedVoice(project_id=uuid.UUID(project), name="narrator", created_by=who.user_id,
                               profile={"base_voice": "en_US-joe-medium"}))  # fmt: skip
        await session.commit()
    return await c.voices.DeleteVoice(
        voices_pb2.DeleteVoiceRequest(project_id=project, name="narrator")
    )


async def list_settings(h: Harness, who: Caller, c: Client) -> Any:
    return await c.settings.ListSettings(
        settings_pb2.ListSettingsRequest(scope=settings_pb2.SETTING_SCOPE_GLOBAL)
    )


async def set_setting(h: Harness, who: Caller, c: Client) -> Any:
    return await c.settings.SetSetting(
        settings_pb2.SetSettingRequest(
            key="preferred_voice",
            value=struct_pb2.Value(string_value="en_US-joe-medium"),
            scope=settings_pb2.SETTING_SCOPE_USER,
        )
    )


async def delete_setting(h: Harness, who: Caller, c: Client) -> Any:
    await h.setting("enable_notifications", False, who.user_id)
    return await c.settings.DeleteSetting(
        settings_pb2.DeleteSettingRequest(
            key="enable_notifications", scope=settings_pb2.SETTING_SCOPE_USER
        )
    )


async def get_effective_settings(h: Harness, who: Caller, c: Client) -> Any:
    return await c.settings.GetEffectiveSettings(settings_pb2.GetEffectiveSettingsRequest())


async def create_api_key(h: Harness, who: Caller, c: Client) -> Any:
    return await c.keys.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="ci"))


async def list_api_keys(h: Harness, who: Caller, c: Client) -> Any:
    return await c.keys.ListApiKeys(keys_pb2.ListApiKeysRequest())


async def revoke_api_key(h: Harness, who: Caller, c: Client) -> Any:
    made = await who.client.keys.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="to revoke"))
    return await c.keys.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(key_id=made.key.id))


async def list_webhook_deliveries(h: Harness, who: Caller, c: Client) -> Any:
    job = await _owned_job(h, who)
    return await c.webhooks.ListWebhookDeliveries(
        webhooks_pb2.ListWebhookDeliveriesRequest(job_id=job)
    )


CALLS: dict[str, Call] = {
    "AuthService/Login": login,
    "AuthService/RefreshToken": refresh,
    "AuthService/VerifyToken": verify,
    "AuthService/Logout": logout,
    "UserService/CreateUser": create_user,
    "UserService/GetUser": get_user,
    "UserService/ListUsers": list_users,
    "UserService/UpdateUser": update_user,
    "UserService/DeleteUser": delete_user,
    "UserService/GetCurrentUser": get_current_user,
    "UserService/UpdateCurrentUser": update_current_user,
    "UserService/ChangePassword": change_password,
    "ProjectService/CreateProject": create_project,
    "ProjectService/GetProject": get_project,
    "ProjectService/ListProjects": list_projects,
    "ProjectService/UpdateProject": update_project,
    "ProjectService/DeleteProject": delete_project,
    "JobService/CreateJob": create_job,
    "JobService/GetJob": get_job,
    "JobService/ListJobs": list_jobs,
    "JobService/UpdateJob": update_job,
    "JobService/DeleteJob": delete_job,
    "JobService/StartJob": start_job,
    "JobService/CancelJob": cancel_job,
    "JobService/RetryJob": retry_job,
    "JobService/WatchJob": watch_job,
    "JobService/WatchJobs": watch_jobs,
    "JobResultService/GetJobResult": get_job_result,
    "JobResultService/ListJobResults": list_job_results,
    "FileService/UploadFile": upload_file,
    "FileService/StartUpload": start_upload,
    "FileService/UploadChunk": upload_chunk,
    "FileService/GetUpload": get_upload,
    "FileService/FinishUpload": finish_upload,
    "FileService/GetFile": get_file,
    "FileService/DownloadFile": download_file,
    "VoiceService/ListVoices": list_voices,
    "VoiceService/ListModels": list_models,
    "VoiceService/DeleteVoice": delete_voice,
    "SettingsService/ListSettings": list_settings,
    "SettingsService/SetSetting": set_setting,
    "SettingsService/DeleteSetting": delete_setting,
    "SettingsService/GetEffectiveSettings": get_effective_settings,
    "KeyService/CreateApiKey": create_api_key,
    "KeyService/ListApiKeys": list_api_keys,
    "KeyService/RevokeApiKey": revoke_api_key,
    "WebhookService/ListWebhookDeliveries": list_webhook_deliveries,
}

# What an API key of each role may not do although its role would: make more keys.
KEYS_MAY_NOT = {"KeyService/CreateApiKey"}


def test_every_served_rpc_has_an_expected_rule() -> None:
    served = {
        f"{descriptor.name}/{method.name}"
        for descriptor, _, _ in SERVICES
        for method in descriptor.methods
    }
    assert served == set(EXPECTED), "update EXPECTED and CALLS for new or removed RPCs"
    assert set(CALLS) == set(EXPECTED)


@pytest.mark.parametrize("rpc", sorted(EXPECTED))
async def test_rpc_as_every_caller(harness: Harness, rpc: str) -> None:
    rule, call = EXPECTED[rpc], CALLS[rpc]
    outcomes: dict[str, str] = {}
    # Without a token, and with a token that is not one of ours.
    for label, token in [("anonymous", None), ("forged token", "not.a.jwt")]:
        caller = await harness.user(UserRole.VIEWER)  # credentials for the public RPCs
        try:
            await call(harness, caller, harness.client(token))
            outcomes[label] = "OK"
        except grpc.aio.AioRpcError as err:
            outcomes[label] = err.code().name
    for role in (UserRole.VIEWER, UserRole.EDITOR, UserRole.ADMIN):
        caller = await harness.user(role)
        try:
            await call(harness, caller, caller.client)
            outcomes[role.value.lower()] = "OK"
        except grpc.aio.AioRpcError as err:
            outcomes[role.value.lower()] = f"{err.code().name}: {err.details()}"

    # The same, through an API key of each role (its owner has that role).
    for role in (UserRole.VIEWER, UserRole.EDITOR, UserRole.ADMIN):
        caller = await harness.user(role)
        key_client = harness.client(await harness.key(caller))
        label = f"{role.value.lower()} key"
        try:
            await call(harness, caller, key_client)
            outcomes[label] = "OK"
        except grpc.aio.AioRpcError as err:
            outcomes[label] = f"{err.code().name}: {err.details()}"

    expected: dict[str, str] = {}
    for label in ("anonymous", "forged token"):
        expected[label] = "OK" if rule == PUBLIC else "UNAUTHENTICATED"
    for role in ("viewer", "editor", "admin"):
        expected[role] = "OK" if RANK[role] >= RANK[rule] else "PERMISSION_DENIED"
        through_key = "PERMISSION_DENIED" if rpc in KEYS_MAY_NOT else expected[role]
        expected[f"{role} key"] = through_key
    got = {k: v.split(":")[0] for k, v in outcomes.items()}
    assert got == expected, f"{rpc}: {outcomes}"
