"""The voxctl commands."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import struct_pb2
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from voxctl import session as sessions
from voxmesh.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    files_pb2,
    jobs_pb2,
    keys_pb2,
    projects_pb2,
    results_pb2,
    settings_pb2,
    users_pb2,
)

app = typer.Typer(help="Voxmesh from the command line: sign in, submit speech jobs, watch them, fetch results.",
                  no_args_is_help=True, pretty_exceptions_enable=False)  # fmt: skip
console = Console()
err = Console(stderr=True)
Server = Annotated[str, typer.Option("--server", "-s", help="host:port of the control plane")]
TYPES = {
    "stt": "stt",
    "tts": "tts",
    "clone": "voice_cloning",
    "dub": "dubbing",
    "story": "ai_stories",
}
FORMATS: dict[str, Any] = {
    "wav": jobs_pb2.AUDIO_FORMAT_WAV, "flac": jobs_pb2.AUDIO_FORMAT_FLAC,
    "mp3": jobs_pb2.AUDIO_FORMAT_MP3, "ogg": jobs_pb2.AUDIO_FORMAT_OGG_OPUS,
}  # fmt: skip


def _session(server: str) -> sessions.Session:
    try:
        return sessions.Session.open(server or sessions.default_server())
    except sessions.NotSignedIn as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


def _call(method: Any, request: Any, s: sessions.Session, **kwargs: Any) -> Any:
    try:
        return method(request, metadata=s.metadata, timeout=kwargs.pop("timeout", 60), **kwargs)
    except grpc.RpcError as e:
        err.print(f"[red]{e.code().name}[/red]: {e.details()}")
        raise typer.Exit(1) from None


def _name(value: int, enum: Any, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


PENDING_WORDS = {
    jobs_pb2.PENDING_STATE_AWAITING_START: "waiting for start",
    jobs_pb2.PENDING_STATE_WAITING_FOR_SLOT: "waiting for a slot",
    jobs_pb2.PENDING_STATE_QUEUED: "queued",
}


def _status(job: jobs_pb2.Job) -> str:
    """The status, with what a PENDING job waits for: "pending (queued)"."""
    status = _name(job.status, jobs_pb2.JobStatus, "JOB_STATUS_")
    waiting = PENDING_WORDS.get(job.pending_state)
    return f"{status} ({waiting})" if waiting else status


@app.command()
def login(
    username: Annotated[str, typer.Option("--username", "-u", prompt=True)],
    server: Server = "",
    password_stdin: Annotated[
        bool, typer.Option(help="read the password from standard input")
    ] = False,
) -> None:
    """Sign in; the tokens are kept for this server (file mode 0600) and refreshed as needed."""
    server = server or sessions.default_server()
    password = (
        sys.stdin.readline().rstrip("\n") if password_stdin else getpass.getpass("Password: ")
    )
    channel = grpc.insecure_channel(server)
    try:
        reply = auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(username=username, password=password), timeout=30
        )
    except grpc.RpcError as e:
        err.print(f"[red]{e.code().name}[/red]: {e.details()}")
        raise typer.Exit(1) from None
    sessions.save_tokens(server, reply.user.username, reply.tokens)
    role = _name(reply.user.profile.role, users_pb2.UserRole, "USER_ROLE_")
    console.print(f"Signed in to {server} as [bold]{reply.user.username}[/bold] ({role}).")


@app.command()
def logout(server: Server = "") -> None:
    """Sign out: revokes this session's tokens on the server and forgets them here."""
    server = server or sessions.default_server()
    entry = sessions.forget(server)
    if entry:
        channel = grpc.insecure_channel(server)
        with contextlib.suppress(grpc.RpcError):  # already ended: forgotten here all the same
            auth_pb2_grpc.AuthServiceStub(channel).Logout(
                auth_pb2.LogoutRequest(refresh_token=entry["refresh_token"]), timeout=30
            )
    console.print(f"Signed out of {server}.")


@app.command()
def projects(
    create: Annotated[str, typer.Option(help="create a project with this name")] = "",
    server: Server = "",
) -> None:
    """List projects (or create one)."""
    s = _session(server)
    stub = s.stub("projects")
    if create:
        project = _call(
            stub.CreateProject, projects_pb2.CreateProjectRequest(name=create), s
        ).project
        console.print(f"Created project {project.name} [dim]{project.id}[/dim]")
        return
    reply = _call(stub.ListProjects, projects_pb2.ListProjectsRequest(), s)
    table = Table("id", "name", "owner", "jobs", title=f"{reply.page.total_size} projects")
    for p in reply.projects:
        table.add_row(p.id, p.name, p.owner_username, str(p.jobs_count))
    console.print(table)


