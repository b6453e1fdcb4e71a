"""The resource API doing what a user expects: projects with jobs_count, jobs created with
their type's defaults, filters and pagination with a total and a stable order, results,
settings resolution, and user management."""

from __future__ import annotations

import uuid

import grpc
from google.protobuf import field_mask_pb2, struct_pb2

from control.db.models import JobStatus, UserRole
from tests.harness import Harness, rpc_error
from voxmesh.v1 import (
    auth_pb2,
    jobs_pb2,
    pagination_pb2,
    projects_pb2,
    results_pb2,
    settings_pb2,
    users_pb2,
)

Mask = field_mask_pb2.FieldMask


async def test_project_lifecycle_with_jobs_count(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    c = editor.client
    created = (
        await c.projects.CreateProject(
            projects_pb2.CreateProjectRequest(name="  Podcasts  ", description="Weekly\nepisodes")
        )
    ).project
    assert created.name == "Podcasts"  # trimmed
    assert created.owner_id == str(editor.user_id) and created.owner_username == editor.username
    assert created.jobs_count == 0
    for text in ("one", "two"):
        await c.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(project_id=created.id, tts=jobs_pb2.TtsParams(text=text))
        )
    got = (
        await c.projects.GetProject(projects_pb2.GetProjectRequest(project_id=created.id))
    ).project
    assert got.jobs_count == 2
    updated = (
        await c.projects.UpdateProject(
            projects_pb2.UpdateProjectRequest(
                project_id=created.id, update_mask=Mask(paths=["description"]), description="Daily"
            )
        )
    ).project
    assert updated.description == "Daily" and updated.name == "Podcasts"
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()
    deleted = await c.projects.DeleteProject(
        projects_pb2.DeleteProjectRequest(project_id=created.id, force=True)
    )
    assert deleted.deleted_jobs == 2
    assert (await c.jobs.ListJobs(jobs_pb2.ListJobsRequest())).page.total_size == 0
    gone = await rpc_error(
        c.projects.GetProject(projects_pb2.GetProjectRequest(project_id=created.id))
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_admin_may_change_any_project_and_viewers_read_all(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    admin = await harness.user(UserRole.ADMIN)
    viewer = await harness.user(UserRole.VIEWER)
    project = str(await harness.project(editor.user_id, name="Editor's"))
    await admin.client.projects.UpdateProject(
        projects_pb2.UpdateProjectRequest(
            project_id=project, update_mask=Mask(paths=["name"]), name="Renamed by admin"
        )
    )
    seen = await viewer.client.projects.ListProjects(
        projects_pb2.ListProjectsRequest(owner_id=str(editor.user_id))
    )
    assert [p.name for p in seen.projects] == ["Renamed by admin"]


async def test_create_job_of_each_type_stores_pending_with_defaults(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    await harness.setting("preferred_voice", "en_US-joe-medium", editor.user_id)
    await harness.setting("default_language", "en-GB")  # global
    project = str(await harness.project(editor.user_id))
    audio = str(await harness.file(editor.user_id))
    requests = {
        "stt": jobs_pb2.CreateJobRequest(project_id=project, input_file_id=audio, stt=jobs_pb2.SttParams(word_timestamps=True)),
        "tts": jobs_pb2.CreateJobRequest(project_id=project, title="Greeting", tts=jobs_pb2.TtsParams(text="Hello there.")),
        "voice_cloning": jobs_pb2.CreateJobRequest(project_id=project, input_file_id=audio, voice_cloning=jobs_pb2.VoiceCloningParams(text="In your voice.")),
        "dubbing": jobs_pb2.CreateJobRequest(project_id=project, input_file_id=audio, dubbing=jobs_pb2.DubbingParams(target_language="pt")),
        "ai_stories": jobs_pb2.CreateJobRequest(project_id=project, ai_stories=jobs_pb2.AiStoriesParams(prompt="A shy dragon")),
    }  # fmt: skip
    jobs = {}
    for which, request in requests.items():
        job = (await editor.client.jobs.CreateJob(request)).job
        assert job.status == jobs_pb2.JOB_STATUS_PENDING and job.progress == 0
        assert job.WhichOneof("params") == which
        assert job.created_by == str(editor.user_id)
        jobs[which] = job
    assert jobs["stt"].type == jobs_pb2.JOB_TYPE_STT and jobs["stt"].input_file_id == audio
    assert jobs["stt"].stt.task == jobs_pb2.STT_TASK_TRANSCRIBE and jobs["stt"].stt.word_timestamps
    assert jobs["tts"].title == "Greeting"
    assert jobs["tts"].tts.voice == "en_US-joe-medium"  # the user's preferred_voice
    assert jobs["tts"].tts.speed == 1.0 and jobs["tts"].tts.format == jobs_pb2.AUDIO_FORMAT_WAV
    assert abs(jobs["dubbing"].dubbing.max_stretch - 1.3) < 1e-6  # a float32 field
    assert jobs["ai_stories"].ai_stories.language == "en-GB"  # the global default_language
    assert jobs["ai_stories"].ai_stories.target_words == 400
    fetched = (await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=jobs["tts"].id))).job
    assert fetched.tts == jobs["tts"].tts and fetched.create_time == jobs["tts"].create_time


async def test_text_limit_comes_from_settings(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    await harness.setting("max_text_length", 100)
    project = str(await harness.project(editor.user_id))
    err = await rpc_error(
        editor.client.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(project_id=project, tts=jobs_pb2.TtsParams(text="a" * 101))
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 100" in (err.details() or "")


async def test_list_jobs_filters_and_pages_with_total_and_stable_order(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    p1 = await harness.project(editor.user_id)
    p2 = await harness.project(editor.user_id)
    ids = [str(await harness.job(p1, editor.user_id, title=f"job {i}")) for i in range(7)]
    await harness.job(p2, editor.user_id, status=JobStatus.COMPLETED)
    await harness.job(p1, editor.user_id, status=JobStatus.FAILED)
    c = editor.client.jobs

    seen: list[str] = []
    token = ""
    while True:
        page = await c.ListJobs(
            jobs_pb2.ListJobsRequest(
                project_id=str(p1), status=jobs_pb2.JOB_STATUS_PENDING,
                page=pagination_pb2.PageRequest(page_size=3, page_token=token),
            )
        )  # fmt: skip
        assert page.page.total_size == 7
        seen += [j.id for j in page.jobs]
        token = page.page.next_page_token
        if not token:
            break
    assert len(seen) == 7 and set(seen) == set(ids)  # nothing skipped, nothing twice
    assert seen == list(reversed(ids))  # newest first
    # The same query again gives the same order.
    again = await c.ListJobs(
        jobs_pb2.ListJobsRequest(project_id=str(p1), status=jobs_pb2.JOB_STATUS_PENDING)
    )
    assert [j.id for j in again.jobs] == seen and not again.page.next_page_token

    all_jobs = await c.ListJobs(jobs_pb2.ListJobsRequest())
    assert all_jobs.page.total_size == 9
    done = await c.ListJobs(jobs_pb2.ListJobsRequest(status=jobs_pb2.JOB_STATUS_COMPLETED))
    assert done.page.total_size == 1 and done.jobs[0].project_id == str(p2)
    tts = await c.ListJobs(
        jobs_pb2.ListJobsRequest(type=jobs_pb2.JOB_TYPE_TTS, created_by=str(editor.user_id))
    )
    assert tts.page.total_size == 9
    stt = await c.ListJobs(jobs_pb2.ListJobsRequest(type=jobs_pb2.JOB_TYPE_STT))
    assert stt.page.total_size == 0 and not stt.jobs


async def test_update_and_delete_job(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    owner = await harness.user(UserRole.EDITOR)
    project = await harness.project(owner.user_id)
    job_id = str(await harness.job(project, editor.user_id))
    updated = (
        await editor.client.jobs.UpdateJob(
            jobs_pb2.UpdateJobRequest(
                job_id=job_id, update_mask=Mask(paths=["title", "params"]), title="Better",
                tts=jobs_pb2.TtsParams(text="New words", speed=1.5),
            )
        )
    ).job  # fmt: skip
    assert (
        updated.title == "Better" and updated.tts.text == "New words" and updated.tts.speed == 1.5
    )
    # The project's owner may delete a job someone else created in it.
    await owner.client.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job_id))
    err = await rpc_error(editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id)))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_job_results(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    viewer = await harness.user(UserRole.VIEWER)
    project = await harness.project(editor.user_id)
    done = await harness.job(project, editor.user_id, status=JobStatus.COMPLETED)
    await harness.result(done, {"duration_seconds": 2.5, "voice": "en_US-joe-medium"})
    other = await harness.job(
        await harness.project(editor.user_id), editor.user_id, status=JobStatus.COMPLETED
    )
    await harness.result(other)
    result = (
        await viewer.client.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=str(done)))
    ).result
    assert result.job_type == jobs_pb2.JOB_TYPE_TTS and result.project_id == str(project)
    assert result.meta["duration_seconds"] == 2.5 and result.meta["voice"] == "en_US-joe-medium"
    assert result.logs == "worker: done\n" and result.HasField("finish_time")
    listed = await viewer.client.results.ListJobResults(
        results_pb2.ListJobResultsRequest(project_id=str(project))
    )
    assert [r.job_id for r in listed.results] == [str(done)] and listed.page.total_size == 1
    everything = await viewer.client.results.ListJobResults(
        results_pb2.ListJobResultsRequest(job_type=jobs_pb2.JOB_TYPE_TTS)
    )
    assert everything.page.total_size == 2


