"""`make bench` (TTS): Piper through the whole platform against the same synthesis called
directly, in one run; characters per second. The worker is a separate process."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from control.db.models import UserRole
from tests.bench.platform import running_platform
from tests.test_dispatch import wait_for
from tests.test_tts import HARVARD, speak
from voxmesh import audio, eventloop
from voxmesh.speech import voices
from voxmesh.speech.text import split
from voxmesh.speech.tts import load
from voxmesh.v1 import jobs_pb2

ROOT = Path(__file__).resolve().parents[2]
TEXT = " ".join(HARVARD * 3)
REPEATS = 3


def direct() -> tuple[float, float]:
    """Seconds to synthesise TEXT as the handler does (sentences, pauses, loudness, WAV), and
    the audio's duration."""
    import numpy as np

    voice = voices.CATALOG[voices.DEFAULT_VOICE]
    engine = load(voice)
    start = time.perf_counter()
    parts = []
    for sentence, _ in split(TEXT):
        parts += [
            engine.synthesize(sentence, voice, 1.0),
            np.zeros(int(0.25 * engine.sample_rate), np.float32),
        ]
    speech = audio.normalize_loudness(np.concatenate(parts[:-1]), engine.sample_rate)
    audio.encode(speech, engine.sample_rate, jobs_pb2.AUDIO_FORMAT_WAV)
    return time.perf_counter() - start, len(speech) / engine.sample_rate


async def main() -> None:
    direct_runs = [direct() for _ in range(REPEATS)]
    seconds = direct_runs[0][1]
    async with running_platform() as h:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NATS_URL": h.nats.url}
        worker = subprocess.Popen([sys.executable, "-m", "services.tts"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            editor = await h.user(UserRole.EDITOR)
            warm = await speak(h, editor, "Warming up.")
            await wait_for(h, warm.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=120)
            platform = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                job = await speak(h, editor, TEXT)
                # as a client learns of the result: pushed by WatchJob, not by polling
                async for event in editor.client.jobs.WatchJob(
                    jobs_pb2.WatchJobRequest(job_id=job.id)
                ):
                    if event.WhichOneof("event") == "result":
                        break
                platform.append(time.perf_counter() - start)
        finally:
            worker.terminate()
            worker.wait(30)
    d = statistics.median(t for t, _ in direct_runs)
    p = statistics.median(platform)
    print(
        f"Voxmesh TTS bench (Piper en_US-joe-medium, {len(TEXT)} characters, {seconds:.0f} s of speech, WAV)"
    )
    print(
        f"  {'synthesis called directly':<44} RTF {d / seconds:.4f}  {len(TEXT) / d:6.0f} chars/s"
    )
    print(
        f"  {'through the platform (CreateJob -> result)':<44} RTF {p / seconds:.4f}  {len(TEXT) / p:6.0f} chars/s"
    )
    print(
        f"  {'platform overhead':<44} {100 * (p / d - 1):+.1f} %  (goal < 10 %; medians of {REPEATS})"
    )
    print(
        "  Bark: not benchmarked (no Bark weights ship in any package; its code path is tested on a"
    )
    print("  random-initialised checkpoint, which says nothing about real Bark speed)")


if __name__ == "__main__":
    eventloop.run(main())  # the loop the platform runs on