@app.command()
def jobs(
    project: Annotated[str, typer.Option(help="only this project's jobs")] = "",
    type_: Annotated[
        str, typer.Option("--type", help=f"only jobs of this type: {', '.join(TYPES)}")
    ] = "",
    status: Annotated[
        str, typer.Option(help="pending, running, completed, failed or cancelled")
    ] = "",
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    server: Server = "",
) -> None:
    """List jobs, newest first."""
    s = _session(server)
    request = jobs_pb2.ListJobsRequest(project_id=project)
    request.page.page_size = limit
    if type_ and TYPES.get(type_, type_).upper() not in {t.upper() for t in TYPES.values()}:
        err.print(f"[red]unknown job type {type_!r}[/red]; one of {', '.join(TYPES)}")
        raise typer.Exit(2)
    if status and f"JOB_STATUS_{status.upper()}" not in jobs_pb2.JobStatus.keys():  # noqa: SIM118
        err.print(
            f"[red]unknown status {status!r}[/red]; pending, running, completed, failed or cancelled"
        )
        raise typer.Exit(2)
    if type_:
        request.type = jobs_pb2.JobType.Value(f"JOB_TYPE_{TYPES.get(type_, type_).upper()}")  # type: ignore[assignment]
    if status:
        request.status = jobs_pb2.JobStatus.Value(f"JOB_STATUS_{status.upper()}")  # type: ignore[assignment]
    reply = _call(s.stub("jobs").ListJobs, request, s)
    table = Table(
        "id",
        "type",
        "status",
        "progress",
        "title",
        "created",
        title=f"{reply.page.total_size} jobs",
    )
    for j in reply.jobs:
        table.add_row(j.id, _name(j.type, jobs_pb2.JobType, "JOB_TYPE_"), _status(j),
                      f"{j.progress}%", j.title, j.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M"))  # fmt: skip
    console.print(table)


def _upload(s: sessions.Session, path: Path) -> str:
    data = path.read_bytes()
    files = s.stub("files")
    started = _call(
        files.StartUpload, files_pb2.StartUploadRequest(filename=path.name, size_bytes=len(data)), s
    )
    with Progress(TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=err) as progress:  # fmt: skip
        task = progress.add_task(path.name, total=len(data))
        for offset in range(0, len(data), started.chunk_size_bytes):
            chunk = data[offset : offset + started.chunk_size_bytes]
            _call(
                files.UploadChunk,
                files_pb2.UploadChunkRequest(
                    upload_id=started.upload_id, offset=offset, data=chunk
                ),
                s,
            )
            progress.update(task, advance=len(chunk))
    finished = _call(files.FinishUpload, files_pb2.FinishUploadRequest(
        upload_id=started.upload_id, sha256=hashlib.sha256(data).hexdigest()), s)  # fmt: skip
    return str(finished.file.id)


@app.command()
def submit(
    kind: Annotated[str, typer.Argument(help=f"the job type: {', '.join(TYPES)}")],
    project: Annotated[str, typer.Option(help="the project id (voxctl projects)")],
    file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="input audio/video")
    ] = None,
    text: Annotated[str, typer.Option(help="text to speak (tts, clone)")] = "",
    prompt: Annotated[str, typer.Option(help="what the story is about (story)")] = "",
    voice: str = "",
    language: Annotated[str, typer.Option(help="spoken language (stt), story language")] = "",
    target_language: Annotated[str, typer.Option(help="language to dub into (dub)")] = "",
    source_language: Annotated[str, typer.Option(help="language spoken in the input (dub)")] = "",
    source: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="recording to convert into the voice (clone)"
        ),
    ] = None,
    save_as: Annotated[str, typer.Option(help="save the cloned voice in the project (clone)")] = "",
    keep_reference: Annotated[
        bool, typer.Option(help="keep the reference with it (clone)")
    ] = False,
    keep_background: Annotated[bool, typer.Option(help="keep the original under the dub")] = False,
    audio_format: Annotated[str, typer.Option("--format", help="wav, flac, mp3 or ogg")] = "wav",
    words: Annotated[int, typer.Option(help="target length of a story in words")] = 0,
    seed: int = 0,
    title: str = "",
    watch_: Annotated[bool, typer.Option("--watch", help="follow the job until it ends")] = False,
    server: Server = "",
) -> None:
    """Create a job (uploading its input file), and optionally watch it."""
    if kind not in TYPES:
        err.print(f"[red]unknown job type {kind!r}[/red]; one of {', '.join(TYPES)}")
        raise typer.Exit(2)
    s = _session(server)
    request = jobs_pb2.CreateJobRequest(project_id=project, title=title)
    if file is not None:
        request.input_file_id = _upload(s, file)
    fmt = FORMATS.get(audio_format, jobs_pb2.AUDIO_FORMAT_UNSPECIFIED)
    if kind == "stt":
        request.stt.CopyFrom(jobs_pb2.SttParams(language=language, word_timestamps=True))
    elif kind == "tts":
        request.tts.CopyFrom(jobs_pb2.TtsParams(text=text, voice=voice, format=fmt))
    elif kind == "clone":
        request.voice_cloning.CopyFrom(jobs_pb2.VoiceCloningParams(
            text=text, source_file_id=_upload(s, source) if source is not None else "",
            save_as_voice=save_as, keep_reference=keep_reference, format=fmt,
        ))  # fmt: skip
    elif kind == "dub":
        request.dubbing.CopyFrom(
            jobs_pb2.DubbingParams(
                target_language=target_language,
                source_language=source_language,
                voice=voice,
                keep_background=keep_background,
                format=fmt,
            )
        )
    else:
        request.ai_stories.CopyFrom(jobs_pb2.AiStoriesParams(prompt=prompt, target_words=words, seed=seed,
                                                             language=language, voice=voice, format=fmt))  # fmt: skip
    job = _call(s.stub("jobs").CreateJob, request, s).job
    console.print(f"Created job [bold]{job.id}[/bold] ({_status(job)})")
    if watch_:
        watch(job.id, server=s.server)


