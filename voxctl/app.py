"""The voxctl commands."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import json_format, struct_pb2
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
    voices_pb2,
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


Json = Annotated[bool, typer.Option("--json", help="print JSON instead of a table (for scripts)")]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SHORT = 8
"""Characters of an id shown in tables (`--wide` shows all); any unique prefix is accepted."""


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]{message}[/red]")
    return typer.Exit(code)


def _one(ref: str, what: str, matches: list[tuple[str, str]], listing: str) -> str:
    """The one id among `matches` (id, label) or a clear error: none, or ambiguous (git-style)."""
    if not matches:
        raise _fail(f"no {what} matches {ref!r}; {listing} lists them", 1)
    if len({i for i, _ in matches}) > 1:
        shown = ", ".join(f"{i[:13]} ({label})" for i, label in matches[:5])
        more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        raise _fail(f"{ref!r} is ambiguous: it matches {shown}{more}; give more of the id")
    return matches[0][0]


def _job_id(s: sessions.Session, ref: str) -> str:
    """A job id from what a person typed: the whole id or a unique prefix (4+ characters)."""
    ref = ref.strip().lower()
    if UUID.fullmatch(ref):
        return ref
    if len(ref) < 4:
        raise _fail(f"{ref!r} is too short: give at least 4 characters of the job id")
    request = jobs_pb2.ListJobsRequest(id_prefix=ref)
    request.page.page_size = 6
    reply = _call(s.stub("jobs").ListJobs, request, s)
    return _one(ref, "job id", [(j.id, j.title or _kind(j)) for j in reply.jobs], "`voxctl jobs`")


def _all_projects(s: sessions.Session) -> list[Any]:
    out: list[Any] = []
    request = projects_pb2.ListProjectsRequest()
    request.page.page_size = 500
    while True:
        reply = _call(s.stub("projects").ListProjects, request, s)
        out += reply.projects
        if not reply.page.next_page_token:
            return out
        request.page.page_token = reply.page.next_page_token


def _project_name(s: sessions.Session, project_id: str) -> str:
    """A project's name, for a person reading ("" when this user may not read it)."""
    try:
        reply = s.stub("projects").GetProject(
            projects_pb2.GetProjectRequest(project_id=project_id), metadata=s.metadata, timeout=30
        )
    except grpc.RpcError:
        return ""
    return str(reply.project.name)


def _project_id(s: sessions.Session, ref: str) -> str:
    """A project id from its name (any case), its id or a unique id prefix; "" stays ""."""
    ref = ref.strip()
    if not ref or UUID.fullmatch(ref.lower()):
        return ref.lower()
    projects = _all_projects(s)
    named = [(p.id, p.name) for p in projects if p.name.casefold() == ref.casefold()]
    if named:
        return _one(ref, "project", named, "`voxctl projects`")
    prefixed = [(p.id, p.name) for p in projects if len(ref) >= 4 and p.id.startswith(ref.lower())]
    return _one(ref, "project name or id", prefixed, "`voxctl projects`")


def _kind(job: Any) -> str:
    return _name(job.type, jobs_pb2.JobType, "JOB_TYPE_")


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
    wide: Annotated[bool, typer.Option(help="show whole ids")] = False,
    as_json: Json = False,
    server: Server = "",
) -> None:
    """List projects (or create one). Anywhere a project is asked, its name works too."""
    s = _session(server)
    stub = s.stub("projects")
    if create:
        project = _call(
            stub.CreateProject, projects_pb2.CreateProjectRequest(name=create), s
        ).project
        if as_json:
            _print_json(_dict(project))
            return
        console.print(f"Created project {project.name} [dim]{project.id}[/dim]")
        return
    found = _all_projects(s)
    if as_json:
        _print_json([_dict(p) for p in found])
        return
    table = Table(title=f"{len(found)} projects")
    table.add_column("id", no_wrap=True)
    for column in ("name", "owner", "jobs"):
        table.add_column(column)
    for p in found:
        table.add_row(p.id if wide else p.id[:SHORT], p.name, p.owner_username, str(p.jobs_count))
    console.print(table)


