"""`python -m services.stories`: run an AI stories worker (the local model and the default
voice load before jobs are pulled, unless a text endpoint is configured)."""

from __future__ import annotations

import asyncio
import logging
import signal

from services.stories.config import WorkerSettings
from services.stories.generator import local_model
from services.stories.handler import make_handler
from services.tts.engines import load
from voxmesh import voices
from voxmesh.worker import Worker

log = logging.getLogger("services.stories")


async def main() -> None:
    settings = WorkerSettings()
    if not settings.stories.base_url:
        model = await asyncio.to_thread(local_model, settings.stories.threads)
        log.info("local writer %s ready in %.2f s", model.endpoint.model, model.load_seconds)
    await asyncio.to_thread(load, voices.CATALOG[voices.DEFAULT_VOICE])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Worker("ai_stories", make_handler(settings), nats_url=settings.nats_url).run(stop)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(main())
