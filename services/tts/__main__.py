"""`python -m services.tts`: run a TTS worker (the default voice loads before jobs are pulled,
health NOT_SERVING meanwhile; other voices load on first use and stay warm)."""

from __future__ import annotations

from services.tts.config import WorkerSettings
from services.tts.handler import make_handler
from voxmesh import service
from voxmesh.speech import voices
from voxmesh.speech.tts import installed_engines
from voxmesh.speech.tts import load as load_voice
from voxmesh.worker import Worker


def make() -> tuple[Worker, service.Loader]:
    settings = WorkerSettings()

    def load() -> dict[str, float]:
        engine = load_voice(voices.CATALOG[voices.DEFAULT_VOICE])
        return {f"piper:{voices.DEFAULT_VOICE}": engine.load_seconds}

    worker = Worker("tts", make_handler(settings.tts), nats_url=settings.nats_url,
                    capabilities={"engines": installed_engines(settings.tts)})  # fmt: skip
    return worker, load


if __name__ == "__main__":
    service.main("tts", make)
