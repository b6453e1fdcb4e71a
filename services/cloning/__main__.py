"""`python -m services.cloning`: run a voice cloning worker (the base voice and both speaker
encoders load before jobs are pulled; health NOT_SERVING meanwhile)."""

from __future__ import annotations

import time

from services.cloning import speaker
from services.cloning.config import WorkerSettings
from services.cloning.handler import make_handler
from services.tts.engines import load as load_voice
from voxmesh import service, voices
from voxmesh.worker import Worker


def make() -> tuple[Worker, service.Loader]:
    settings = WorkerSettings()

    def load() -> dict[str, float]:
        loaded = {}
        engine = load_voice(voices.CATALOG[voices.DEFAULT_VOICE])
        loaded[f"piper:{voices.DEFAULT_VOICE}"] = engine.load_seconds
        for name, make_encoder in (("d-vector", speaker.fitter), ("resemblyzer", speaker.judge)):
            started = time.perf_counter()
            make_encoder()
            loaded[name] = time.perf_counter() - started
        return loaded

    return Worker("voice_cloning", make_handler(settings), nats_url=settings.nats_url), load


if __name__ == "__main__":
    service.main("cloning", make)
