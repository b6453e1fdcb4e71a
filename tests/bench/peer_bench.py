"""`make bench` (peer): a short transcription through Voxmesh against a bare request to a peer
server on the same engine, in one run.

The peer is `faster-whisper-server` 0.0.3 from PyPI, installed in the bench's own environment
(.bench/peer, `make bench` sets it up) and given the very model Voxmesh's STT worker loads
(Whisper tiny.en, CTranslate2 int8, 2 threads, beam 5); the worker serves that model alone, as
the peer does (a worker that also serves `base` first detects the language of a request that
names none, which costs a pass of the multilingual model). Both are asked with the official
`openai` client for a JSON transcription of the same ~7 s LibriVox clip:
- peer: one HTTP request to the peer's process, which transcribes in the request;
- Voxmesh: the same request to its HTTP API (Envoy -> gateway/http -> control plane -> STT
  worker process -> back), the path a team's existing tools take;
and the engine is called directly in this process for the floor. Medians of interleaved runs;
the ratio Voxmesh / peer is the figure (goal: at or under 1.0).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from openai import AsyncOpenAI
from sqlalchemy import select

from control.db.models import Job, JobResult, JobType, UserRole
from tests.bench.platform import running_platform
from tests.conftest import free_port
from tests.speech import RATE, clips, wav_bytes
from tests.test_http_api import front_door
from voxmesh import eventloop
from voxmesh.audio import decode
from voxmesh.speech.stt import PACKAGED, Options, load

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / ".bench" / "peer" / "bin" / "python"
REPEATS = 15
SECONDS = 7.0


def clip() -> tuple[bytes, str]:
    """About SECONDS of real speech: LibriVox clips joined, cut at a clip's end."""
    parts, words, total = [], [], 0
    for samples, text in clips():
        parts.append(samples)
        words.append(text)
        total += len(samples)
        if total >= SECONDS * RATE:
            break
    return wav_bytes(np.concatenate(parts)), " ".join(words)


