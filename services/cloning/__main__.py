"""`python -m services.cloning`: run a voice cloning worker (the base voice and both speaker
encoders load before jobs are pulled; health NOT_SERVING meanwhile)."""

from __future__ import annotations

from services.cloning.config import WorkerSettings
from services.cloning.handler import make_handler
from voxmesh import service
from voxmesh.speech import speaker, voices
from voxmesh.speech.tts import load as load_voice
from voxmesh.worker import Worker


def make() -> tuple[Worker, service.Loader]:
    settings = WorkerSettings()

    def load() -> dict[str, float]:
        return service.timed({
            f"piper:{voices.DEFAULT_VOICE}": lambda: load_voice(voices.CATALOG[voices.DEFAULT_VOICE]),
            "d-vector": speaker.fitter,
            "resemblyzer": speaker.judge,
        })  # fmt: skip

    return Worker("voice_cloning", make_handler(settings), nats_url=settings.nats_url), load


if __name__ == "__main__":
    service.main("cloning", make)
