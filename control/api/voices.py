"""VoiceService: the stock voice catalog (voxmesh/voices.py)."""

from __future__ import annotations

import grpc

from control.api.validate import text_field
from voxmesh import voices
from voxmesh.errors import InvalidArgument
from voxmesh.v1 import voices_pb2, voices_pb2_grpc

ENGINES = voices.ENGINES


class VoiceService(voices_pb2_grpc.VoiceServiceServicer):
    def __init__(self, app: object) -> None:
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
        return voices_pb2.ListVoicesResponse(
            voices=[
                voices_pb2.VoiceInfo(
                    id=v.id,
                    engine=v.engine,
                    language=v.language,
                    gender=v.gender,
                    description=v.description,
                    sample_rate=v.sample_rate,
                    requirements=v.needs,
                )
                for v in sorted(voices.CATALOG.values(), key=lambda v: v.id)
                if (not engine or v.engine == engine)
                and (not language or v.language.lower().startswith(language))
            ]
        )