@app.command()
def jobs(
    project: Annotated[str, typer.Option(help="only this project's jobs (name or id)")] = "",
    type_: Annotated[
        str, typer.Option("--type", help=f"only jobs of this type: {', '.join(TYPES)}")
    ] = "",
    status: Annotated[
        str, typer.Option(help="pending, running, completed, failed or cancelled")
    ] = "",
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    wide: Annotated[bool, typer.Option(help="show whole ids")] = False,
    as_json: Json = False,
    server: Server = "",
) -> None:
    """List jobs, newest first. Ids are shortened (any unique start of an id is accepted)."""
    if type_ and TYPES.get(type_, type_).upper() not in {t.upper() for t in TYPES.values()}:
        raise _fail(f"unknown job type {type_!r}; one of {', '.join(TYPES)}")
    if status and f"JOB_STATUS_{status.upper()}" not in jobs_pb2.JobStatus.keys():  # noqa: SIM118
        raise _fail(f"unknown status {status!r}; pending, running, completed, failed or cancelled")
    s = _session(server)
    request = jobs_pb2.ListJobsRequest(project_id=_project_id(s, project))
    request.page.page_size = limit
    if type_:
        request.type = jobs_pb2.JobType.Value(f"JOB_TYPE_{TYPES.get(type_, type_).upper()}")  # type: ignore[assignment]
    if status:
        request.status = jobs_pb2.JobStatus.Value(f"JOB_STATUS_{status.upper()}")  # type: ignore[assignment]
    reply = _call(s.stub("jobs").ListJobs, request, s)
    if as_json:
        _print_json([_dict(j) for j in reply.jobs])
        return
    table = Table(title=f"{reply.page.total_size} jobs")
    # Ids and times never shrink; status and title wrap at narrow widths.
    table.add_column("id", no_wrap=True, min_width=36 if wide else SHORT)
    table.add_column("type", no_wrap=True)
    table.add_column("status", min_width=7)
    table.add_column("progress", no_wrap=True, justify="right")
    table.add_column("title", overflow="fold", min_width=8)
    table.add_column("created", no_wrap=True, min_width=11)
    for j in reply.jobs:
        progress = 100 if j.status == jobs_pb2.JOB_STATUS_COMPLETED else j.progress
        table.add_row(j.id if wide else j.id[:SHORT], _kind(j), _status(j), f"{progress}%",
                      j.title, j.create_time.ToDatetime().strftime("%m-%d %H:%M"))  # fmt: skip
    console.print(table)


@app.command()
def voices(
    project: Annotated[str, typer.Option(help="also this project's saved voices")] = "",
    engine: Annotated[str, typer.Option(help="only this engine: piper, kokoro, bark…")] = "",
    language: Annotated[str, typer.Option(help="only this language, e.g. en or pt-BR")] = "",
    all_: Annotated[
        bool, typer.Option("--all", help="also voices no running worker can speak now")
    ] = False,
    as_json: Json = False,
    server: Server = "",
) -> None:
    """Voices to speak with (tts, story, dub --voice): stock voices and a project's saved ones.
    By default only those a connected worker can speak now."""
    s = _session(server)
    reply = _call(s.stub("voices").ListVoices, voices_pb2.ListVoicesRequest(
        project_id=_project_id(s, project), engine=engine, language=language,
        available_only=not all_), s)  # fmt: skip
    if as_json:
        _print_json([_dict(v) for v in reply.voices])
        return
    table = Table(title=f"{len(reply.voices)} voices")
    table.add_column("voice", no_wrap=True)
    for column in ("engine", "language", "gender", "can run now"):
        table.add_column(column, no_wrap=True)
    table.add_column("about", overflow="fold")
    for v in reply.voices:
        table.add_row(v.id, v.engine, v.language, v.gender or "-",
                      "yes" if v.available else "no", v.description or v.requirements)  # fmt: skip
    console.print(table)
    if not reply.voices and not all_:
        err.print("No connected worker can speak any voice now; `--all` lists every voice.")


@app.command()
def models(
    job_type: Annotated[str, typer.Option("--type", help="only stt or story models")] = "",
    as_json: Json = False,
    server: Server = "",
) -> None:
    """Models a job may name: STT models (languages, translation) and story writers, in the
    order jobs are routed to them, and whether a connected worker runs each now."""
    s = _session(server)
    wanted = {"story": "ai_stories"}.get(job_type, job_type)
    reply = _call(s.stub("voices").ListModels, voices_pb2.ListModelsRequest(job_type=wanted), s)
    if as_json:
        _print_json([_dict(m) for m in reply.models])
        return
    table = Table(title=f"{len(reply.models)} models")
    for column in ("model", "for", "languages", "can run now"):
        table.add_column(column, no_wrap=True)
    table.add_column("about", overflow="fold")
    for m in reply.models:
        spoken = (
            ", ".join(m.languages) if len(m.languages) <= 3 else f"{len(m.languages)} languages"
        )
        table.add_row(m.name, "story" if m.job_type == "ai_stories" else m.job_type, spoken,
                      "yes" if m.available else "no", m.description)  # fmt: skip
    console.print(table)