def _follow(server: str, s: sessions.Session, job: str) -> Iterator[jobs_pb2.WatchJobResponse]:
    """WatchJob's events; when the server ends the stream because the access token expired,
    refresh it and resume after the last event seen (nothing is missed or repeated)."""
    after = 0
    resumed = False
    while True:
        try:
            for event in s.stub("jobs").WatchJob(
                jobs_pb2.WatchJobRequest(job_id=job, after_seq=after), metadata=s.metadata
            ):
                after = max(after, event.seq)
                resumed = False
                yield event
            return
        except grpc.RpcError as e:
            expired = e.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in (
                e.details() or ""
            )
            if expired and not resumed:
                resumed = True
                s = _session(server)  # refreshes the access token
                continue
            err.print(f"[red]{e.code().name}[/red]: {e.details()}")
            raise typer.Exit(1) from None


@app.command()
def watch(job: Annotated[str, typer.Argument(help="the job id")], server: Server = "") -> None:
    """Follow a job live (WatchJob) until it ends, with a progress bar."""
    s = _session(server)
    last = None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  console=err) as progress:  # fmt: skip
        bar = progress.add_task("waiting", total=100)
        for event in _follow(server, s, job):
            kind = event.WhichOneof("event")
            if kind == "snapshot":
                progress.update(bar, completed=event.snapshot.progress,
                                description=_name(event.snapshot.status, jobs_pb2.JobStatus, "JOB_STATUS_"))  # fmt: skip
            elif kind == "progress":
                progress.update(
                    bar, completed=event.progress.percent, description=event.progress.stage
                )
            elif kind == "status":
                progress.update(
                    bar,
                    description=_name(event.status.status, jobs_pb2.JobStatus, "JOB_STATUS_"),
                )
            last = event
    if last is not None and last.WhichOneof("event") == "result":
        s = _session(server)  # the watch may have outlived its access token
        final = _call(s.stub("jobs").GetJob, jobs_pb2.GetJobRequest(job_id=job), s).job
        status = _name(final.status, jobs_pb2.JobStatus, "JOB_STATUS_")
        console.print(
            f"Job {job} {status}"
            + (f": {final.error}" if final.error and status != "completed" else "")
        )
        for f in last.result.files:
            console.print(f"  {f.name}  {f.size_bytes} bytes  [dim]{f.file_id}[/dim]")
        if status != "completed":
            raise typer.Exit(1)


@app.command()
def download(
    job: Annotated[str, typer.Argument(help="the job id")],
    out: Annotated[Path, typer.Option(help="directory to write into")] = Path("."),
    server: Server = "",
) -> None:
    """Download every result file of a job."""
    s = _session(server)
    result = _call(
        s.stub("results").GetJobResult, results_pb2.GetJobResultRequest(job_id=job), s
    ).result
    out.mkdir(parents=True, exist_ok=True)
    for entry in result.files:
        target = out / Path(entry.name).name  # a name, never a path from the server
        with target.open("wb") as sink:
            for part in s.stub("files").DownloadFile(
                files_pb2.DownloadFileRequest(file_id=entry.file_id), metadata=s.metadata
            ):
                if part.WhichOneof("part") == "data":
                    sink.write(part.data)
        console.print(f"{target}  {target.stat().st_size} bytes")


@app.command()
def cancel(job: str, server: Server = "") -> None:
    """Cancel a pending or running job."""
    s = _session(server)
    _call(s.stub("jobs").CancelJob, jobs_pb2.CancelJobRequest(job_id=job), s)
    console.print(f"Cancelled job {job}.")


