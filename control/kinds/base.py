"""What every job kind is made of, and the helpers kinds share (files, saved voices, voices).

A kind never touches job status: the lifecycle does that. It validates, fills defaults, says
what its dispatch carries and what its completion does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control.auth import policy
from control.auth.principal import Principal
from control.db.models import File, Job, JobType, SavedVoice
from control.validate import VOICE_RE, enum_field, text_field, uuid_field
from voxmesh import audio
from voxmesh.errors import InvalidArgument, NotFound, PermissionDenied
from voxmesh.speech import voices
from voxmesh.speech.languages import SHIPPED_STT, SttModel
from voxmesh.v1 import jobs_pb2, worker_pb2

P = TypeVar("P", bound=Message)


@dataclass(frozen=True)
class UserDefaults:
    """The effective settings a job's defaults come from."""

    preferred_voice: str = ""
    default_language: str = "en"
    max_text_length: int = 20_000
    saved_voices: frozenset[str] = frozenset()
    """Lower-cased names of the voices the job's project saved (cloned voices)."""
    stt_models: tuple[SttModel, ...] = SHIPPED_STT
    """The STT models connected workers serve, in their order of preference (the shipped set
    while no STT worker is connected)."""


@dataclass
class Request:
    """Who asks for a job, where, and with which defaults (what validation may need)."""

    session: AsyncSession
    who: Principal
    project_id: uuid.UUID
    defaults: UserDefaults


def stored_file(row: File, role: str = "") -> worker_pb2.StoredFile:
    return worker_pb2.StoredFile(
        file_id=str(row.id), sha256=row.sha256, size_bytes=row.size_bytes,
        content_type=row.content_type, filename=row.filename, role=role, key=row.blob_key or b"",
    )  # fmt: skip


async def owned_file(req: Request, raw_id: str, field: str) -> uuid.UUID | None:
    """The id of a file the caller may use (their own, any for admins; a project-scoped key:
    only its project's), or None if empty."""
    file_id = uuid_field(raw_id, field, required=False)
    if file_id is None:
        return None
    stored = await req.session.get(File, file_id)
    if stored is None:
        raise NotFound(f"no file with id {file_id}; upload it first", field=field)
    if stored.owner_id != req.who.user_id and not req.who.is_admin:
        raise PermissionDenied(f"file {file_id} belongs to another user", field=field)
    await policy.require_file_in_scope(req.session, stored, field)
    return file_id


async def attach_file(
    session: AsyncSession, dispatch: worker_pb2.JobDispatch, key: str, file_id: str, role: str = ""
) -> None:
    """Send a stored file with the dispatch under `key` (skipped if it no longer exists: the
    worker then says what is missing)."""
    row = await session.get(File, uuid.UUID(file_id)) if file_id else None
    if row is not None:
        dispatch.files[key].CopyFrom(stored_file(row, role))


async def attach_saved_voice(
    session: AsyncSession, job: Job, name: str, dispatch: worker_pb2.JobDispatch, key: str = ""
) -> None:
    """If `name` is a voice the job's project saved (not a stock voice), send its profile (as
    the dispatch's voice_profile, or under `key` in its voice_profiles)."""
    if not name or name in voices.CATALOG:
        return
    saved = await session.scalar(
        select(SavedVoice).where(
            SavedVoice.project_id == job.project_id, func.lower(SavedVoice.name) == name.lower()
        )
    )
    if saved is not None:
        (dispatch.voice_profiles[key] if key else dispatch.voice_profile).update(saved.profile)


def voice_id(value: str, field: str) -> str:
    return text_field(
        value,
        field,
        max_len=100,
        pattern=VOICE_RE,
        pattern_hint="must be a voice id (letters, digits, '.', '_', ':', '-' or '/')",
    )


def stock_voice(name: str, engine: str, field: str) -> str:
    """The stock voice a job will use, checked against the catalog now, not at synthesis."""
    try:
        return voices.resolve(name, engine).id
    except KeyError:
        raise InvalidArgument(
            f"unknown voice {name!r}; VoiceService/ListVoices lists the voices", field=field
        ) from None
    except ValueError as e:
        raise InvalidArgument(str(e), field=field) from None


