"""`make bench` (STT): Whisper through the whole platform against the same engine called
directly, in one run, plus long audio: a 10-minute recording on 1 worker (unsplit) against 4
worker processes sharing its parts, with the two transcripts compared word by word.

Workers are separate processes (`python -m services.stt`), as deployed. Real speech: the
LibriVox clips from pocketsphinx-testdata, repeated to the lengths below.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jiwer

from control.db.models import JobResult, UserRole
from tests.bench.platform import running_platform
from tests.harness import Harness
from tests.speech import RATE, normalize, passage, wav_bytes
from tests.test_dispatch import wait_for
from tests.test_files import download, upload
from voxmesh import eventloop
from voxmesh.audio import decode
from voxmesh.speech.stt import Options, load
from voxmesh.v1 import jobs_pb2

ROOT = Path(__file__).resolve().parents[2]
REPEATS = 3
LONG_REPEATS = 22
"""The LibriVox passage (~27 s) this many times: about 10 minutes."""
PART_SECONDS = 30.0
NEAR_CUT_SECONDS = 5.0


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
    return (await timed_run(h, editor, data))[0]


async def timed_run(h: Harness, editor: object, data: bytes) -> tuple[float, list[dict[str, Any]]]:
    """Seconds from the start of the upload to the COMPLETED job, and its transcript's
    segments (transcript.json)."""
    start = time.perf_counter()
    stored = await upload(editor, data)  # type: ignore[arg-type]
    project = str(await h.project(editor.user_id))  # type: ignore[attr-defined]
    job = (await editor.client.jobs.CreateJob(  # type: ignore[attr-defined]
        jobs_pb2.CreateJobRequest(project_id=project, input_file_id=stored.id, stt=jobs_pb2.SttParams())
    )).job  # fmt: skip
    await wait_for(h, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=1800)
    took = time.perf_counter() - start
    async with h.app.sessions() as session:
        result = await session.get(JobResult, uuid.UUID(job.id))
        assert result is not None
    stored = next(f for f in result.files if f["name"] == "transcript.json")
    _, body = await download(editor, stored["file_id"])  # type: ignore[arg-type]
    return took, list(json.loads(body)["segments"])


async def workers_connected(h: Harness, count: int) -> None:
    """Until `count` STT workers have announced themselves to the control plane."""
    assert h.app.mesh is not None
    deadline = time.monotonic() + 120
    while len(h.app.mesh.presence.workers("stt")) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} STT workers did not connect")
        await asyncio.sleep(0.2)


def compare(unsplit: list[dict[str, Any]], split: list[dict[str, Any]], cuts: list[float]
            ) -> tuple[int, int, int, int]:  # fmt: skip
    """Words of the unsplit transcript, and where the split one differs from it (a word-level
    edit alignment, as WER counts): (words, differing words, places, places within
    NEAR_CUT_SECONDS of a cut)."""

    def words(segments: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
        return [(w, s["start"], s["end"]) for s in segments
                for w in normalize(s["text"]).split()]  # fmt: skip

    a, b = words(unsplit), words(split)
    differing = places = near = 0
    aligned = jiwer.process_words(" ".join(w for w, _, _ in a), " ".join(w for w, _, _ in b))
    for chunk in aligned.alignments[0]:
        if chunk.type == "equal":
            continue
        places += 1
        i1, i2, j1, j2 = (chunk.ref_start_idx, chunk.ref_end_idx, chunk.hyp_start_idx,
                          chunk.hyp_end_idx)  # fmt: skip
        differing += max(i2 - i1, j2 - j1)
        spans = [(s, e) for _, s, e in a[i1:i2] + b[j1:j2]] or [a[min(i1, len(a) - 1)][1:]]
        start, end = min(s for s, _ in spans), max(e for _, e in spans)
        if any(start - NEAR_CUT_SECONDS <= c <= end + NEAR_CUT_SECONDS for c in cuts):
            near += 1
    return len(a), differing, places, near


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
    long_clip, long_said = passage(repeat=LONG_REPEATS)
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
        # The model the engine line uses, alone: a worker that also serves `base` detects the
        # language of a job that names none first (a pass of the multilingual model).
        procs = start_workers(url, 1, VOXMESH_STT__CPU_THREADS="2",
                              VOXMESH_STT__MODELS='["tiny.en"]')  # fmt: skip
        try:
            await timed_job(h, editor, wav_bytes(clip[: 2 * RATE]))  # the worker is up and warm
            platform = [await timed_job(h, editor, clip_bytes) for _ in range(REPEATS)]
        finally:
            stop_workers(procs)
        procs = start_workers(url, 1, VOXMESH_STT__CPU_THREADS="2")  # the default models
        try:
            await timed_job(h, editor, wav_bytes(clip[: 2 * RATE]))
            detecting = [await timed_job(h, editor, clip_bytes) for _ in range(REPEATS)]
        finally:
            stop_workers(procs)
        long_runs: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        for label, count, part_seconds in (("unsplit", 1, "0"), ("split", 4, str(PART_SECONDS))):
            procs = start_workers(
                url, count, VOXMESH_STT__CPU_THREADS="1", VOXMESH_STT__MODELS='["tiny.en"]',
                VOXMESH_STT__SHARD_SECONDS=part_seconds,
            )  # fmt: skip
            try:
                await workers_connected(h, count)
                await timed_job(h, editor, wav_bytes(clip[: 2 * RATE]))  # models loaded
                long_runs[label] = await timed_run(h, editor, long_bytes)
            finally:
                stop_workers(procs)
    from services.stt import shards

    cuts = [c / RATE for c in shards.split_points(decode(long_bytes), PART_SECONDS)]
    words, differing, places, near = compare(long_runs["unsplit"][1], long_runs["split"][1], cuts)
    wer = {
        label: jiwer.wer(normalize(long_said), normalize(" ".join(s["text"] for s in segments)))
        for label, (_, segments) in long_runs.items()
    }

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
    print(f"  {'the same, default models (tiny.en + base)':<48} RTF "
          f"{statistics.median(detecting) / clip_seconds:.4f}  (no language given: base detects it first)")  # fmt: skip
    unsplit, split = long_runs["unsplit"][0], long_runs["split"][0]
    print(f"  long audio, {long_seconds / 60:.1f} min of speech, 1 CPU thread per worker:")
    print(f"    {'1 worker, unsplit':<46} {unsplit:6.1f} s  (RTF {unsplit / long_seconds:.4f})")
    print(f"    {f'4 workers, {len(cuts) + 1} parts of ~{PART_SECONDS:.0f} s':<46} {split:6.1f} s  "
          f"(RTF {split / long_seconds:.4f})")  # fmt: skip
    print(f"    {'speed-up (this machine has 2 cores: at most ~2x)':<46} {unsplit / split:6.2f}x")
    print(f"    transcripts: {words} words; {differing} differ, in {places} places, {near} of them "
          f"within {NEAR_CUT_SECONDS:.0f} s of one of the {len(cuts)} cuts")  # fmt: skip
    print(f"    WER against what is said: unsplit {wer['unsplit']:.3f}, split {wer['split']:.3f}")
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
        eventloop.run(main())