@app.command()
def retry(job: str, server: Server = "") -> None:
    """Run a failed or cancelled job again."""
    s = _session(server)
    new = _call(s.stub("jobs").RetryJob, jobs_pb2.RetryJobRequest(job_id=job), s).job
    console.print(f"Job {job} queued again (run {new.attempts + 1}).")


@app.command()
def settings(
    key: Annotated[str, typer.Argument(help="a setting to change")] = "",
    value: Annotated[
        str, typer.Argument(help="its new value (true/false, a number, or text)")
    ] = "",
    global_: Annotated[
        bool, typer.Option("--global", help="change the global value (admins)")
    ] = False,
    server: Server = "",
) -> None:
    """Show your effective settings, or set one."""
    s = _session(server)
    stub = s.stub("settings")
    if key:
        parsed = struct_pb2.Value()
        if value.lower() in ("true", "false"):
            parsed.bool_value = value.lower() == "true"
        elif value.lstrip("-").replace(".", "", 1).isdigit():
            parsed.number_value = float(value)
        else:
            parsed.string_value = value
        scope = settings_pb2.SETTING_SCOPE_GLOBAL if global_ else settings_pb2.SETTING_SCOPE_USER
        _call(
            stub.SetSetting, settings_pb2.SetSettingRequest(key=key, value=parsed, scope=scope), s
        )
        console.print(f"{key} = {value}")
        return
    reply = _call(stub.GetEffectiveSettings, settings_pb2.GetEffectiveSettingsRequest(), s)
    table = Table("setting", "value", "from", "about")
    for item in reply.settings:
        shown = getattr(item.value, item.value.WhichOneof("kind") or "string_value")
        table.add_row(item.key, str(shown).lower() if isinstance(shown, bool) else str(shown),
                      _name(item.source, settings_pb2.SettingSource, "SETTING_SOURCE_"), item.description)  # fmt: skip
    console.print(table)


keys_app = typer.Typer(help="API keys for services and scripts (Bearer vxk_...; VOXMESH_API_KEY).",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(keys_app, name="keys")
ROLES = {"viewer": users_pb2.USER_ROLE_VIEWER, "editor": users_pb2.USER_ROLE_EDITOR,
         "admin": users_pb2.USER_ROLE_ADMIN}  # fmt: skip


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="what the key is for, e.g. n8n")],
    role: Annotated[str, typer.Option(help="viewer, editor or admin (at most yours)")] = "",
    project: Annotated[str, typer.Option(help="a project id: the key acts only there")] = "",
    days: Annotated[int, typer.Option(help="expire after this many days (0: never)")] = 0,
    owner: Annotated[str, typer.Option(help="admins: a user id (a service account)")] = "",
    server: Server = "",
) -> None:
    """Make a key; its secret is printed once and never stored here or shown again."""
    if role and role not in ROLES:
        err.print("[red]--role takes viewer, editor or admin[/red]")
        raise typer.Exit(2)
    s = _session(server)
    request = keys_pb2.CreateApiKeyRequest(
        name=name,
        role=ROLES[role] if role else users_pb2.USER_ROLE_UNSPECIFIED,
        project_id=project,
        owner_id=owner,
    )
    if days > 0:
        request.expire_time.FromDatetime(datetime.now(UTC) + timedelta(days=days))
    reply = _call(s.stub("keys").CreateApiKey, request, s)
    console.print(f"key {reply.key.id} ({reply.key.name}) made; its secret, shown only now:")
    print(reply.secret)


@keys_app.command("list")
def keys_list(
    all_users: Annotated[bool, typer.Option("--all", help="admins: every user's keys")] = False,
    revoked: Annotated[bool, typer.Option(help="also revoked and expired keys")] = False,
    server: Server = "",
) -> None:
    """Your API keys (never their secrets)."""
    s = _session(server)
    reply = _call(s.stub("keys").ListApiKeys,
                  keys_pb2.ListApiKeysRequest(all_users=all_users, include_revoked=revoked), s)  # fmt: skip
    table = Table("id", "name", "prefix", "owner", "role", "project", "last used", "state")

    def when(stamp: Any, present: bool) -> str:
        return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M") if present else "-"

    for k in reply.keys:
        state = "revoked" if k.HasField("revoke_time") else (
            f"expires {when(k.expire_time, True)}" if k.HasField("expire_time") else "active")  # fmt: skip
        table.add_row(k.id, k.name, k.prefix, k.owner_username,
                      _name(k.role, users_pb2.UserRole, "USER_ROLE_").lower(), k.project_id or "all",
                      when(k.last_used_time, k.HasField("last_used_time")), state)  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, server: Server = "") -> None:
    """Stop a key from working, from its next call on."""
    s = _session(server)
    reply = _call(s.stub("keys").RevokeApiKey, keys_pb2.RevokeApiKeyRequest(key_id=key_id), s)
    console.print(f"key {reply.key.id} ({reply.key.name}) revoked")


def main() -> None:
    app()
