"""Voice cloning through the platform, measured: a real reader's voice (LibriVox, from Debian's
pocketsphinx-testdata) as the reference, held-out text spoken in it, speaker similarity judged
by resemblyzer (an encoder the fit never saw) against the base voice without cloning, and
intelligibility by a Whisper round trip. Saved voices: stored in a project, used by TTS jobs of
that project only, deleted with their data."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from control.db.models import SavedVoice, UserRole
from services.cloning import reference as ref_check
from services.cloning.config import CloningSettings, WorkerSettings
from services.cloning.handler import make_handler
from services.stories.config import WorkerSettings as StoriesWorkerSettings
from services.stories.handler import make_handler as make_stories_handler
from services.tts.config import TtsSettings
from services.tts.handler import make_handler as make_tts_handler
from tests import quality
from tests.harness import Caller, Harness, rpc_error, run_workers
from tests.speech import RATE, passage, wav_bytes
from tests.test_dispatch import watch
from tests.test_files import download, upload
from voxmesh import audio
from voxmesh.speech import speaker
from voxmesh.v1 import jobs_pb2, results_pb2, voices_pb2

HELD_OUT = ("A journey of a thousand miles begins with a single step. "
            "Every morning the baker opens his shop before the sun is up.")  # fmt: skip
pytestmark = pytest.mark.slow


def reference_audio() -> np.ndarray:
    """12 s of the LibriVox reader: the voice to clone."""
    samples, _ = passage()
    return samples[: RATE * 12].astype(np.float32)


@contextlib.asynccontextmanager
async def cloning_worker(h: Harness) -> AsyncIterator[None]:
    async with run_workers(h, "voice_cloning", make_handler(WorkerSettings()), ack_wait=15.0):
        yield


async def clone(
    h: Harness, who: Caller, project: str, ref: bytes, **params: object
) -> tuple[jobs_pb2.Job, list[jobs_pb2.WatchJobResponse]]:
    stored = await upload(who, ref, name="reference.wav")
    job = (await who.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
        project_id=project, input_file_id=stored.id,
        voice_cloning=jobs_pb2.VoiceCloningParams(**params)))).job  # type: ignore[arg-type]  # fmt: skip
    return job, await watch(who, job.id, timeout=240)


def test_reference_checks_give_reasons() -> None:
    settings = CloningSettings()
    good = reference_audio()
    report = ref_check.check(good, settings)
    assert report.speech_seconds > 8 and -40 < report.loudness_lufs < -5
    with pytest.raises(ref_check.UnusableReference, match="at least 3 s"):
        ref_check.check(good[:RATE], settings)
    with pytest.raises(ref_check.UnusableReference, match="too quiet"):
        ref_check.check(good * 0.0005, settings)
    noise = np.random.default_rng(1).normal(0, 0.1, RATE * 8).astype(np.float32)
    with pytest.raises(ref_check.UnusableReference, match="s of speech"):
        ref_check.check(noise, settings)
    with pytest.raises(ref_check.UnusableReference, match="at most 60 s"):
        ref_check.check(np.tile(good, 6), settings)


async def test_clone_speaks_in_the_reference_voice_and_is_saved(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    ref = reference_audio()
    async with cloning_worker(harness):
        job, events = await clone(harness, editor, project, wav_bytes(ref),
                                  text=HELD_OUT, save_as_voice="Reader")  # fmt: skip
    result = events[-1].result
    assert events[-1].WhichOneof("event") == "result", [e.WhichOneof("event") for e in events]
    stages = {e.progress.stage for e in events if e.WhichOneof("event") == "progress"}
    assert {"analysing reference", "synthesising", "post-processing"} <= stages
    meta = dict(result.meta)
    # Measured, not assumed: the clone is closer to the reader than the base voice is...
    quality.at_least(
        "clone similarity gain", meta["similarity_clone"] - meta["similarity_base"], 0.1, meta
    )
    # ...and still understood.
    quality.at_most("clone WER", meta["wer"], 0.25, meta)
    assert {f.name for f in result.files} == {"cloned.wav", "voice.json"}
    print(f"\nclone: similarity {meta['similarity_base']:.3f} (base voice) -> "
          f"{meta['similarity_clone']:.3f} (clone), WER {meta['wer']:.3f}, "
          f"warp {meta['warp']}, eq {meta['eq']}")  # fmt: skip

    # Saved in the project, profile only (keep_reference was not asked for).
    listed = (
        await editor.client.voices.ListVoices(voices_pb2.ListVoicesRequest(project_id=project))
    ).voices
    saved = [v for v in listed if v.engine == "clone"]
    assert [v.id for v in saved] == ["Reader"] and saved[0].reference_file_id == ""
    # A TTS job of the project uses it by name; its speech is closer to the reader too.
    async with run_workers(harness, "tts", make_tts_handler(TtsSettings()), ack_wait=10.0):
        tts = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
            project_id=project, tts=jobs_pb2.TtsParams(text=HELD_OUT, voice="Reader")))).job  # fmt: skip
        plain = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
            project_id=project, tts=jobs_pb2.TtsParams(text=HELD_OUT)))).job  # fmt: skip
        said = (await watch(editor, tts.id, timeout=120))[-1].result
        base = (await watch(editor, plain.id, timeout=120))[-1].result
    assert said.meta["voice"] == "Reader"
    # A story narrated in it.
    async with run_workers(
        harness, "ai_stories", make_stories_handler(StoriesWorkerSettings()), ack_wait=10.0
    ):
        story = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
            project_id=project, ai_stories=jobs_pb2.AiStoriesParams(
                prompt="a lighthouse keeper", target_words=60, seed=7, voice="Reader")))).job  # fmt: skip
        told = (await watch(editor, story.id, timeout=240))[-1].result
    assert told.meta["voice"] == "Reader"
    narration = next(f for f in told.files if f.content_type.startswith("audio/"))
    narrated = audio.decode((await download(editor, narration.file_id))[1], RATE)
    judge = speaker.judge()
    target = judge.embed(ref)
    spoken = audio.decode((await download(editor, said.files[0].file_id))[1], RATE)
    stock = audio.decode((await download(editor, base.files[0].file_id))[1], RATE)
    with_voice, without = (
        speaker.cosine(target, judge.embed(spoken)),
        speaker.cosine(target, judge.embed(stock)),
    )
    assert with_voice > without + 0.1, (with_voice, without)
    story_voice = speaker.cosine(target, judge.embed(narrated))
    assert story_voice > without + 0.1, (story_voice, without)
    print(
        f"TTS with the saved voice: similarity {without:.3f} (stock) -> {with_voice:.3f}; "
        f"story narration {story_voice:.3f}"
    )

    # Only this project's jobs may use it.
    other_project = str(await harness.project(editor.user_id))
    err = await rpc_error(editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
        project_id=other_project, tts=jobs_pb2.TtsParams(text="hi", voice="Reader"))))  # fmt: skip
    assert "unknown voice 'Reader'" in (err.details() or "")
    # The name is taken in this project.
    err = await rpc_error(editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
        project_id=project, input_file_id=job.input_file_id,
        voice_cloning=jobs_pb2.VoiceCloningParams(text="hi", save_as_voice="reader"))))  # fmt: skip
    assert "already has a voice named 'reader'" in (err.details() or "")
    # Deleting it deletes its data; a job queued with it before then fails with the reason.
    await editor.client.voices.DeleteVoice(
        voices_pb2.DeleteVoiceRequest(project_id=project, name="reader")
    )
    async with harness.app.sessions() as session:
        from sqlalchemy import func, select

        assert await session.scalar(select(func.count()).select_from(SavedVoice)) == 0


async def test_voice_conversion_of_another_speaker(harness: Harness) -> None:
    """A recording of another speaker (espeak-ng) converted into the reader's voice."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs Debian's espeak-ng (make test installs it as root)")
    source = subprocess.run(["espeak-ng", "-v", "en-us+f3", "--stdout", HELD_OUT],
                            capture_output=True, check=True).stdout  # fmt: skip
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    stored_source = await upload(editor, source, name="source.wav")
    async with cloning_worker(harness):
        _, events = await clone(harness, editor, project, wav_bytes(reference_audio()),
                                source_file_id=stored_source.id, save_as_voice="reader2",
                                keep_reference=True)  # fmt: skip
    assert events[-1].WhichOneof("event") == "result"
    meta = dict(events[-1].result.meta)
    assert meta["mode"] == "conversion"
    assert meta["similarity_clone"] > meta["similarity_base"] + 0.05, meta
    print(
        f"\nconversion: similarity {meta['similarity_base']:.3f} (source) -> {meta['similarity_clone']:.3f}"
    )
    listed = (
        await editor.client.voices.ListVoices(voices_pb2.ListVoicesRequest(project_id=project))
    ).voices
    kept = next(v for v in listed if v.id == "reader2")
    assert kept.reference_file_id  # kept by the user's choice