async def test_settings_resolve_user_over_global_over_default(harness: Harness) -> None:
    admin = await harness.user(UserRole.ADMIN)
    editor = await harness.user(UserRole.EDITOR)
    s = settings_pb2

    def effective(
        response: settings_pb2.GetEffectiveSettingsResponse,
    ) -> dict[str, tuple[object, int]]:
        out = {}
        for item in response.settings:
            kind = item.value.WhichOneof("kind")
            out[item.key] = (getattr(item.value, kind), item.source)
        return out

    before = effective(
        await editor.client.settings.GetEffectiveSettings(s.GetEffectiveSettingsRequest())
    )
    assert before["max_concurrent_jobs"] == (5, s.SETTING_SOURCE_DEFAULT)
    await admin.client.settings.SetSetting(
        s.SetSettingRequest(
            key="max_concurrent_jobs",
            value=struct_pb2.Value(number_value=3),
            scope=s.SETTING_SCOPE_GLOBAL,
        )
    )
    await admin.client.settings.SetSetting(
        s.SetSettingRequest(
            key="max_concurrent_jobs",
            value=struct_pb2.Value(number_value=8),
            scope=s.SETTING_SCOPE_USER,
            user_id=str(editor.user_id),
        )
    )
    stored = await editor.client.settings.SetSetting(
        s.SetSettingRequest(
            key="default_language",
            value=struct_pb2.Value(string_value="pt-BR"),
            scope=s.SETTING_SCOPE_USER,
        )
    )
    assert (
        stored.setting.user_id == str(editor.user_id)
        and stored.setting.value.string_value == "pt-BR"
    )
    # Setting it again updates in place (no duplicate).
    await editor.client.settings.SetSetting(
        s.SetSettingRequest(
            key="default_language",
            value=struct_pb2.Value(string_value="it"),
            scope=s.SETTING_SCOPE_USER,
        )
    )
    mine = effective(
        await editor.client.settings.GetEffectiveSettings(s.GetEffectiveSettingsRequest())
    )
    assert mine["max_concurrent_jobs"] == (8, s.SETTING_SOURCE_USER)
    assert mine["default_language"] == ("it", s.SETTING_SOURCE_USER)
    assert mine["enable_notifications"] == (True, s.SETTING_SOURCE_DEFAULT)
    theirs = effective(
        await admin.client.settings.GetEffectiveSettings(s.GetEffectiveSettingsRequest())
    )
    assert theirs["max_concurrent_jobs"] == (3, s.SETTING_SOURCE_GLOBAL)
    listed = await editor.client.settings.ListSettings(
        s.ListSettingsRequest(scope=s.SETTING_SCOPE_USER)
    )
    assert [x.key for x in listed.settings] == ["default_language", "max_concurrent_jobs"]
    await editor.client.settings.DeleteSetting(
        s.DeleteSettingRequest(key="default_language", scope=s.SETTING_SCOPE_USER)
    )
    reverted = effective(
        await editor.client.settings.GetEffectiveSettings(s.GetEffectiveSettingsRequest())
    )
    assert reverted["default_language"] == ("en", s.SETTING_SOURCE_DEFAULT)
    # An admin can read anyone's.
    other = effective(
        await admin.client.settings.GetEffectiveSettings(
            s.GetEffectiveSettingsRequest(user_id=str(editor.user_id))
        )
    )
    assert other["max_concurrent_jobs"] == (8, s.SETTING_SOURCE_USER)