ONE_CALL_BYTES = 1024 * 1024
"""Files up to this size are sent in one UploadFile call; larger ones in resumable chunks."""


def _upload(s: sessions.Session, path: Path) -> str:
    data = path.read_bytes()
    files = s.stub("files")
    if 0 < len(data) <= ONE_CALL_BYTES:  # a clip: one call, nothing to resume
        request = files_pb2.UploadFileRequest(
            filename=path.name, data=data, sha256=hashlib.sha256(data).hexdigest()
        )
        return str(_call(files.UploadFile, request, s).file.id)
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
    project: Annotated[str, typer.Option(help="the project: its name or id (voxctl projects)")],
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
    model: Annotated[str, typer.Option(help="STT model (voxctl models); empty: routed")] = "",
    diarize: Annotated[bool, typer.Option(help="say who speaks (stt)")] = False,
    num_speakers: Annotated[
        int, typer.Option(help="how many people speak (stt --diarize, dub); 0: found")
    ] = 0,
    speaker_voice: Annotated[
        list[str] | None,
        typer.Option(help="a voice for one speaker (dub), e.g. SPEAKER_01=kokoro:pt-BR/jm_kumo"),
    ] = None,
    writer: Annotated[str, typer.Option(help="story writer (voxctl models); empty: default")] = "",
    seed: int = 0,
    title: str = "",
    watch_: Annotated[bool, typer.Option("--watch", help="follow the job until it ends")] = False,
    as_json: Json = False,
    server: Server = "",
) -> None:
    """Create a job (uploading its input file), and optionally watch it."""
    if kind not in TYPES:
        raise _fail(f"unknown job type {kind!r}; one of {', '.join(TYPES)}")
    per_speaker: dict[str, str] = {}
    for entry in speaker_voice or []:
        label, _, chosen = entry.partition("=")
        if not chosen:
            raise _fail(f"--speaker-voice {entry!r}: write SPEAKER_01=<voice id>")
        per_speaker[label.strip().upper()] = chosen.strip()
    if audio_format.lower() not in FORMATS:  # refused here, before any upload
        raise _fail(f"--format {audio_format!r} is not produced; one of {', '.join(FORMATS)}")
    fmt = FORMATS[audio_format.lower()]
    s = _session(server)
    request = jobs_pb2.CreateJobRequest(project_id=_project_id(s, project), title=title)
    if file is not None:
        request.input_file_id = _upload(s, file)
    if kind == "stt":
        request.stt.CopyFrom(jobs_pb2.SttParams(
            language=language, word_timestamps=True, model=model, diarize=diarize,
            num_speakers=num_speakers,
        ))  # fmt: skip
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
                num_speakers=num_speakers,
                speaker_voices=per_speaker,
            )
        )
    else:
        request.ai_stories.CopyFrom(jobs_pb2.AiStoriesParams(prompt=prompt, target_words=words, seed=seed,
                                                             language=language, voice=voice, format=fmt,
                                                             writer=writer))  # fmt: skip
    job = _call(s.stub("jobs").CreateJob, request, s).job
    if as_json and not watch_:
        _print_json(_dict(job))
        return
    if not as_json:
        console.print(f"Created job [bold]{job.id}[/bold] ({_status(job)})")
    if watch_:
        watch(job.id, as_json=as_json, server=s.server)


def _follow(
    server: str, s: sessions.Session, job: str, after: int
) -> Iterator[jobs_pb2.WatchJobResponse]:
    """WatchJob's events after `after`; when the server ends the stream because the access
    token expired, refresh it and resume after the last event seen (nothing missed or repeated)."""
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


FINISHED = {
    jobs_pb2.JOB_STATUS_COMPLETED,
    jobs_pb2.JOB_STATUS_FAILED,
    jobs_pb2.JOB_STATUS_CANCELLED,
}


