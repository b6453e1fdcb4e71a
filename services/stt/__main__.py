"""`python -m services.stt`: run an STT worker. The model loads before the worker pulls jobs
(health NOT_SERVING meanwhile) and stays warm; SIGTERM finishes the job in hand, then stops."""

from __future__ import annotations

from services.stt.config import WorkerSettings
from services.stt.handler import make_handler, make_shard_handler
from voxmesh import service
from voxmesh.speech.stt import catalog, from_settings
from voxmesh.worker import Worker


def make() -> tuple[Worker, service.Loader]:
    settings = WorkerSettings()

    def load() -> dict[str, float]:
        engines = from_settings(settings.stt)
        # What this worker serves, announced with its presence (CreateJob validates by it).
        worker.capabilities["models"] = [m.capability() for m in catalog(engines)]
        return {name: engine.load_seconds for name, engine in engines.items()}

    worker = Worker(
        "stt",
        make_handler(settings.stt),
        nats_url=settings.nats_url,
        shard_handler=make_shard_handler(settings.stt),
    )
    return worker, load


if __name__ == "__main__":
    service.main("stt", make)
