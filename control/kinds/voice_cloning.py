"""Voice cloning: speech in the voice of a reference recording, from text or by converting a
source recording; optionally saved as a project voice (services/cloning)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control.db.models import Job, JobType, SavedVoice
from control.kinds.base import (
    JobKind,
    Request,
    UserDefaults,
    attach_file,
    audio_format,
    owned_file,
    spoken_text,
    voice_id,
)
from control.validate import uuid_field
from voxmesh import roles
from voxmesh.errors import AlreadyExists, InvalidArgument
from voxmesh.speech import voices
from voxmesh.v1 import jobs_pb2, worker_pb2

SAVED_FIGURES = ("similarity_clone", "similarity_base", "wer", "method")
"""Result meta kept with a saved voice."""


class VoiceCloning(JobKind[jobs_pb2.VoiceCloningParams]):
    job_type = JobType.VOICE_CLONING
    field = "voice_cloning"
    params_type = jobs_pb2.VoiceCloningParams
    input_meaning = "the reference recording of the voice"

    def names_saved_voices(self) -> bool:
        return True  # save_as_voice must not take the name of a voice the project saved

    def fill(self, out: jobs_pb2.VoiceCloningParams, defaults: UserDefaults) -> None:
        has_text, has_source = bool(out.text.strip()), bool(out.source_file_id)
        if has_text == has_source:
            raise InvalidArgument(
                "voice_cloning needs exactly one of text (speak it in the reference voice) or "
                "source_file_id (convert that recording into the reference voice)",
                field="voice_cloning.text",
            )
        if has_text:
            out.text = spoken_text(out.text, "voice_cloning.text", defaults.max_text_length)
        uuid_field(out.source_file_id, "voice_cloning.source_file_id", required=False)
        out.save_as_voice = voice_id(out.save_as_voice, "voice_cloning.save_as_voice")
        if out.save_as_voice in voices.CATALOG:
            raise InvalidArgument(
                f"{out.save_as_voice!r} is a stock voice's id; choose another name",
                field="voice_cloning.save_as_voice",
            )
        if out.save_as_voice.lower() in defaults.saved_voices:
            raise AlreadyExists(
                f"the project already has a voice named {out.save_as_voice!r}; delete it first "
                "(VoiceService/DeleteVoice) or choose another name",
                field="voice_cloning.save_as_voice",
            )
        if out.keep_reference and not out.save_as_voice:
            raise InvalidArgument(
                "keep_reference only applies with save_as_voice",
                field="voice_cloning.keep_reference",
            )
        out.format = audio_format(out.format, "voice_cloning.format")

    async def check(self, req: Request, params: jobs_pb2.VoiceCloningParams) -> None:
        await owned_file(req, params.source_file_id, "voice_cloning.source_file_id")

    async def prepare_dispatch(
        self,
        session: AsyncSession,
        job: Job,
        params: jobs_pb2.VoiceCloningParams,
        dispatch: worker_pb2.JobDispatch,
    ) -> None:
        await attach_file(session, dispatch, roles.SOURCE, params.source_file_id, roles.SOURCE)

    async def on_completed(
        self,
        session: AsyncSession,
        job: Job,
        params: jobs_pb2.VoiceCloningParams,
        completed: worker_pb2.WorkerCompleted,
        meta: dict[str, Any],
        log: Callable[[str], None],
    ) -> None:
        """save_as_voice: store the worker's voice profile as a voice of the job's project."""
        name = params.save_as_voice.strip()
        if not name or not completed.HasField("voice_profile"):
            return
        taken = await session.scalar(
            select(SavedVoice.id).where(
                SavedVoice.project_id == job.project_id,
                func.lower(SavedVoice.name) == name.lower(),
            )
        )
        pending = any(
            isinstance(o, SavedVoice)
            and o.project_id == job.project_id
            and o.name.lower() == name.lower()
            for o in session.new
        )  # saved by another job of the same batch of events
        if taken is not None or pending:  # saved by another job since this one was created
            log(f"not saved: the project already has a voice named {name!r}")
            return
        session.add(SavedVoice(
            project_id=job.project_id, name=name, created_by=job.created_by, source_job_id=job.id,
            reference_file_id=job.input_file_id if params.keep_reference else None,
            profile=json_format.MessageToDict(completed.voice_profile),
            meta={k: meta[k] for k in SAVED_FIGURES if k in meta},
        ))  # fmt: skip
        log(f"saved the voice {name!r} in the project"
            + (" with its reference recording" if params.keep_reference else " (profile only)"))  # fmt: skip