@app.command()
def watch(
    job: Annotated[str, typer.Argument(help="the job id (or a unique start of it)")],
    as_json: Json = False,
    server: Server = "",
) -> None:
    """Follow a job's newest run live (WatchJob) until it ends, with a progress bar; exits 1
    unless it completed."""
    s = _session(server)
    job = _job_id(s, job)
    current = _call(s.stub("jobs").GetJob, jobs_pb2.GetJobRequest(job_id=job), s).job
    if current.status not in FINISHED:
        # From the newest event on: an earlier run of a retried job is history, not news.
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.percentage:>3.0f}%"), console=err,
                      disable=as_json) as progress:  # fmt: skip
            bar = progress.add_task(_status(current), total=100, completed=current.progress)
            for event in _follow(server, s, job, current.last_event_seq):
                kind = event.WhichOneof("event")
                if kind == "progress":
                    progress.update(
                        bar, completed=event.progress.percent, description=event.progress.stage
                    )
                elif kind == "status":
                    name = _name(event.status.status, jobs_pb2.JobStatus, "JOB_STATUS_")
                    progress.update(bar, description=name)
                    if event.status.status == jobs_pb2.JOB_STATUS_COMPLETED:
                        progress.update(bar, completed=100)  # the bar ends full
        s = _session(server)  # the watch may have outlived its access token
        current = _call(s.stub("jobs").GetJob, jobs_pb2.GetJobRequest(job_id=job), s).job
    files: list[Any] = []
    if current.status == jobs_pb2.JOB_STATUS_COMPLETED:
        files = list(_call(s.stub("results").GetJobResult,
                           results_pb2.GetJobResultRequest(job_id=job), s).result.files)  # fmt: skip
    status = _name(current.status, jobs_pb2.JobStatus, "JOB_STATUS_")
    if as_json:
        _print_json({**_dict(current), "files": [_dict(f) for f in files]})
    else:
        run = f" (run {current.attempts})" if current.attempts > 1 else ""
        console.print(f"Job {job} {status}{run}"
                      + (f": {current.error}" if current.error and status != "completed" else ""))  # fmt: skip
        for f in files:
            console.print(f"  {f.name}  {f.size_bytes} bytes  [dim]{f.file_id}[/dim]")
    if current.status != jobs_pb2.JOB_STATUS_COMPLETED:
        raise typer.Exit(1)


def _when(stamp: Any) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if stamp.seconds or stamp.nanos else None