def any_voice(name: str, engine: str, field: str, defaults: UserDefaults) -> str:
    """A stock voice, or one the job's project saved (its name, as saved)."""
    if name and name.lower() in defaults.saved_voices:
        return name
    return stock_voice(name, engine, field)


def spoken_text(value: str, field: str, limit: int) -> str:
    return text_field(value, field, min_len=1, max_len=limit, multiline=True)


FORMAT_NAMES = ", ".join(
    jobs_pb2.AudioFormat.Name(f).removeprefix("AUDIO_FORMAT_") for f in audio.FORMATS
)


def audio_format(value: int, field: str) -> jobs_pb2.AudioFormat:
    """An AudioFormat the services can encode (voxmesh.audio.FORMATS); unspecified → WAV."""
    enum_field(jobs_pb2.AudioFormat, value, field)
    if value and value not in audio.FORMATS:
        raise InvalidArgument(
            f"{field} {jobs_pb2.AudioFormat.Name(value)} cannot be produced; "
            f"formats: {FORMAT_NAMES}",
            field=field,
        )
    return value or audio.DEFAULT_FORMAT  # type: ignore[return-value]


class JobKind(Generic[P]):
    """One job type, as the control plane sees it. Subclasses set the class attributes and
    override `normalize`, and whichever hooks their type needs."""

    job_type: ClassVar[JobType]
    field: ClassVar[str]
    """The params oneof field (Job, CreateJobRequest, JobDispatch): also the NATS subject
    suffix, the worker consumer's name and the metrics label."""
    params_type: ClassVar[type[Message]]
    input_meaning: ClassVar[str | None] = None
    """What the job's input file is ("the audio to transcribe"); None: it takes none."""
    voice_field: ClassVar[str | None] = None
    """The params field naming the voice; a voice the project saved travels with the dispatch
    as its profile."""

    def names_saved_voices(self) -> bool:
        """Whether checking its params needs the project's saved voices
        (UserDefaults.saved_voices): only then does CreateJob read them (an STT job is spared
        the query)."""
        return self.voice_field is not None

    # --- the stored form --------------------------------------------------------------------
    def parse(self, stored: dict[str, Any]) -> P:
        """The params message from the JSON a job stores (control.convert.params_to_json)."""
        out = self.params_type()
        json_format.ParseDict(stored, out, ignore_unknown_fields=True)
        return out  # type: ignore[return-value]

    # --- creating and changing a job ------------------------------------------------------
    def normalize(self, params: P, defaults: UserDefaults) -> P:
        """A validated copy of `params` with every default filled in, or InvalidArgument."""
        out = self.params_type()
        out.CopyFrom(params)
        self.fill(out, defaults)  # type: ignore[arg-type]
        return out  # type: ignore[return-value]

    def fill(self, out: P, defaults: UserDefaults) -> None:
        """Validate `out` (a copy of the caller's params) and fill in its defaults, in place."""
        raise NotImplementedError

    async def check(self, req: Request, params: P) -> None:
        """Checks that need the database (files or jobs the params name); on create and
        update."""

    async def input_file(self, req: Request, params: P, raw_id: str) -> uuid.UUID | None:
        """The job's input file: required when the kind takes one, refused otherwise."""
        if self.input_meaning is not None and not raw_id:
            raise InvalidArgument(
                f"{self.job_type.value} jobs need input_file_id: {self.input_meaning}",
                field="input_file_id",
            )
        if self.input_meaning is None and raw_id:
            raise InvalidArgument(
                f"{self.job_type.value} jobs take no input file; leave input_file_id empty",
                field="input_file_id",
            )
        return await owned_file(req, raw_id, "input_file_id")

    # --- dispatch and completion ------------------------------------------------------------
    async def prepare_dispatch(
        self, session: AsyncSession, job: Job, params: P, dispatch: worker_pb2.JobDispatch
    ) -> None:
        """Add what this kind's worker needs beyond params and the input file (by default the
        profile of the saved voice `voice_field` names)."""
        if self.voice_field is not None:
            await attach_saved_voice(session, job, getattr(params, self.voice_field), dispatch)

    async def on_completed(
        self,
        session: AsyncSession,
        job: Job,
        params: P,
        completed: worker_pb2.WorkerCompleted,
        meta: dict[str, Any],
        log: Callable[[str], None],
    ) -> None:
        """What completing a job of this kind does besides storing its result."""
