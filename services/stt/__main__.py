"""`python -m services.stt`: run an STT worker. The model loads before the worker pulls jobs
and stays warm; SIGTERM finishes the job in hand, then stops."""

from __future__ import annotations

import asyncio
import logging
import signal

from services.stt.config import WorkerSettings
from services.stt.engines import from_settings
from services.stt.handler import make_handler, make_shard_handler
from voxmesh.worker import Worker

log = logging.getLogger("services.stt")


async def main() -> None:
    settings = WorkerSettings()
    engine = await asyncio.to_thread(from_settings, settings.stt)
    log.info("loaded STT model %s in %.2f s", engine.name, engine.load_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(
        "stt",
        make_handler(settings.stt),
        nats_url=settings.nats_url,
        shard_handler=make_shard_handler(settings.stt),
    )
    await worker.run(stop)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(main())
