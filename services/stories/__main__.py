"""`python -m services.stories`: run an AI stories worker (the default writer and the default
voice load before jobs are pulled, health NOT_SERVING meanwhile, unless a text endpoint is
configured)."""

from __future__ import annotations

from services.stories.config import WorkerSettings
from services.stories.handler import make_handler
from voxmesh import service
from voxmesh.speech import voices
from voxmesh.speech.tts import load as load_voice
from voxmesh.speech.writer import local_model
from voxmesh.worker import Worker


def make() -> tuple[Worker, service.Loader]:
    settings = WorkerSettings()

    def load() -> dict[str, float]:
        loaded = {}
        if not settings.stories.base_url:
            # The default writer (checked against its sha256); the fast one loads on first use.
            model = local_model(settings.stories.threads, settings.stories.writer)
            loaded[model.endpoint.model] = model.load_seconds
        engine = load_voice(voices.CATALOG[voices.DEFAULT_VOICE])
        loaded[f"piper:{voices.DEFAULT_VOICE}"] = engine.load_seconds
        return loaded

    return Worker("ai_stories", make_handler(settings), nats_url=settings.nats_url), load


if __name__ == "__main__":
    service.main("stories", make)
