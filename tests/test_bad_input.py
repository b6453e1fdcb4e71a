"""Bad input on every service gets the right gRPC status and a message a person understands,
and changes nothing in the database (a digest of every row of every table is compared)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2, status_pb2

from control.db.models import JobStatus, UserRole
from tests.harness import Harness
from voxmesh.v1 import (
    jobs_pb2,
    pagination_pb2,
    projects_pb2,
    results_pb2,
    settings_pb2,
    users_pb2,
    voices_pb2,
)


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXISTS = grpc.StatusCode.ALREADY_EXISTS
TOO_BIG = grpc.StatusCode.RESOURCE_EXHAUSTED

Mask = field_mask_pb2.FieldMask
Page = pagination_pb2.PageRequest
Job = jobs_pb2.CreateJobRequest
Value = struct_pb2.Value
USER = settings_pb2.SETTING_SCOPE_USER
GLOBAL = settings_pb2.SETTING_SCOPE_GLOBAL


def field_violations(err: grpc.aio.AioRpcError) -> list[str]:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            fields = []
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    fields += [v.field for v in bad.field_violations]
            return fields
    return []


async def test_bad_input_is_refused_clearly_and_changes_nothing(harness: Harness) -> None:
    h = harness
    admin = await h.user(UserRole.ADMIN, name="the_admin")
    editor = await h.user(UserRole.EDITOR, name="eddie")
    other = await h.user(UserRole.EDITOR, name="other_editor")
    viewer = await h.user(UserRole.VIEWER, name="vicky")
    project = str(await h.project(editor.user_id, name="Mine"))
    others_project = str(await h.project(other.user_id, name="Theirs"))
    pending = str(await h.job(uuid.UUID(project), editor.user_id))
    running = str(await h.job(uuid.UUID(project), editor.user_id, status=JobStatus.RUNNING))
    quiet_project = str(await h.project(editor.user_id, name="Quiet"))
    await h.job(uuid.UUID(quiet_project), editor.user_id)
    busy_project = str(await h.project(editor.user_id, name="Busy"))
    await h.job(uuid.UUID(busy_project), editor.user_id, status=JobStatus.RUNNING)
    audio = str(await h.file(editor.user_id))
    others_audio = str(await h.file(other.user_id))
    missing = str(uuid.uuid4())
    page_token = (
        await editor.client.jobs.ListJobs(jobs_pb2.ListJobsRequest(page=Page(page_size=1)))
    ).page.next_page_token
    e, a, v = editor.client, admin.client, viewer.client
    tts = jobs_pb2.TtsParams

    # (what, call, expected code, words the message must contain, field named in details or None)
    cases: list[tuple[str, Callable[[], Any], grpc.StatusCode, str, str | None]] = [
        # projects
        ("empty project name", lambda: e.projects.CreateProject(projects_pb2.CreateProjectRequest(name="  ")), INVALID, "name is required", "name"),
        ("long project name", lambda: e.projects.CreateProject(projects_pb2.CreateProjectRequest(name="n" * 201)), INVALID, "at most 200", "name"),
        ("long description", lambda: e.projects.CreateProject(projects_pb2.CreateProjectRequest(name="ok", description="d" * 2001)), INVALID, "at most 2000", "description"),
        ("NUL in name", lambda: e.projects.CreateProject(projects_pb2.CreateProjectRequest(name="a\x00b")), INVALID, "control characters", "name"),
        ("duplicate project", lambda: e.projects.CreateProject(projects_pb2.CreateProjectRequest(name="Mine")), EXISTS, "already has a project named 'Mine'", "name"),
        ("malformed project id", lambda: e.projects.GetProject(projects_pb2.GetProjectRequest(project_id="42")), INVALID, "must be an id", "project_id"),
        ("missing project id", lambda: e.projects.GetProject(projects_pb2.GetProjectRequest()), INVALID, "project_id is required", "project_id"),
        ("unknown project", lambda: e.projects.GetProject(projects_pb2.GetProjectRequest(project_id=missing)), NOT_FOUND, f"no project with id {missing}", "project_id"),
        ("empty update mask", lambda: e.projects.UpdateProject(projects_pb2.UpdateProjectRequest(project_id=project, name="x")), INVALID, "update_mask must name", "update_mask"),
        ("read-only field in mask", lambda: e.projects.UpdateProject(projects_pb2.UpdateProjectRequest(project_id=project, update_mask=Mask(paths=["owner_id"]))), INVALID, "cannot be changed here: owner_id", "update_mask"),
        ("someone else's project", lambda: e.projects.UpdateProject(projects_pb2.UpdateProjectRequest(project_id=others_project, update_mask=Mask(paths=["name"]), name="mine now")), DENIED, "only the owner", None),
        ("delete project with jobs", lambda: e.projects.DeleteProject(projects_pb2.DeleteProjectRequest(project_id=quiet_project)), PRECONDITION, "pass force=true", None),
        ("delete project with running job", lambda: e.projects.DeleteProject(projects_pb2.DeleteProjectRequest(project_id=busy_project, force=True)), PRECONDITION, "running job", None),
        ("negative page size", lambda: e.projects.ListProjects(projects_pb2.ListProjectsRequest(page=Page(page_size=-5))), INVALID, "between 1 and 500", "page.page_size"),
        ("viewer creates project", lambda: v.projects.CreateProject(projects_pb2.CreateProjectRequest(name="nope")), DENIED, "needs the editor role", None),
        # jobs
        ("job without params", lambda: e.jobs.CreateJob(Job(project_id=project)), INVALID, "parameters of one job type", "params"),
        ("TTS without text", lambda: e.jobs.CreateJob(Job(project_id=project, tts=tts())), INVALID, "tts.text is required", "tts.text"),
        ("TTS text too long", lambda: e.jobs.CreateJob(Job(project_id=project, tts=tts(text="a" * 20001))), INVALID, "at most 20000", "tts.text"),
        ("TTS with input file", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, tts=tts(text="hi"))), INVALID, "take no input file", "input_file_id"),
        ("unknown TTS engine", lambda: e.jobs.CreateJob(Job(project_id=project, tts=tts(text="hi", engine="espeak9"))), INVALID, "not one of bark, kokoro, piper", "tts.engine"),
        ("TTS speed out of range", lambda: e.jobs.CreateJob(Job(project_id=project, tts=tts(text="hi", speed=7))), INVALID, "between 0.5 and 2", "tts.speed"),
        ("unknown audio format", lambda: e.jobs.CreateJob(Job(project_id=project, tts=tts(text="hi", format=99))), INVALID, "99 is not one of", "tts.format"),
        ("unknown voice", lambda: e.jobs.CreateJob(Job(project_id=project, tts=tts(text="hi", voice="en_GB-nobody"))), INVALID, "unknown voice 'en_GB-nobody'", "tts.voice"),
        ("voice of another engine", lambda: e.jobs.CreateJob(Job(project_id=project, tts=tts(text="hi", engine="bark", voice="en_US-joe-medium"))), INVALID, "is a piper voice, not bark", "tts.voice"),
        ("unknown preferred voice", lambda: e.settings.SetSetting(settings_pb2.SetSettingRequest(key="preferred_voice", value=Value(string_value="nobody"), scope=USER)), INVALID, "unknown voice 'nobody'", "value"),
        ("bad voice id", lambda: e.jobs.CreateJob(Job(project_id=project, tts=tts(text="hi", voice="../../etc/passwd voice"))), INVALID, "must be a voice id", "tts.voice"),
        ("STT without audio", lambda: e.jobs.CreateJob(Job(project_id=project, stt=jobs_pb2.SttParams())), INVALID, "need input_file_id", "input_file_id"),
        ("STT with unknown file", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=missing, stt=jobs_pb2.SttParams())), NOT_FOUND, "no file with id", "input_file_id"),
        ("STT with another user's file", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=others_audio, stt=jobs_pb2.SttParams())), DENIED, "belongs to another user", "input_file_id"),
        ("STT unknown task", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, stt=jobs_pb2.SttParams(task=9))), INVALID, "stt.task 9 is not one of", "stt.task"),
        ("STT bad language", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, stt=jobs_pb2.SttParams(language="English"))), INVALID, "language code", "stt.language"),
        ("STT temperature above 1", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, stt=jobs_pb2.SttParams(temperature=1.5))), INVALID, "stt.temperature must be between 0 and 1", "stt.temperature"),
        ("STT temperature NaN", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, stt=jobs_pb2.SttParams(temperature=float("nan")))), INVALID, "stt.temperature must be between 0 and 1", "stt.temperature"),
        ("cloning with text and source", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, voice_cloning=jobs_pb2.VoiceCloningParams(text="hi", source_file_id=audio))), INVALID, "exactly one of text", "voice_cloning.text"),
        ("dubbing without target", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, dubbing=jobs_pb2.DubbingParams())), INVALID, "target_language is required", "dubbing.target_language"),
        ("dubbing into same language", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, dubbing=jobs_pb2.DubbingParams(source_language="en", target_language="en"))), INVALID, "must differ", "dubbing.target_language"),
        ("dubbing stretch", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, dubbing=jobs_pb2.DubbingParams(target_language="pt", max_stretch=3))), INVALID, "between 1 and 2", "dubbing.max_stretch"),
        ("dubbing into an unsupported language", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, dubbing=jobs_pb2.DubbingParams(target_language="de"))), INVALID, "the shipped models dub en → pt, pt → en", "dubbing.target_language"),
        ("dubbing edits without a job", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, dubbing=jobs_pb2.DubbingParams(target_language="pt", edits=[jobs_pb2.DubbingSegmentEdit(index=0, translation="x")]))), INVALID, "edits need revise_job_id", "dubbing.edits"),
        ("dubbing revision of a missing job", lambda: e.jobs.CreateJob(Job(project_id=project, dubbing=jobs_pb2.DubbingParams(target_language="pt", revise_job_id=missing))), NOT_FOUND, "no dubbing job", "dubbing.revise_job_id"),
        ("dubbing revision of a pending job", lambda: e.jobs.CreateJob(Job(project_id=project, dubbing=jobs_pb2.DubbingParams(target_language="pt", revise_job_id=pending))), PRECONDITION, "only a COMPLETED dubbing job", None),
        ("empty dubbing edit", lambda: e.jobs.CreateJob(Job(project_id=project, dubbing=jobs_pb2.DubbingParams(target_language="pt", revise_job_id=pending, edits=[jobs_pb2.DubbingSegmentEdit(index=1)]))), INVALID, "changes nothing", "dubbing.edits[0]"),
        ("story too short", lambda: e.jobs.CreateJob(Job(project_id=project, ai_stories=jobs_pb2.AiStoriesParams(prompt="a fox", target_words=10))), INVALID, "between 50 and 5000", "ai_stories.target_words"),
        ("unknown dialogue voice", lambda: e.jobs.CreateJob(Job(project_id=project, ai_stories=jobs_pb2.AiStoriesParams(prompt="a fox", dialogue_voice="nobody"))), INVALID, "unknown voice 'nobody'", "ai_stories.dialogue_voice"),
        ("story without prompt", lambda: e.jobs.CreateJob(Job(project_id=project, ai_stories=jobs_pb2.AiStoriesParams())), INVALID, "prompt is required", "ai_stories.prompt"),
        ("job in unknown project", lambda: e.jobs.CreateJob(Job(project_id=missing, tts=tts(text="hi"))), NOT_FOUND, "no project with id", "project_id"),
        ("job in someone else's project", lambda: e.jobs.CreateJob(Job(project_id=others_project, tts=tts(text="hi"))), DENIED, "only the owner", None),
        ("long job title", lambda: e.jobs.CreateJob(Job(project_id=project, title="t" * 201, tts=tts(text="hi"))), INVALID, "at most 200", "title"),
        ("list jobs: negative page", lambda: e.jobs.ListJobs(jobs_pb2.ListJobsRequest(page=Page(page_size=-1))), INVALID, "between 1 and 500", "page.page_size"),
        ("list jobs: unknown type", lambda: e.jobs.ListJobs(jobs_pb2.ListJobsRequest(type=42)), INVALID, "type 42 is not one of", "type"),
        ("list jobs: unknown status", lambda: e.jobs.ListJobs(jobs_pb2.ListJobsRequest(status=42)), INVALID, "status 42 is not one of", "status"),
        ("list jobs: id prefix not of an id", lambda: e.jobs.ListJobs(jobs_pb2.ListJobsRequest(id_prefix="zz'; --")), INVALID, "4 to 36 characters of a job id", "id_prefix"),
        ("list jobs: id prefix too short", lambda: e.jobs.ListJobs(jobs_pb2.ListJobsRequest(id_prefix="ab")), INVALID, "4 to 36 characters", "id_prefix"),
        ("list jobs: forged token", lambda: e.jobs.ListJobs(jobs_pb2.ListJobsRequest(page=Page(page_token="bm90IGEgdG9rZW4="))), INVALID, "not a token this server issued", "page.page_token"),
        ("list jobs: token with wrong types", lambda: e.jobs.ListJobs(jobs_pb2.ListJobsRequest(page=Page(page_token=b64('{"t": 1, "i": 2, "f": 3}')))), INVALID, "not a token this server issued", "page.page_token"),
        ("list projects: deeply nested token", lambda: e.projects.ListProjects(projects_pb2.ListProjectsRequest(page=Page(page_token=b64("[" * 50000)))), INVALID, "not a token this server issued", "page.page_token"),
        ("list users: token that is a list", lambda: a.users.ListUsers(users_pb2.ListUsersRequest(page=Page(page_token=b64("[1, 2]")))), INVALID, "not a token this server issued", "page.page_token"),
        ("list results: token without a time zone", lambda: e.results.ListJobResults(results_pb2.ListJobResultsRequest(page=Page(page_token=b64(f'{{"t": "2026-01-01T00:00:00", "i": "{missing}", "f": "x"}}')))), INVALID, "not a token this server issued", "page.page_token"),
        ("list jobs: token of other filters", lambda: e.jobs.ListJobs(jobs_pb2.ListJobsRequest(status=jobs_pb2.JOB_STATUS_PENDING, page=Page(page_token=page_token))), INVALID, "other filters", "page.page_token"),
        ("list jobs: unknown project", lambda: e.jobs.ListJobs(jobs_pb2.ListJobsRequest(project_id=missing)), NOT_FOUND, "no project", "project_id"),
        ("unknown job", lambda: e.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=missing)), NOT_FOUND, f"no job with id {missing}", "job_id"),
        ("params of another type", lambda: e.jobs.UpdateJob(jobs_pb2.UpdateJobRequest(job_id=pending, update_mask=Mask(paths=["params"]), stt=jobs_pb2.SttParams())), INVALID, "this is a TTS job", "params"),
        ("params of a running job", lambda: e.jobs.UpdateJob(jobs_pb2.UpdateJobRequest(job_id=running, update_mask=Mask(paths=["params"]), tts=tts(text="new"))), PRECONDITION, "only change while the job is PENDING", None),
        ("delete running job", lambda: e.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=running)), PRECONDITION, "cancel it before deleting", None),
        ("other editor deletes job", lambda: other.client.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=pending)), DENIED, "only the job's creator", None),
        ("viewer deletes job", lambda: v.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=pending)), DENIED, "needs the editor role", None),
        # results
        ("result of a pending job", lambda: e.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=pending)), NOT_FOUND, "has no result yet; it is PENDING", "job_id"),
        ("results: unknown type", lambda: e.results.ListJobResults(results_pb2.ListJobResultsRequest(job_type=-3)), INVALID, "job_type -3 is not one of", "job_type"),
        # users
        ("bad username", lambda: a.users.CreateUser(users_pb2.CreateUserRequest(username="a b", password="long-enough", role=users_pb2.USER_ROLE_VIEWER)), INVALID, "username must be 3 to 64", "username"),
        ("short password", lambda: a.users.CreateUser(users_pb2.CreateUserRequest(username="newbie", password="short", role=users_pb2.USER_ROLE_VIEWER)), INVALID, "8 to 256 characters", "password"),
        ("no role", lambda: a.users.CreateUser(users_pb2.CreateUserRequest(username="newbie", password="long-enough")), INVALID, "role is required", "role"),
        ("unknown role", lambda: a.users.CreateUser(users_pb2.CreateUserRequest(username="newbie", password="long-enough", role=7)), INVALID, "role 7 is not one of", "role"),
        ("bad email", lambda: a.users.CreateUser(users_pb2.CreateUserRequest(username="newbie", password="long-enough", role=users_pb2.USER_ROLE_VIEWER, email="not-an-email")), INVALID, "is not an e-mail address", "email"),
        ("duplicate username (any case)", lambda: a.users.CreateUser(users_pb2.CreateUserRequest(username="EDDIE", password="long-enough", role=users_pb2.USER_ROLE_VIEWER)), EXISTS, "already exists", "username"),
        ("demote last admin", lambda: a.users.UpdateUser(users_pb2.UpdateUserRequest(user_id=str(admin.user_id), update_mask=Mask(paths=["role"]), role=users_pb2.USER_ROLE_VIEWER)), PRECONDITION, "last active admin", None),
        ("deactivate last admin", lambda: a.users.UpdateUser(users_pb2.UpdateUserRequest(user_id=str(admin.user_id), update_mask=Mask(paths=["is_active"]), is_active=False)), PRECONDITION, "last active admin", None),
        ("update unknown user", lambda: a.users.UpdateUser(users_pb2.UpdateUserRequest(user_id=missing, update_mask=Mask(paths=["bio"]))), NOT_FOUND, "no user with id", "user_id"),
        ("delete yourself", lambda: a.users.DeleteUser(users_pb2.DeleteUserRequest(user_id=str(admin.user_id))), PRECONDITION, "your own account", None),
        ("delete user who owns things", lambda: a.users.DeleteUser(users_pb2.DeleteUserRequest(user_id=str(editor.user_id))), PRECONDITION, "deactivate the account instead", None),
        ("wrong current password", lambda: e.users.ChangePassword(users_pb2.ChangePasswordRequest(current_password="wrong-one", new_password="another-pass")), INVALID, "current_password is wrong", "current_password"),
        ("role via own profile", lambda: e.users.UpdateCurrentUser(users_pb2.UpdateCurrentUserRequest(update_mask=Mask(paths=["role"]))), INVALID, "cannot be changed here: role", "update_mask"),
        ("long bio", lambda: e.users.UpdateCurrentUser(users_pb2.UpdateCurrentUserRequest(update_mask=Mask(paths=["bio"]), bio="b" * 2001)), INVALID, "at most 2000", "bio"),
        # settings
        ("unknown setting", lambda: a.settings.SetSetting(settings_pb2.SetSettingRequest(key="colour", value=Value(string_value="red"), scope=GLOBAL)), INVALID, "unknown setting 'colour'; known settings:", "key"),
        ("infinite number", lambda: a.settings.SetSetting(settings_pb2.SetSettingRequest(key="max_concurrent_jobs", value=Value(number_value=float("inf")), scope=GLOBAL)), INVALID, "takes a whole number", "value"),
        ("minus infinity", lambda: a.settings.SetSetting(settings_pb2.SetSettingRequest(key="max_file_size_mb", value=Value(number_value=float("-inf")), scope=GLOBAL)), INVALID, "takes a whole number", "value"),
        ("wrong type", lambda: a.settings.SetSetting(settings_pb2.SetSettingRequest(key="max_concurrent_jobs", value=Value(string_value="five"), scope=GLOBAL)), INVALID, "takes a whole number", "value"),
        ("fraction", lambda: a.settings.SetSetting(settings_pb2.SetSettingRequest(key="max_concurrent_jobs", value=Value(number_value=2.5), scope=GLOBAL)), INVALID, "takes a whole number", "value"),
        ("out of range", lambda: a.settings.SetSetting(settings_pb2.SetSettingRequest(key="max_file_size_mb", value=Value(number_value=-1), scope=GLOBAL)), INVALID, "between 1 and", "value"),
        ("no value", lambda: a.settings.SetSetting(settings_pb2.SetSettingRequest(key="max_file_size_mb", scope=GLOBAL)), INVALID, "value is required", "value"),
        ("no scope", lambda: a.settings.SetSetting(settings_pb2.SetSettingRequest(key="max_file_size_mb", value=Value(number_value=5))), INVALID, "scope is required", "scope"),
        ("global with user id", lambda: a.settings.SetSetting(settings_pb2.SetSettingRequest(key="max_file_size_mb", value=Value(number_value=5), scope=GLOBAL, user_id=str(editor.user_id))), INVALID, "global settings have no user_id", "user_id"),
        ("editor sets global", lambda: e.settings.SetSetting(settings_pb2.SetSettingRequest(key="default_language", value=Value(string_value="pt"), scope=GLOBAL)), DENIED, "only admins may change global settings", None),
        ("editor raises own quota", lambda: e.settings.SetSetting(settings_pb2.SetSettingRequest(key="max_concurrent_jobs", value=Value(number_value=99), scope=USER)), DENIED, "limit set by admins", None),
        ("editor sets another's", lambda: e.settings.SetSetting(settings_pb2.SetSettingRequest(key="preferred_voice", value=Value(string_value="en_US-joe-medium"), scope=USER, user_id=str(other.user_id))), DENIED, "another user's settings", None),
        ("setting for unknown user", lambda: a.settings.SetSetting(settings_pb2.SetSettingRequest(key="preferred_voice", value=Value(string_value="en_US-joe-medium"), scope=USER, user_id=missing)), NOT_FOUND, "no user with id", "user_id"),
        ("delete unset setting", lambda: e.settings.DeleteSetting(settings_pb2.DeleteSettingRequest(key="preferred_voice", scope=USER)), NOT_FOUND, "no user", "key"),
        ("viewer sets own setting", lambda: v.settings.SetSetting(settings_pb2.SetSettingRequest(key="preferred_voice", value=Value(string_value="en_US-joe-medium"), scope=USER)), DENIED, "needs the editor role", None),
        ("effective of another user", lambda: e.settings.GetEffectiveSettings(settings_pb2.GetEffectiveSettingsRequest(user_id=str(other.user_id))), DENIED, "another user's settings", None),
        # voices
        ("unknown engine", lambda: v.voices.ListVoices(voices_pb2.ListVoicesRequest(engine="espeak9")), INVALID, "engine 'espeak9' is not one of bark, kokoro, piper, clone", "engine"),
        ("voices of a bad project id", lambda: v.voices.ListVoices(voices_pb2.ListVoicesRequest(project_id="nope")), INVALID, "project_id", "project_id"),
        ("models of an unknown job type", lambda: v.voices.ListModels(voices_pb2.ListModelsRequest(job_type="tts9")), INVALID, "job_type 'tts9' is not one of stt, ai_stories", "job_type"),
        ("delete an unknown voice", lambda: e.voices.DeleteVoice(voices_pb2.DeleteVoiceRequest(project_id=project, name="ghost")), NOT_FOUND, "no voice named 'ghost'", "name"),
        ("delete a voice without a name", lambda: e.voices.DeleteVoice(voices_pb2.DeleteVoiceRequest(project_id=project)), INVALID, "name", "name"),
        ("delete another's project voice", lambda: e.voices.DeleteVoice(voices_pb2.DeleteVoiceRequest(project_id=others_project, name="x")), DENIED, "", None),
        ("TTS with an unknown voice", lambda: e.jobs.CreateJob(Job(project_id=project, tts=jobs_pb2.TtsParams(text="hi", voice="reader"))), INVALID, "unknown voice 'reader'", "tts.voice"),
        ("clone saved under a stock id", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, voice_cloning=jobs_pb2.VoiceCloningParams(text="hi", save_as_voice="en_US-joe-medium"))), INVALID, "stock voice", "voice_cloning.save_as_voice"),
        ("keep_reference without a name", lambda: e.jobs.CreateJob(Job(project_id=project, input_file_id=audio, voice_cloning=jobs_pb2.VoiceCloningParams(text="hi", keep_reference=True))), INVALID, "keep_reference only applies", "voice_cloning.keep_reference"),
        # transport
        ("oversized request", lambda: e.projects.CreateProject(projects_pb2.CreateProjectRequest(name="x", description="d" * (5 * 1024 * 1024))), TOO_BIG, "", None),
    ]  # fmt: skip

    before = await h.fingerprint()
    problems = []
    for what, call, code, words, field in cases:
        try:
            await call()
            problems.append(f"{what}: succeeded, expected {code.name}")
            continue
        except grpc.aio.AioRpcError as err:
            details = err.details() or ""
            if err.code() != code:
                problems.append(f"{what}: {err.code().name} ({details}), expected {code.name}")
            elif words not in details:
                problems.append(f"{what}: message {details!r} lacks {words!r}")
            elif field is not None and field not in field_violations(err):
                problems.append(f"{what}: details name {field_violations(err)}, expected {field!r}")
            if "Traceback" in details or (code != TOO_BIG and len(details) < 10):
                problems.append(f"{what}: message is not for people: {details!r}")
    after = await h.fingerprint()
    assert not problems, "\n".join(problems)
    assert before == after, "a refused request changed the database"


async def test_undecodable_messages_are_invalid_argument(harness: Harness) -> None:
    """Attack: invalid UTF-8 in a string field, or corrupt wire bytes, got UNKNOWN naming the
    Python exception class. Now INVALID_ARGUMENT with a sentence, on unary and streaming RPCs."""
    editor = await harness.user(UserRole.EDITOR)
    auth = (("authorization", f"Bearer {editor.access}"),)
    bad_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (a string) holding two bytes that are not UTF-8
    corrupt = b"\x0a\xff\xff\xff\xff\x0f"  # a length far beyond the message
    for method, metadata in [
        ("/voxmesh.v1.AuthService/Login", ()),
        ("/voxmesh.v1.ProjectService/GetProject", auth),
    ]:
        call = harness.channel.unary_unary(method)
        for payload in (bad_utf8, corrupt):
            try:
                await call(payload, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as err:
                assert err.code() == INVALID, (method, payload, err.code(), err.details())
                details = err.details() or ""
                assert "not a valid" in details and "Error" not in details, details
            else:
                raise AssertionError(f"{method} accepted undecodable bytes")
    watch = harness.channel.unary_stream("/voxmesh.v1.JobService/WatchJob")
    try:
        async for _ in watch(bad_utf8, metadata=auth, timeout=30):
            raise AssertionError("WatchJob streamed for an undecodable request")
    except grpc.aio.AioRpcError as err:
        assert err.code() == INVALID and "WatchJobRequest" in (err.details() or "")
