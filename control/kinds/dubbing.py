"""Dubbing: transcribe, translate and re-voice a recording or video, keeping its timing; a
revision re-renders a finished dub with edited segments (services/dubbing)."""

from __future__ import annotations

import re
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from control.db.models import Job, JobResult, JobStatus, JobType
from control.kinds.base import (
    JobKind,
    Request,
    UserDefaults,
    any_voice,
    attach_file,
    attach_saved_voice,
    audio_format,
    owned_file,
    voice_id,
)
from control.validate import (
    MAX_SPEAKERS,
    language_field,
    number_range,
    speaker_count,
    text_field,
    uuid_field,
)
from voxmesh import roles
from voxmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from voxmesh.speech import languages, voices
from voxmesh.v1 import jobs_pb2, worker_pb2

SPEAKER_RE = re.compile(r"SPEAKER_\d{2}")
REVISED = (roles.SEGMENTS, roles.SEGMENT_AUDIO, roles.VOICE)
"""What a revision reuses of the revised job's result, by role."""
LEGACY_NAMES = {"segments.json": roles.SEGMENTS, "segment-audio.npz": roles.SEGMENT_AUDIO,
                "voice.json": roles.VOICE}  # fmt: skip
"""Roles of files stored before results recorded roles."""


class Dubbing(JobKind[jobs_pb2.DubbingParams]):
    job_type = JobType.DUBBING
    field = "dubbing"
    params_type = jobs_pb2.DubbingParams
    voice_field = "voice"
    input_meaning = "the recording or video to dub"

    def fill(self, out: jobs_pb2.DubbingParams, defaults: UserDefaults) -> None:
        out.target_language = language_field(
            out.target_language, "dubbing.target_language", required=True
        )
        out.source_language = language_field(out.source_language, "dubbing.source_language")
        if out.source_language and out.source_language == out.target_language:
            raise InvalidArgument(
                "dubbing.target_language must differ from source_language",
                field="dubbing.target_language",
            )
        pair = (languages.base(out.source_language), languages.base(out.target_language))
        if pair[1] not in languages.DUBBING_TARGETS or (
            pair[0] and pair not in languages.TRANSLATION_PAIRS
        ):
            raise InvalidArgument(
                f"dubbing {out.source_language or 'auto'} → {out.target_language} is not "
                f"available; the shipped models dub {languages.pairs_text()}",
                field="dubbing.target_language",
            )
        out.voice = voice_id(out.voice, "dubbing.voice")
        if out.voice:
            out.voice = any_voice(out.voice, "", "dubbing.voice", defaults)
        speaker_count(out.num_speakers, "dubbing.num_speakers")
        if len(out.speaker_voices) > MAX_SPEAKERS:
            raise InvalidArgument(
                f"at most {MAX_SPEAKERS} speaker voices", field="dubbing.speaker_voices"
            )
        for label in list(out.speaker_voices):
            where = f"dubbing.speaker_voices[{label[:20]!r}]"
            if not SPEAKER_RE.fullmatch(label):
                raise InvalidArgument(
                    f"{where}: speakers are named SPEAKER_01, SPEAKER_02, ... (by talk time)",
                    field="dubbing.speaker_voices",
                )
            chosen = voice_id(out.speaker_voices[label], where)
            out.speaker_voices[label] = any_voice(chosen, "", where, defaults)
        uuid_field(out.revise_job_id, "dubbing.revise_job_id", required=False)
        if out.edits and not out.revise_job_id:
            raise InvalidArgument(
                "edits need revise_job_id (the dub to re-render)", field="dubbing.edits"
            )
        if len(out.edits) > 500:
            raise InvalidArgument("at most 500 edits at once", field="dubbing.edits")
        for i, edit in enumerate(out.edits):
            where = f"dubbing.edits[{i}]"
            if edit.index < 0:
                raise InvalidArgument(f"{where}.index must be 0 or more", field=f"{where}.index")
            edit.text = text_field(edit.text, f"{where}.text", max_len=2000, multiline=True)
            edit.translation = text_field(
                edit.translation, f"{where}.translation", max_len=2000, multiline=True
            )
            if not edit.text and not edit.translation:
                raise InvalidArgument(
                    f"{where} changes nothing: set text or translation", field=where
                )
        out.max_stretch = number_range(
            out.max_stretch, "dubbing.max_stretch", low=1.0, high=2.0, zero_means=1.3
        )
        out.format = audio_format(out.format, "dubbing.format")

    async def input_file(
        self, req: Request, params: jobs_pb2.DubbingParams, raw_id: str
    ) -> uuid.UUID | None:
        if not params.revise_job_id:
            return await super().input_file(req, params, raw_id)
        # A revision re-renders a finished dub of the same project, from its recording.
        field = "dubbing.revise_job_id"
        revised = await req.session.get(Job, uuid.UUID(params.revise_job_id))
        if revised is None or revised.project_id != req.project_id:
            raise NotFound(f"no dubbing job {params.revise_job_id} in this project", field=field)
        if revised.type is not JobType.DUBBING or revised.status is not JobStatus.COMPLETED:
            raise FailedPrecondition(
                f"only a COMPLETED dubbing job can be revised; that one is a "
                f"{revised.type.value} job, {revised.status.value}"
            )
        given = await owned_file(req, raw_id, "input_file_id")
        if given is not None and given != revised.input_file_id:
            raise InvalidArgument(
                "a revision re-renders the revised job's recording: leave input_file_id empty",
                field="input_file_id",
            )
        return revised.input_file_id

    async def prepare_dispatch(
        self,
        session: AsyncSession,
        job: Job,
        params: jobs_pb2.DubbingParams,
        dispatch: worker_pb2.JobDispatch,
    ) -> None:
        await super().prepare_dispatch(session, job, params, dispatch)
        for name in set(params.speaker_voices.values()):
            if name not in voices.CATALOG:  # a saved voice: its profile travels by name
                await attach_saved_voice(session, job, name, dispatch, name.lower())
        if not params.revise_job_id:
            return
        # A revision: the revised job's segments, their speech and its voice, by role.
        result = await session.get(JobResult, uuid.UUID(params.revise_job_id))
        for entry in result.files if result is not None else []:
            role = entry.get("role") or LEGACY_NAMES.get(str(entry.get("name")), "")
            if role in REVISED:
                await attach_file(
                    session, dispatch, roles.revised(role), str(entry["file_id"]), role
                )
