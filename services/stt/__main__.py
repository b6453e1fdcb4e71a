"""`python -m services.stt`: run an STT worker. The model loads before the worker pulls jobs
(health NOT_SERVING meanwhile) and stays warm; SIGTERM finishes the job in hand, then stops."""

from __future__ import annotations

from services.stt.config import WorkerSettings
from services.stt.handler import make_handler, make_shard_handler
from voxmesh import service
from voxmesh.speech.stt import from_settings
from voxmesh.worker import Worker


def make() -> tuple[Worker, service.Loader]:
    settings = WorkerSettings()

    def load() -> dict[str, float]:
        engine = from_settings(settings.stt)
        return {engine.name: engine.load_seconds}

    worker = Worker(
        "stt",
        make_handler(settings.stt),
        nats_url=settings.nats_url,
        shard_handler=make_shard_handler(settings.stt),
    )
    return worker, load


if __name__ == "__main__":
    service.main("stt", make)
