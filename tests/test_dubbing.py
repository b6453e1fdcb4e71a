"""Dubbing through the platform, measured: a real multi-sentence English recording (LibriVox, from
Debian's pocketsphinx-testdata) dubbed into Portuguese in the reader's voice, timing, round-trip
WER and speaker similarity checked; a segment edited and re-rendered alone; a video dubbed back
into its container; Portuguese dubbed into English."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator

import av
import grpc
import numpy as np
import pytest

from control.db.models import UserRole
from services.dubbing.config import WorkerSettings
from services.dubbing.handler import make_handler
from tests import quality
from tests.harness import Caller, Harness, rpc_error, run_workers
from tests.speech import RATE, conversation, passage, wav_bytes
from tests.test_dispatch import watch
from tests.test_files import download, upload
from voxmesh import audio
from voxmesh.speech import voices
from voxmesh.speech.tts import load as load_voice
from voxmesh.v1 import jobs_pb2

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def dubbing_worker(h: Harness) -> AsyncIterator[None]:
    async with run_workers(h, "dubbing", make_handler(WorkerSettings()), ack_wait=20.0):
        yield


async def dub(
    who: Caller, project: str, data: bytes, name: str = "talk.wav", **params: object
) -> jobs_pb2.JobResult:
    stored = await upload(who, data, name=name) if data else None
    job = (await who.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
        project_id=project, input_file_id=stored.id if stored else "",
        dubbing=jobs_pb2.DubbingParams(**params)))).job  # type: ignore[arg-type]  # fmt: skip
    events = await watch(who, job.id, timeout=600)
    assert events[-1].WhichOneof("event") == "result", [
        (e.WhichOneof("event"), e.status.error) for e in events[-3:]
    ]
    stages = [e.progress.stage for e in events if e.WhichOneof("event") == "progress"]
    return events[-1].result, stages  # type: ignore[return-value]


async def segments_of(who: Caller, result: jobs_pb2.JobResult) -> dict:
    entry = next(f for f in result.files if f.name == "segments.json")
    return json.loads((await download(who, entry.file_id))[1])


async def test_english_recording_dubbed_into_portuguese_then_one_segment_revised(
    harness: Harness,
) -> None:
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    samples, _ = passage()
    async with dubbing_worker(harness):
        result, stages = await dub(editor, project, wav_bytes(samples), target_language="pt")
        names = {f.name for f in result.files}
        assert {"dubbed.wav", "subtitles.en.srt", "subtitles.en.vtt", "subtitles.pt.srt",
                "subtitles.pt.vtt", "segments.json", "voice.json"} <= names  # fmt: skip
        roles = {f.name: f.role for f in result.files}  # what a revision finds them by
        assert (roles["dubbed.wav"], roles["segments.json"], roles["segment-audio.npz"],
                roles["voice.json"], roles["subtitles.pt.vtt"]) == (
            "audio", "segments", "segment_audio", "voice", "subtitles")  # fmt: skip
        for stage in ("decoding", "transcribing", "translating", "voice", "synthesising",
                      "mixing", "encoding", "measuring"):  # fmt: skip
            # The whole list, not pytest's cut repr: a fresh clone once lacked "encoding".
            assert stage in stages, f"{stage!r} missing from {' > '.join(stages)}"
        meta = dict(result.meta)
        document = await segments_of(editor, result)
        segments = document["segments"]
        assert meta["source_language"] == "en" and len(segments) >= 3
        # Timing: no segment runs past the next one's start (allowing 0.3 s over all).
        assert meta["overflow_seconds"] <= 0.3, segments
        assert meta["max_delay_seconds"] <= 0.6 + 1e-6
        assert all(s["stretch"] <= 1.3 + 1e-6 for s in segments)
        # Intelligible Portuguese, in a voice closer to the reader's than the stock voice.
        quality.at_most("dub en->pt WER", meta["wer"], 0.35, meta)
        assert meta["similarity_to_source"] > meta["similarity_without_voice"], meta
        print(f"\nen→pt: {len(segments)} segments, overflow {meta['overflow_seconds']} s, "
              f"duration ratios mean {meta['mean_duration_ratio']} max {meta['max_duration_ratio']}, "
              f"max stretch {meta['max_stretch_applied']}, rephrased {meta['rephrased_segments']}, "
              f"WER {meta['wer']}, similarity {meta['similarity_without_voice']} (stock voice) -> "
              f"{meta['similarity_to_source']} (speaker's voice)")  # fmt: skip
        srt = (
            await download(
                editor, next(f.file_id for f in result.files if f.name == "subtitles.pt.srt")
            )
        )[1]
        assert segments[0]["translation"] in srt.decode()

        # Edit one segment's translation and re-render: only that segment is synthesised again.
        original = next(
            j
            for j in (
                await editor.client.jobs.ListJobs(jobs_pb2.ListJobsRequest(project_id=project))
            ).jobs
        )
        edited_text = "O começo foi reescrito por um editor."
        revised, _ = await dub(editor, project, b"", target_language="pt", revise_job_id=original.id,
                               edits=[jobs_pb2.DubbingSegmentEdit(index=0, translation=edited_text)])  # fmt: skip
    assert revised.meta["synthesized_segments"] == 1
    assert revised.meta["revised_job_id"] == original.id
    again = (await segments_of(editor, revised))["segments"]
    assert again[0]["translation"] == edited_text
    assert [s["translation"] for s in again[1:]] == [s["translation"] for s in segments[1:]]
    # A revision of a job that is not a finished dub is refused.
    err = await rpc_error(editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
        project_id=project, dubbing=jobs_pb2.DubbingParams(target_language="pt", revise_job_id=project))))  # fmt: skip
    assert "no dubbing job" in (err.details() or "")


def make_video(samples: np.ndarray) -> bytes:
    """A small MP4 (moving gradient, H.264 or MPEG-4) with `samples` as its AAC audio."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        video = out.add_stream(codec, rate=10)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        sound = out.add_stream("aac", rate=RATE)
        sound.layout = "mono"
        frames = int(len(samples) / RATE * 10)
        for i in range(frames):
            image = np.full((120, 160, 3), (i * 5) % 255, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        frame = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = RATE
        ctx = sound.codec_context
        resampler = av.AudioResampler(
            format=ctx.format, layout="mono", rate=RATE, frame_size=ctx.frame_size
        )
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in sound.encode(resampled):
                out.mux(packet)
        for packet in sound.encode(None):
            out.mux(packet)
    return buf.getvalue()


async def test_video_is_dubbed_back_into_its_container(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    samples, _ = passage()
    clip = samples[: RATE * 9]
    async with dubbing_worker(harness):
        result, _ = await dub(editor, project, make_video(clip), name="clip.mp4", target_language="pt",
                              keep_background=True)  # fmt: skip
    video = next(f for f in result.files if f.name == "dubbed.mp4")
    data = (await download(editor, video.file_id))[1]
    with av.open(io.BytesIO(data)) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        assert container.duration and container.duration / 1e6 > 7
    assert result.meta["video"] is True and result.meta["keep_background"] is True


async def test_portuguese_dubbed_into_english(harness: Harness) -> None:
    """Portuguese speech (Kokoro's female style: another speaker) dubbed into English."""
    text = "O trem chegou na estação de manhã. Os viajantes esperavam com as malas na mão."
    voice = voices.CATALOG["kokoro:pt-BR/jf_alpha"]
    engine = load_voice(voice)
    speech = wav_bytes(
        audio.resample(engine.synthesize(text, voice, 1.0), engine.sample_rate, RATE)
    )
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    async with dubbing_worker(harness):
        result, _ = await dub(editor, project, speech, target_language="en", source_language="pt")
    meta = dict(result.meta)
    assert meta.get("source_language") == "pt" and meta["target_language"] == "en", result.logs
    # Whisper tiny's round trip of the English dub: measured 0.29 to 0.41 on these 2-core
    # machines (0.364 and 0.4118 seen on fresh clones, the same before and after the job-kinds
    # redesign); the bound sits above the worst with a margin.
    quality.at_most("dub pt->en WER", meta["wer"], 0.5, (meta, result.logs[-600:]))
    document = await segments_of(editor, result)
    english = " ".join(s["translation"] for s in document["segments"]).lower()
    # Whisper's Portuguese transcript of the synthetic speech differs between CPUs (int8
    # kernels): "os viajantes" came back as "vias" on one machine. Two content words of the
    # source must come through the translation.
    assert "station" in english, english
    assert any(w in english for w in ("travelers", "travellers", "passengers", "suitcases",
                                      "bags", "hand")), english  # fmt: skip
    print(f"\npt→en: {english}; WER {meta['wer']}, overflow {meta['overflow_seconds']} s")


async def test_a_two_person_conversation_is_dubbed_in_two_voices(harness: Harness) -> None:
    """The LibriVox reader (a man) and Kokoro's female English voice talk in turns; dubbed into
    Portuguese, each gets a voice of their own fitted to their own speech, closer to them than
    to the other speaker (the matrix is in the meta); then each speaker's voice is chosen."""
    mix, _ = conversation(overlap=-0.5, speakers=("reader", "kokoro"), rounds=3)
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    speech = wav_bytes(mix)
    async with dubbing_worker(harness):
        result, stages = await dub(editor, project, speech, target_language="pt",
                                   source_language="en")  # fmt: skip
        meta = dict(result.meta)
        assert "diarizing" in stages and meta["speakers"] == 2, (meta, result.logs[-800:])
        chosen = dict(meta["speaker_voices"])
        assert len(set(chosen.values())) == 2, chosen
        matrix = {k: dict(v) for k, v in dict(meta["speaker_similarity"]).items()}
        print(f"\nspeaker voices {chosen}; similarity (dubbed -> source) {matrix}")
        for dubbed, row in matrix.items():
            other = next(k for k in row if k != dubbed)
            assert row[dubbed] > row[other], matrix
        document = await segments_of(editor, result)
        labels = {s["speaker"] for s in document["segments"]}
        assert labels == {"SPEAKER_01", "SPEAKER_02"}, document["segments"]
        files = {f.name: f for f in result.files}
        subtitles = (await download(editor, files["subtitles.pt.srt"].file_id))[1].decode()
        assert "[SPEAKER 1] " in subtitles and "[SPEAKER 2] " in subtitles

        overridden, _ = await dub(
            editor, project, speech, target_language="pt", source_language="en", num_speakers=2,
            speaker_voices={"SPEAKER_01": "kokoro:pt-BR/jm_kumo",
                            "SPEAKER_02": "kokoro:pt-BR/jf_alpha"},
        )  # fmt: skip
    assert dict(overridden.meta["speaker_voices"]) == {
        "SPEAKER 1": "kokoro:pt-BR/jm_kumo", "SPEAKER 2": "kokoro:pt-BR/jf_alpha",
    }  # fmt: skip


async def test_speaker_voices_are_checked_at_create(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    stored = await upload(editor, wav_bytes(passage()[0][: 3 * RATE]), name="talk.wav")
    for params, words in (
        ({"speaker_voices": {"Alice": "kokoro:pt-BR/jm_kumo"}}, "speakers are named SPEAKER_01"),
        ({"speaker_voices": {"SPEAKER_01": "nobody"}}, "unknown voice 'nobody'"),
        ({"num_speakers": 99}, "between 1 and 20"),
    ):
        request = jobs_pb2.CreateJobRequest(
            project_id=project, input_file_id=stored.id,
            dubbing=jobs_pb2.DubbingParams(target_language="pt", **params),  # type: ignore[arg-type]
        )  # fmt: skip
        error = await rpc_error(editor.client.jobs.CreateJob(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, params
        assert words in (error.details() or ""), error.details()
