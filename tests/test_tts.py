"""The TTS service: Piper with a shipped voice, Bark's real code on a random-initialised
checkpoint, sentences with progress and cancellation, formats, loudness, round-trip WER."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jiwer
import pytest

from control.db.models import UserRole
from services.tts.config import TtsSettings
from services.tts.handler import make_handler
from tests import quality
from tests.harness import Caller, Harness, eventually, run_workers
from tests.speech import normalize
from tests.test_dispatch import wait_for
from tests.test_files import download
from tests.workers import behave
from voxmesh import audio
from voxmesh.speech.stt import Options
from voxmesh.speech.stt import load as load_stt
from voxmesh.speech.text import split
from voxmesh.v1 import jobs_pb2, results_pb2, voices_pb2
from voxmesh.worker import Worker

# Harvard sentences (IEEE 1969), the classic intelligibility test set.
HARVARD = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
]


@contextlib.asynccontextmanager
async def tts_worker(
    h: Harness, settings: TtsSettings | None = None
) -> AsyncIterator[list[Worker]]:
    async with run_workers(
        h, "tts", make_handler(settings or TtsSettings()), ack_wait=10.0
    ) as workers:
        yield workers


async def speak(h: Harness, who: Caller, text: str, **params: object) -> jobs_pb2.Job:
    project = str(await h.project(who.user_id))
    request = jobs_pb2.CreateJobRequest(
        project_id=project, tts=jobs_pb2.TtsParams(text=text, **params)
    )  # type: ignore[arg-type]
    return (await who.client.jobs.CreateJob(request)).job


async def result_audio(who: Caller, job_id: str) -> tuple[jobs_pb2.JobResult, bytes]:
    result = (
        await who.client.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=job_id))
    ).result
    return result, (await download(who, result.files[0].file_id))[1]


def test_text_is_split_into_sentences_and_paragraphs() -> None:
    assert split("One. Two? Three!\n\nFour [laughs] here. \"Five.\" Six") == [
        ("One.", False), ("Two?", False), ("Three!", True),
        ("Four [laughs] here.", False), ('"Five."', False), ("Six", True),
    ]  # fmt: skip
    long = "word, " * 120
    assert all(len(piece) <= 300 for piece, _ in split(long))
    assert " ".join(piece for piece, _ in split(long)).split() == long.split()


async def test_list_voices(harness: Harness) -> None:
    viewer = await harness.user(UserRole.VIEWER)
    piper = (
        await viewer.client.voices.ListVoices(voices_pb2.ListVoicesRequest(engine="piper"))
    ).voices
    assert [(v.id, v.language, v.gender, v.sample_rate, v.requirements) for v in piper] == [
        ("en_US-joe-medium", "en-US", "male", 22050, "")
    ]
    bark_pt = (
        await viewer.client.voices.ListVoices(
            voices_pb2.ListVoicesRequest(engine="bark", language="pt")
        )
    ).voices
    assert len(bark_pt) == 10 and all(v.requirements for v in bark_pt)


async def test_voices_say_whether_a_connected_worker_can_speak_them(harness: Harness) -> None:
    """ListVoices marks a voice available while a connected TTS worker announces its engine,
    lists those first, and `available_only` keeps only them; a worker that leaves takes its
    voices with it."""
    viewer = await harness.user(UserRole.VIEWER)

    async def listed(only: bool = False) -> list[voices_pb2.VoiceInfo]:
        request = voices_pb2.ListVoicesRequest(available_only=only)
        return list((await viewer.client.voices.ListVoices(request)).voices)

    assert not any(v.available for v in await listed()) and await listed(only=True) == []
    async with run_workers(harness, "tts", behave, capabilities={"engines": ["piper", "kokoro"]}):

        async def announced() -> bool:
            return bool(await listed(only=True))

        await eventually(announced, "the worker's announcement", timeout=15)
        every = await listed()
        speakable = [v for v in every if v.available]
        assert {v.engine for v in speakable} == {"piper", "kokoro"}
        assert every[: len(speakable)] == speakable  # what can be spoken now comes first
        assert not any(v.available for v in every if v.engine == "bark")
        assert [v.id for v in await listed(only=True)] == [v.id for v in speakable]

    async def gone() -> bool:
        return not await listed(only=True)

    await eventually(gone, "the worker's voices to go with it", timeout=10)


async def test_every_format_normalised_loudness_and_meta(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    text = " ".join(HARVARD[:3]) + "\n\n" + HARVARD[3]
    formats = {
        jobs_pb2.AUDIO_FORMAT_WAV: ("audio/wav", "speech.wav"),
        jobs_pb2.AUDIO_FORMAT_FLAC: ("audio/flac", "speech.flac"),
        jobs_pb2.AUDIO_FORMAT_MP3: ("audio/mpeg", "speech.mp3"),
        jobs_pb2.AUDIO_FORMAT_OGG_OPUS: ("audio/ogg", "speech.ogg"),
    }
    async with tts_worker(harness):
        jobs = {fmt: await speak(harness, editor, text, format=fmt) for fmt in formats}
        for job in jobs.values():
            await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=60)
    for fmt, job in jobs.items():
        result, data = await result_audio(editor, job.id)
        assert (result.files[0].content_type, result.files[0].name) == formats[fmt]
        assert result.files[0].role == "audio"
        meta = dict(result.meta)
        assert meta["voice"] == "en_US-joe-medium" and meta["engine"] == "piper"
        assert meta["characters"] == len(text) and meta["sentences"] == 4
        rate = int(meta["sample_rate"])
        samples = audio.decode(data, rate=rate)  # measured at the file's own rate
        assert abs(len(samples) / rate - meta["duration_seconds"]) < 0.15
        assert (
            abs(audio.loudness(samples, rate) - meta["loudness_lufs"]) < 1.0
        )  # whatever the codec
        assert meta["loudness_lufs"] == -23.0
    assert (
        dict((await result_audio(editor, jobs[jobs_pb2.AUDIO_FORMAT_OGG_OPUS].id))[0].meta)[
            "sample_rate"
        ]
        == 48000
    )


async def test_round_trip_word_error_rate(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    async with tts_worker(harness):
        job = await speak(harness, editor, " ".join(HARVARD), voice="en_US-joe-medium")
        await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=90)
    result, data = await result_audio(editor, job.id)
    whisper = load_stt("tiny.en")
    heard = " ".join(s.text for s in whisper.transcribe(audio.decode(data), Options()).segments)
    wer = jiwer.wer(normalize(" ".join(HARVARD)), normalize(heard))
    print(
        f"\nround-trip WER, Piper en_US-joe-medium -> Whisper tiny.en: {wer:.3f}; RTF {result.meta['rtf']}"
    )
    # Piper samples its voice (noise_scale), so the figure varies from run to run: 0.050-0.087
    # (4 to 7 words of 80) over six runs on 2026-12-06, five of them fresh clones; the bound sits
    # 5 words above the worst.
    quality.at_most("tts round-trip WER", wer, 0.15, heard)


async def test_cancellation_between_sentences(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    async with tts_worker(harness):
        job = await speak(harness, editor, " ".join(HARVARD * 8))
        while (
            await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
        ).job.progress < 10:
            await asyncio.sleep(0.05)
        await editor.client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
        cancelled = time.monotonic()
        follow = await speak(harness, editor, "Done.")
        await wait_for(harness, follow.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=30)
    assert time.monotonic() - cancelled < 5


@pytest.fixture(scope="module")
def bark_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.bark_checkpoint import build

    return build(tmp_path_factory.mktemp("bark") / "checkpoint")


async def test_bark_runs_its_real_generation_path(harness: Harness, bark_dir: Path) -> None:
    editor = await harness.user(UserRole.EDITOR)
    voice = "bark:v2/en_speaker_6"
    async with tts_worker(
        harness, TtsSettings(bark_dir=str(bark_dir), bark_max_semantic_tokens=24)
    ):
        job = await speak(
            harness,
            editor,
            "Hello world. [laughs] Hello!",
            voice=voice,
            format=jobs_pb2.AUDIO_FORMAT_FLAC,
        )
        await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=120)
        other = await speak(harness, editor, "Hello.", voice="bark:v2/fr_speaker_1")
        missing_preset = await wait_for(harness, other.id, {jobs_pb2.JOB_STATUS_FAILED}, timeout=60)
    result, data = await result_audio(editor, job.id)
    meta = dict(result.meta)
    assert meta["engine"] == "bark" and meta["voice"] == voice and meta["sentences"] == 2
    assert meta["sample_rate"] == 24000 and len(audio.decode(data)) > 0.3 * 16000
    assert "no speaker preset v2/fr_speaker_1" in missing_preset.error
    async with tts_worker(harness):  # a worker without Bark weights says what it needs
        nothing = await speak(harness, editor, "Hello.", voice=voice)
        failed = await wait_for(harness, nothing.id, {jobs_pb2.JOB_STATUS_FAILED}, timeout=60)
    assert "VOXMESH_TTS__BARK_DIR" in failed.error and failed.attempts == 1
