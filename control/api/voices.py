"""VoiceService: the stock voice catalog (voxmesh/voices.py) and the voices projects saved from
voice cloning jobs (table `voices`)."""

from __future__ import annotations

import grpc
from sqlalchemy import func, select

from control.api.projects import get_project
from control.app import ControlApp
from control.auth import policy, principal
from control.db.models import File, Job, SavedVoice
from control.validate import required_uuid, text_field
from voxmesh.errors import InvalidArgument, NotFound
from voxmesh.speech import languages, voices, writer
from voxmesh.v1 import voices_pb2, voices_pb2_grpc

ENGINES = (*voices.ENGINES, "clone")


class VoiceService(voices_pb2_grpc.VoiceServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

    async def ListVoices(
        self, request: voices_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> voices_pb2.ListVoicesResponse:
        engine = text_field(request.engine, "engine", max_len=32).lower()
        if engine and engine not in ENGINES:
            raise InvalidArgument(
                f"engine {engine!r} is not one of {', '.join(ENGINES)}", field="engine"
            )
        language = text_field(request.language, "language", max_len=16).lower()
        speakable = self.app.mesh.presence.engines("tts") if self.app.mesh is not None else set()
        found = [
            voices_pb2.VoiceInfo(
                id=v.id,
                engine=v.engine,
                language=v.language,
                gender=v.gender,
                description=v.description,
                sample_rate=v.sample_rate,
                requirements=v.needs,
                available=v.engine in speakable,
            )
            for v in sorted(voices.CATALOG.values(), key=lambda v: v.id)
            if (not engine or v.engine == engine)
            and (not language or v.language.lower().startswith(language))
        ]
        if request.project_id and engine in ("", "clone"):
            project_id = required_uuid(request.project_id, "project_id")
            async with self.app.sessions() as session:
                await get_project(session, project_id)
                rows = await session.scalars(
                    select(SavedVoice).where(SavedVoice.project_id == project_id)
                    .order_by(func.lower(SavedVoice.name))
                )  # fmt: skip
                for row in rows:
                    base = voices.CATALOG.get(str(row.profile.get("base_voice", "")))
                    if language and not (base and base.language.lower().startswith(language)):
                        continue
                    figures = ", ".join(f"{k} {v}" for k, v in row.meta.items() if k != "method")
                    found.append(voices_pb2.VoiceInfo(
                        id=row.name, engine="clone", language=base.language if base else "",
                        description=f"cloned voice ({row.meta.get('method', 'profile')}); {figures}",
                        sample_rate=16000, project_id=str(row.project_id),
                        reference_file_id=str(row.reference_file_id or ""),
                        available=bool(base and base.engine in speakable),
                    ))  # fmt: skip
        if request.available_only:
            found = [v for v in found if v.available]
        # What can be spoken now first (a stable sort keeps the catalog's order within each).
        found.sort(key=lambda v: not v.available)
        return voices_pb2.ListVoicesResponse(voices=found)

    async def ListModels(
        self, request: voices_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> voices_pb2.ListModelsResponse:
        job_type = text_field(request.job_type, "job_type", max_len=32).lower()
        if job_type not in ("", "stt", "ai_stories"):
            raise InvalidArgument(
                f"job_type {job_type!r} is not one of stt, ai_stories", field="job_type"
            )
        presence = self.app.mesh.presence if self.app.mesh is not None else None
        found: list[voices_pb2.ModelInfo] = []
        if job_type in ("", "stt"):
            connected = presence.announced_stt_models() if presence else ()
            announced = {m.name for m in connected}
            for model in connected or languages.SHIPPED_STT:
                found.append(voices_pb2.ModelInfo(
                    name=model.name, job_type="stt", multilingual=model.multilingual,
                    languages=sorted(languages.WHISPER_LANGUAGES) if model.multilingual else ["en"],
                    description=f"Whisper {model.describe()}", available=model.name in announced,
                ))  # fmt: skip
        if job_type in ("", "ai_stories"):
            writing = bool(presence and presence.workers("ai_stories"))
            for story_writer in writer.WRITERS.values():
                found.append(voices_pb2.ModelInfo(
                    name=story_writer.name, job_type="ai_stories", languages=sorted(languages.STORY_LANGUAGES),
                    description=story_writer.about, available=writing,
                ))  # fmt: skip
        return voices_pb2.ListModelsResponse(models=found)

    async def DeleteVoice(
        self, request: voices_pb2.DeleteVoiceRequest, context: grpc.aio.ServicerContext
    ) -> voices_pb2.DeleteVoiceResponse:
        project_id = required_uuid(request.project_id, "project_id")
        name = text_field(request.name, "name", min_len=1, max_len=100)
        async with self.app.sessions() as session:
            project = await get_project(session, project_id)
            policy.require_project_owner(principal.current(), project, "delete its voices")
            row = await session.scalar(
                select(SavedVoice)
                .where(SavedVoice.project_id == project_id, func.lower(SavedVoice.name) == name.lower())
                .with_for_update()
            )  # fmt: skip
            if row is None:
                raise NotFound(f"the project has no voice named {name!r}", field="name")
            reference = row.reference_file_id
            await session.delete(row)
            await session.flush()
            if reference is not None:  # the kept recording goes too, unless a job still uses it
                in_use = await session.scalar(
                    select(func.count()).select_from(Job).where(Job.input_file_id == reference)
                )
                if not in_use:
                    stored = await session.get(File, reference)
                    if stored is not None:
                        await session.delete(stored)
            await session.commit()
        return voices_pb2.DeleteVoiceResponse()
