"""`python -m services.dubbing`: run a dubbing worker (Whisper, the translation models, the target
voices and the speaker encoders load before jobs are pulled; health NOT_SERVING meanwhile)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.dubbing.config import WorkerSettings
from services.dubbing.handler import make_handler
from voxmesh import service
from voxmesh.speech import speaker, voices
from voxmesh.speech.stt import load as load_stt
from voxmesh.speech.translate import translator
from voxmesh.speech.tts import load as load_voice
from voxmesh.worker import Worker


def make() -> tuple[Worker, service.Loader]:
    settings = WorkerSettings()

    def load() -> dict[str, float]:
        steps: dict[str, Callable[[], Any]] = {
            f"whisper:{settings.dubbing.stt_model}": lambda: load_stt(settings.dubbing.stt_model),
            "bergamot en<->pt": translator,
            f"piper:{voices.DEFAULT_VOICE}": lambda: load_voice(
                voices.CATALOG[voices.DEFAULT_VOICE]
            ),
            "kokoro": lambda: load_voice(voices.for_language("pt")),
            "d-vector": speaker.fitter,
            "resemblyzer": speaker.judge,
        }
        return service.timed(steps)

    return Worker("dubbing", make_handler(settings), nats_url=settings.nats_url), load


if __name__ == "__main__":
    service.main("dubbing", make)