async def test_admin_manages_users(harness: Harness) -> None:
    admin = await harness.user(UserRole.ADMIN)
    u = admin.client.users
    created = (
        await u.CreateUser(
            users_pb2.CreateUserRequest(
                username="new.person", password="first-password", email="p@example.com",
                role=users_pb2.USER_ROLE_EDITOR, display_name="New Person",
            )
        )
    ).user  # fmt: skip
    assert created.profile.role == users_pb2.USER_ROLE_EDITOR and created.is_active
    assert created.profile.display_name == "New Person" and created.email == "p@example.com"
    listed = await u.ListUsers(users_pb2.ListUsersRequest(role=users_pb2.USER_ROLE_EDITOR))
    assert [x.username for x in listed.users] == ["new.person"]
    reset = (
        await u.UpdateUser(
            users_pb2.UpdateUserRequest(
                user_id=created.id, update_mask=Mask(paths=["password", "role"]),
                password="reset-password", role=users_pb2.USER_ROLE_ADMIN,
            )
        )
    ).user  # fmt: skip
    assert reset.profile.role == users_pb2.USER_ROLE_ADMIN
    login = await harness.anonymous.auth.Login(
        auth_pb2.LoginRequest(username="new.person", password="reset-password")
    )
    assert login.user.id == created.id
    # With a second admin, the first may now be demoted; then deleted (it owns nothing).
    await u.DeleteUser(users_pb2.DeleteUserRequest(user_id=created.id))
    err = await rpc_error(u.GetUser(users_pb2.GetUserRequest(user_id=created.id)))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_own_profile(harness: Harness) -> None:
    viewer = await harness.user(UserRole.VIEWER)
    me = (
        await viewer.client.users.UpdateCurrentUser(
            users_pb2.UpdateCurrentUserRequest(
                update_mask=Mask(paths=["display_name", "bio"]), display_name="Vee", bio="Listens."
            )
        )
    ).user
    assert me.profile.display_name == "Vee" and me.profile.bio == "Listens."
    assert me.profile.role == users_pb2.USER_ROLE_VIEWER


async def test_unknown_ids_everywhere_are_not_found(harness: Harness) -> None:
    admin = await harness.user(UserRole.ADMIN)
    missing = str(uuid.uuid4())
    for call in (
        admin.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=missing)),
        admin.client.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=missing)),
        admin.client.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=missing)),
        admin.client.users.GetUser(users_pb2.GetUserRequest(user_id=missing)),
        admin.client.projects.DeleteProject(projects_pb2.DeleteProjectRequest(project_id=missing)),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
