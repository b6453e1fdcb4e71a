"""`python -m services.tts`: run a TTS worker (the default voice loads before jobs are pulled)."""

from __future__ import annotations

import asyncio
import logging
import signal

from services.tts.config import WorkerSettings
from services.tts.engines import load
from services.tts.handler import make_handler
from voxmesh import voices
from voxmesh.worker import Worker

log = logging.getLogger("services.tts")


async def main() -> None:
    settings = WorkerSettings()
    engine = await asyncio.to_thread(load, voices.CATALOG[voices.DEFAULT_VOICE])
    log.info("loaded Piper voice %s in %.2f s", voices.DEFAULT_VOICE, engine.load_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Worker("tts", make_handler(settings.tts), nats_url=settings.nats_url).run(stop)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(main())
