"""`make bench` (STT): Whisper through the whole platform against the same engine called
directly, in one run, plus the speed-up of long audio split across 1 vs 2 workers.

Workers are separate processes (`python -m services.stt`), as deployed. Real speech: the
LibriVox clips from pocketsphinx-testdata, repeated to the lengths below.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from control.db.models import UserRole
from tests.bench.platform import running_platform
from tests.harness import Harness
from tests.speech import RATE, passage, wav_bytes
from tests.test_dispatch import wait_for
from tests.test_files import upload
from voxmesh.audio import decode
from voxmesh.speech.stt import Options, load
from voxmesh.v1 import jobs_pb2

ROOT = Path(__file__).resolve().parents[2]
REPEATS = 3


def start_workers(url: str, count: int, **env: str) -> list[subprocess.Popen[bytes]]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "NATS_URL": url, **env}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "services.stt"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)


async def timed_job(h: Harness, editor: object, data: bytes) -> float:
    """Seconds from the start of the upload to the COMPLETED job."""
    start = time.perf_counter()
    stored = await upload(editor, data)  # type: ignore[arg-type]
    project = str(await h.project(editor.user_id))  # type: ignore[attr-defined]
    job = (await editor.client.jobs.CreateJob(  # type: ignore[attr-defined]
        jobs_pb2.CreateJobRequest(project_id=project, input_file_id=stored.id, stt=jobs_pb2.SttParams())
    )).job  # fmt: skip
    await wait_for(h, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=900)
    return time.perf_counter() - start


def hour_file(path: str) -> None:
    """Write one hour of real speech as MP3 (a typical upload) to `path`."""
    from tests.speech import encode

    samples, _ = passage(repeat=126)
    Path(path).write_bytes(encode(samples, "mp3", "libmp3lame", 16000))


def hour_probe(path: str) -> None:
    """In a fresh process: decode the hour and split it into parts; print size, seconds, parts,
    and peak memory before and after."""
    import resource

    from services.stt import shards

    mp3 = Path(path).read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    audio = decode(mp3)
    pieces = [shards.to_wav(p) for _, p in shards.parts(audio, shards.split_points(audio, 120))]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(audio) / RATE:.0f} {len(mp3) / 2**20:.1f} {time.perf_counter() - start:.1f} "
          f"{len(pieces)} {before:.0f} {peak:.0f}")  # fmt: skip


async def main() -> None:
    clip, _ = passage(repeat=2)
    clip_bytes = wav_bytes(clip)
    clip_seconds = len(clip) / RATE
    long_clip, _ = passage(repeat=8)
    long_bytes = wav_bytes(long_clip)
    long_seconds = len(long_clip) / RATE

    engine = load("tiny.en", cpu_threads=2)
    direct = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        list(engine.transcribe(decode(clip_bytes), Options(beam_size=5)).segments)
        direct.append(time.perf_counter() - start)

    async with running_platform() as h:
        url = h.nats.url
        editor = await h.user(UserRole.EDITOR)
        await h.setting("max_file_size_mb", 1000, editor.user_id)
        procs = start_workers(url, 1, VOXMESH_STT__CPU_THREADS="2")
        try:
            await timed_job(h, editor, wav_bytes(clip[: 2 * RATE]))  # the worker is up and warm
            platform = [await timed_job(h, editor, clip_bytes) for _ in range(REPEATS)]
        finally:
            stop_workers(procs)
        sharded: dict[int, float] = {}
        for count in (1, 2):
            procs = start_workers(
                url, count, VOXMESH_STT__CPU_THREADS="1", VOXMESH_STT__SHARD_SECONDS="30"
            )
            try:
                await timed_job(h, editor, wav_bytes(clip[: 2 * RATE]))
                await asyncio.sleep(1)  # every worker connected
                sharded[count] = await timed_job(h, editor, long_bytes)
            finally:
                stop_workers(procs)

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        hour = str(Path(tmp) / "hour.mp3")
        command = [sys.executable, "-m", "tests.bench.stt_bench"]
        subprocess.run([*command, "hour-file", hour], env=env, check=True)
        probe = subprocess.run(
            [*command, "hour-probe", hour], capture_output=True, text=True, env=env, check=True
        ).stdout.split()
    rtf_direct = statistics.median(direct) / clip_seconds
    rtf_platform = statistics.median(platform) / clip_seconds
    print(
        f"Voxmesh STT bench (Whisper tiny.en, faster-whisper int8, beam 5, {clip_seconds:.0f} s of LibriVox speech)"
    )
    print(
        f"  {'engine called directly (decode + transcribe)':<48} RTF {rtf_direct:.4f}  (median of {REPEATS})"
    )
    print(
        f"  {'through the platform (upload -> job -> result)':<48} RTF {rtf_platform:.4f}  (median of {REPEATS})"
    )
    print(
        f"  {'platform overhead':<48} {100 * (rtf_platform / rtf_direct - 1):+.1f} %  (goal < 10 %)"
    )
    print(f"  long audio {long_seconds:.0f} s, parts of ~30 s, 1 CPU thread per worker:")
    print(f"    {'1 worker':<46} {sharded[1]:6.1f} s  (RTF {sharded[1] / long_seconds:.4f})")
    print(f"    {'2 workers':<46} {sharded[2]:6.1f} s  (RTF {sharded[2] / long_seconds:.4f})")
    print(f"    {'speed-up':<46} {sharded[1] / sharded[2]:6.2f}x")
    hour_s, mp3_mb, took, count, rss_before, rss_peak = probe
    print(
        f"  one hour ({float(hour_s) / 60:.0f} min, {mp3_mb} MB MP3): decoded and split into {count} "
        f"parts in {took} s; peak RSS {rss_peak} MB ({rss_before} MB before decoding)"
    )
    print(
        "  faster-whisper vs openai-whisper on the shipped weights: n/a (no .pt Whisper weights ship"
    )
    print("  in any package; the .pt path is tested on a random-initialised checkpoint)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["hour-file"]:
        hour_file(sys.argv[2])
    elif sys.argv[1:2] == ["hour-probe"]:
        hour_probe(sys.argv[2])
    else:
        asyncio.run(main())