async def test_unusable_reference_fails_once_with_the_reason(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    async with cloning_worker(harness):
        job, _ = await clone(harness, editor, project, wav_bytes(reference_audio()[: RATE]),
                                  text="hello")  # fmt: skip
    got = (await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))).job
    assert got.status == jobs_pb2.JOB_STATUS_FAILED and got.attempts == 1
    assert "needs at least 3 s" in got.error
    result = (
        await editor.client.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=job.id))
    ).result
    assert "needs at least 3 s" in result.logs


@pytest.fixture(scope="module")
def bark_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.bark_checkpoint import build

    return build(tmp_path_factory.mktemp("bark") / "checkpoint")


async def test_bark_speaker_prompt_path_on_a_random_checkpoint(
    harness: Harness, bark_dir: Path
) -> None:
    """The bark-prompt engine's real code (EnCodec codes of the reference, transcript semantics,
    generation with the prompt) on a random-initialised Bark checkpoint: it runs end to end; its
    output is noise, so nothing is claimed about the voice."""
    settings = WorkerSettings(
        cloning=CloningSettings(engine="bark-prompt", measure=False),
        tts=TtsSettings(bark_dir=str(bark_dir), bark_max_semantic_tokens=16),
    )
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    async with run_workers(harness, "voice_cloning", make_handler(settings), ack_wait=15.0):
        _, events = await clone(
            harness, editor, project, wav_bytes(reference_audio()), text="Hello world."
        )
        refused, _ = await clone(harness, editor, project, wav_bytes(reference_audio()),
                                 text="Hello.", save_as_voice="barky")  # fmt: skip
    result = events[-1].result
    assert events[-1].WhichOneof("event") == "result" and result.files[0].name == "cloned.wav", (
        result.logs
    )
    assert (
        result.meta["engine"] == "bark" and result.meta["prompt_acoustic_frames"] == 750
    )  # 10 s at 75 Hz
    assert result.meta["prompt_semantic_tokens"] > 0 and result.meta["duration_seconds"] > 0
    got = (await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=refused.id))).job
    assert got.status == jobs_pb2.JOB_STATUS_FAILED and "cannot be saved" in got.error