def start_peer(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    config = tmp / "peer.yaml"
    config.write_text(
        "models:\n"
        "  - name: whisper-1\n"
        f"    path: {PACKAGED['tiny.en']()}\n"
        "    model_options: {device: cpu, compute_type: int8, cpu_threads: 2}\n"
        "    transcribe_options: {beam_size: 5}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(
        [str(PEER), "-m", "faster_whisper_server", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "peer.log").open("wb"),
    )  # fmt: skip


async def until_up(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def main() -> None:
    if not PEER.exists():
        sys.exit("the peer is not installed: run `make bench` (it installs .bench/peer)")
    data, _ = clip()
    seconds = (len(data) - 44) / 2 / RATE
    engine = load("tiny.en", cpu_threads=2)

    def direct() -> float:
        start = time.perf_counter()
        text = "".join(s.text for s in engine.transcribe(decode(data), Options()).segments)
        assert text.strip()
        return time.perf_counter() - start

    direct()  # warm
    runs: dict[str, list[float]] = {"engine": [], "peer": [], "voxmesh": []}
    spans: list[tuple[float, float]] = []
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        peer = start_peer(Path(tmp), port)
        async with running_platform() as h:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "NATS_URL": h.nats.url_for("worker-stt"),
                   "VOXMESH_STT__CPU_THREADS": "2", "VOXMESH_STT__MODELS": '["tiny.en"]'}  # fmt: skip
            worker = subprocess.Popen([sys.executable, "-m", "services.stt"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                await until_up(f"http://127.0.0.1:{port}/health")
                async with front_door(h, Path(tmp)) as base_url:
                    editor = await h.user(UserRole.EDITOR)
                    project = str(await h.project(editor.user_id))
                    key = await h.key(editor)
                    clients = {
                        "voxmesh": AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0,
                                               timeout=120,
                                               default_headers={"voxmesh-project": project}),
                        "peer": AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                                            api_key="none", max_retries=0, timeout=120),
                    }  # fmt: skip

                    async def ask(name: str) -> float:
                        start, wall = time.perf_counter(), time.time()
                        reply = await clients[name].audio.transcriptions.create(
                            model="whisper-1", file=("clip.wav", data, "audio/wav")
                        )
                        took = time.perf_counter() - start
                        texts[name] = reply.text
                        if name == "voxmesh":
                            spans.append((wall, time.time()))
                        return took

                    for name in clients:  # warm: models loaded, connections open
                        await ask(name)
                    for _ in range(REPEATS):  # interleaved: drift hits all three alike
                        runs["engine"].append(direct())
                        runs["peer"].append(await ask("peer"))
                        runs["voxmesh"].append(await ask("voxmesh"))
                    for client in clients.values():
                        await client.close()
                    async with h.app.sessions() as session:
                        jobs = list(await session.scalars(
                            select(Job).where(Job.type == JobType.STT).order_by(Job.created_at)
                        ))  # fmt: skip
                        metas = {r.job_id: r.meta for r in await session.scalars(select(JobResult))}
            finally:
                worker.terminate()
                peer.terminate()
                worker.wait(30)
                peer.wait(30)
    med = {k: statistics.median(v) for k, v in runs.items()}
    same = " ".join(texts["voxmesh"].split()) == " ".join(texts["peer"].split())
    print(f"Voxmesh vs a peer, one short transcription ({seconds:.1f} s of LibriVox speech; Whisper "
          f"tiny.en, int8, 2 threads, beam 5; medians of {REPEATS} interleaved runs)")  # fmt: skip
    print(f"  {'faster-whisper called directly':<52} {med['engine'] * 1000:7.0f} ms")
    print(
        f"  {'peer: faster-whisper-server 0.0.3, one HTTP request':<52} {med['peer'] * 1000:7.0f} ms"
    )
    print(
        f"  {'Voxmesh: openai client -> Envoy -> HTTP API -> job':<52} {med['voxmesh'] * 1000:7.0f} ms"
    )
    print(f"  Voxmesh / peer: {med['voxmesh'] / med['peer']:.2f}x (goal: at or under 1.00x); "
          f"Voxmesh - engine: {(med['voxmesh'] - med['engine']) * 1000:+.0f} ms; "
          f"same text from both: {'yes' if same else 'NO'}")  # fmt: skip
    # Where Voxmesh's time goes, per request (medians): from the request to the job's row, to
    # the worker's start, to its completion, and from there to the reply.
    phases: dict[str, list[float]] = {"request -> job created": [], "created -> running": [],
                                      "running -> completed": [], "completed -> reply": []}  # fmt: skip
    for (begin, end), job in zip(spans, jobs, strict=True):
        created, started, finished = (t.timestamp() for t in (job.created_at, job.started_at,
                                                             job.finished_at))  # fmt: skip
        for label, value in zip(phases, (created - begin, started - created, finished - started,
                                         end - finished), strict=True):  # fmt: skip
            phases[label].append(value)
    print("  Voxmesh, per phase: " + "; ".join(
        f"{label} {statistics.median(v) * 1000:.0f} ms" for label, v in phases.items()))  # fmt: skip
    # Inside the worker (its own clock): the handler from its start to its outcome, and the
    # model's part of it (decoded audio -> segments), against the engine called directly.
    handler = [metas[j.id]["processing_seconds"] for j in jobs[-REPEATS:]]
    model = [metas[j.id]["rtf"] * metas[j.id]["duration_seconds"] for j in jobs[-REPEATS:]]
    print(
        f"  Voxmesh worker: handler {statistics.median(handler) * 1000:.0f} ms, of which the "
        f"model {statistics.median(model) * 1000:.0f} ms (engine directly: "
        f"{med['engine'] * 1000:.0f} ms with decoding)"
    )
    if not same:
        print(f"    peer:    {texts['peer']!r}\n    voxmesh: {texts['voxmesh']!r}")


if __name__ == "__main__":
    eventloop.run(main())  # the loop the platform runs on