def _took(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = max(0.0, (end - start).total_seconds())
    return (
        f"  [dim](+{seconds:.1f} s)[/dim]"
        if seconds < 120
        else f"  [dim](+{seconds / 60:.1f} min)[/dim]"
    )


def _params(message: Any) -> dict[str, Any]:
    """A job's parameters as set, enums in words (AUDIO_FORMAT_MP3 -> mp3)."""
    out = _dict(message)
    for field in message.DESCRIPTOR.fields:
        if field.enum_type is not None and field.name in out:
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", field.enum_type.name).upper() + "_"
            value = out[field.name]
            words = [
                str(v).removeprefix(prefix).lower()
                for v in (value if isinstance(value, list) else [value])
            ]
            out[field.name] = words if isinstance(value, list) else words[0]
    return out


def _pairs(title: str, values: dict[str, Any]) -> None:
    """A titled block of `key: value` lines (whole floats as ints, lists and maps as JSON)."""
    if not values:
        return
    console.print(f"  {title}")
    for key, value in values.items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        shown = value if isinstance(value, str | int | float | bool) else json.dumps(value)
        console.print(f"    {key}: {shown}", markup=False, highlight=False)


@app.command()
def show(
    job: Annotated[str, typer.Argument(help="the job id (or a unique start of it)")],
    as_json: Json = False,
    server: Server = "",
) -> None:
    """Everything about one job: status, times, parameters, and for a finished job its
    facts (meta), files and log."""
    s = _session(server)
    job = _job_id(s, job)
    current = _call(s.stub("jobs").GetJob, jobs_pb2.GetJobRequest(job_id=job), s).job
    result = None
    if current.status in FINISHED:
        try:
            result = (
                s.stub("results")
                .GetJobResult(
                    results_pb2.GetJobResultRequest(job_id=job), metadata=s.metadata, timeout=60
                )
                .result
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:  # a job cancelled before it ran has none
                err.print(f"[red]{e.code().name}[/red]: {e.details()}")
                raise typer.Exit(1) from None
    which = current.WhichOneof("params")
    params = _params(getattr(current, which)) if which else {}
    if as_json:
        _print_json({"job": _dict(current), "result": _dict(result) if result else None})
        return
    progress = 100 if current.status == jobs_pb2.JOB_STATUS_COMPLETED else current.progress
    stage = f", {current.stage}" if current.stage and current.status not in FINISHED else ""
    console.print(f"[bold]{current.title or _kind(current)}[/bold]  [dim]{current.id}[/dim]")
    console.print(f"  type      {_kind(current)}")
    console.print(f"  status    {_status(current)}  {progress}%{stage}"
                  + (f"  (run {current.attempts})" if current.attempts > 1 else ""))  # fmt: skip
    if current.error:
        console.print(f"  error     [red]{current.error}[/red]")
    console.print(
        f"  project   {_project_name(s, current.project_id)} [dim]{current.project_id}[/dim]"
    )
    created, started, finished = (
        _when(current.create_time),
        _when(current.start_time),
        _when(current.finish_time),
    )
    for label, at, took in (("created", created, ""), ("started", started, _took(created, started)),
                            ("finished", finished, _took(started or created, finished))):  # fmt: skip
        if at is not None:
            console.print(f"  {label:<9} {at.astimezone():%Y-%m-%d %H:%M:%S}{took}")
    if current.input_file_id:
        console.print(f"  input     {current.input_file_id}")
    _pairs("parameters", params)
    if result is None:
        if current.status not in FINISHED:
            console.print(f"[dim]`voxctl watch {current.id[:SHORT]}` follows it live.[/dim]")
        return
    _pairs("facts", _dict(result.meta) if result.meta.fields else {})
    if result.files:
        console.print("  files")
        for f in result.files:
            console.print(f"    {f.name}  {f.size_bytes} bytes  [dim]{f.file_id}[/dim]")
    if result.logs.strip():
        console.print("  log")
        for line in result.logs.rstrip("\n").split("\n"):
            console.print(f"    {line}", markup=False, highlight=False)


@app.command()
def download(
    job: Annotated[str, typer.Argument(help="the job id (or a unique start of it)")],
    out: Annotated[Path, typer.Option(help="directory to write into")] = Path("."),
    server: Server = "",
) -> None:
    """Download every result file of a job."""
    s = _session(server)
    job = _job_id(s, job)
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
    """Cancel a pending or running job (its id or a unique start of it)."""
    s = _session(server)
    job = _job_id(s, job)
    _call(s.stub("jobs").CancelJob, jobs_pb2.CancelJobRequest(job_id=job), s)
    console.print(f"Cancelled job {job}.")


@app.command()
def retry(job: str, server: Server = "") -> None:
    """Run a failed or cancelled job again (its id or a unique start of it)."""
    s = _session(server)
    job = _job_id(s, job)
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
    as_json: Json = False,
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
    if as_json:
        _print_json({item.key: _typed(item) for item in reply.settings})
        return
    table = Table("setting", "value", "from", "about")
    for item in reply.settings:
        shown = _typed(item)
        table.add_row(item.key, json.dumps(shown) if isinstance(shown, bool) else str(shown),
                      _name(item.source, settings_pb2.SettingSource, "SETTING_SOURCE_"), item.description)  # fmt: skip
    console.print(table)


def _typed(item: Any) -> Any:
    """A setting's value in its own type (JSON numbers arrive as floats: 5, not 5.0)."""
    value = getattr(item.value, item.value.WhichOneof("kind") or "string_value")
    if item.type == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


keys_app = typer.Typer(help="API keys for services and scripts (Bearer vxk_...; VOXMESH_API_KEY).",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(keys_app, name="keys")
ROLES = {"viewer": users_pb2.USER_ROLE_VIEWER, "editor": users_pb2.USER_ROLE_EDITOR,
         "admin": users_pb2.USER_ROLE_ADMIN}  # fmt: skip


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="what the key is for, e.g. n8n")],
    role: Annotated[str, typer.Option(help="viewer, editor or admin (at most yours)")] = "",
    project: Annotated[
        str, typer.Option(help="a project (name or id): the key acts only there")
    ] = "",
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
        project_id=_project_id(s, project),
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
    as_json: Json = False,
    server: Server = "",
) -> None:
    """Your API keys (never their secrets)."""
    s = _session(server)
    reply = _call(s.stub("keys").ListApiKeys,
                  keys_pb2.ListApiKeysRequest(all_users=all_users, include_revoked=revoked), s)  # fmt: skip
    if as_json:
        _print_json([_dict(k) for k in reply.keys])
        return
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
def keys_revoke(
    key: Annotated[str, typer.Argument(help="the key's id, a unique start of it, or its name")],
    server: Server = "",
) -> None:
    """Stop a key from working, from its next call on."""
    s = _session(server)
    listed = _call(s.stub("keys").ListApiKeys, keys_pb2.ListApiKeysRequest(), s).keys
    named = [(k.id, k.name) for k in listed if k.name == key]
    key_id = key if UUID.fullmatch(key.lower()) else _one(
        key, "active key", named or [(k.id, k.name) for k in listed
                                     if len(key) >= 4 and k.id.startswith(key.lower())],
        "`voxctl keys list`")  # fmt: skip
    reply = _call(s.stub("keys").RevokeApiKey, keys_pb2.RevokeApiKeyRequest(key_id=key_id), s)
    console.print(f"key {reply.key.id} ({reply.key.name}) revoked")


def main() -> None:
    app()
