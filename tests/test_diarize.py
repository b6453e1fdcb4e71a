"""Who speaks when: STT jobs with `diarize` label every segment and word with a speaker, show it
in the subtitles and give each speaker's talk time; the diarization error rate is measured on a
three-person conversation built from a real recording and two synthetic voices with
overlapping turns (tests.speech.conversation); a recording decoded in parts by two workers keeps
one set of labels."""

from __future__ import annotations

import json

import grpc
import pytest

from control.db.models import UserRole
from services.stt.config import SttSettings
from tests import quality
from tests.harness import Harness, rpc_error
from tests.speech import conversation, passage, wav_bytes
from tests.test_dispatch import wait_for
from tests.test_files import download
from tests.test_stt import stt_job, stt_worker
from voxmesh.speech.diarize import Turn, error_rate
from voxmesh.v1 import jobs_pb2, results_pb2

pytestmark = pytest.mark.slow

# Measured DER (0.25 s collar) on this ~70 s conversation, 5 runs on 2 cores (2026-12-02): 0.045,
# 0.046, 0.049, 0.044, 0.062 (the synthetic voices vary a little between runs). The goal
# is 0.10; the bound sits about twice above the worst run.
DER_BOUND = 0.12


async def test_a_three_person_conversation_is_diarized(harness: Harness) -> None:
    mix, reference = conversation()
    truth = [Turn(*r) for r in reference]
    assert len(mix) / 16_000 >= 60
    editor = await harness.user(UserRole.EDITOR)
    speech = wav_bytes(mix)
    async with stt_worker(harness):
        job = await stt_job(harness, editor, speech, language="en", diarize=True)
        await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=420)
    result = (
        await editor.client.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=job.id))
    ).result
    files = {f.name: f for f in result.files}
    document = json.loads((await download(editor, files["transcript.json"].file_id))[1])
    meta = dict(result.meta)
    turns = [Turn(t["speaker"], t["start"], t["end"]) for t in document["turns"]]
    der = error_rate(truth, turns, collar=0.25)
    print(f"\nDER {der:.3f} over {len(mix) / 16_000:.1f} s, {meta['speakers']} speakers, "
          f"talk time {dict(meta['talk_time_seconds'])}")  # fmt: skip
    assert meta["speakers"] == 3
    quality.at_most("diarization error rate (3 speakers, 0.25 s collar)", der, DER_BOUND)
    segments = document["segments"]
    assert all(s["speaker"].startswith("SPEAKER_") for s in segments)
    assert all(w["speaker"] == s["speaker"] for s in segments for w in s["words"])
    assert len({s["speaker"] for s in segments}) == 3
    srt_text = (await download(editor, files["transcript.srt"].file_id))[1].decode()
    vtt_text = (await download(editor, files["transcript.vtt"].file_id))[1].decode()
    assert "[SPEAKER 1] " in srt_text and "[SPEAKER 3] " in vtt_text
    talk = dict(meta["talk_time_seconds"])
    assert set(talk) == {"SPEAKER 1", "SPEAKER 2", "SPEAKER 3"}
    assert talk["SPEAKER 1"] >= talk["SPEAKER 2"] >= talk["SPEAKER 3"] > 5

    # The same recording in 20 s parts across two workers: the same labels on the same words.
    async with stt_worker(harness, SttSettings(shard_seconds=20.0, cpu_threads=1), count=2):
        sharded = await stt_job(harness, editor, speech, language="en", diarize=True)
        await wait_for(harness, sharded.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=420)
    again = (
        await editor.client.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=sharded.id))
    ).result
    assert again.meta["parts"] > 1 and again.meta["speakers"] == 3
    parts = json.loads(
        (await download(editor, {f.name: f for f in again.files}["transcript.json"].file_id))[1]
    )
    assert parts["turns"] == document["turns"]
    labels = {round(w["start"], 1): w["speaker"] for s in segments for w in s["words"]}
    agree = [
        labels[round(w["start"], 1)] == w["speaker"]
        for s in parts["segments"]
        for w in s["words"]
        if round(w["start"], 1) in labels
    ]
    assert len(agree) > 50 and sum(agree) / len(agree) > 0.95


async def test_speaker_counts_are_checked_at_create(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    samples, _ = passage()
    speech = wav_bytes(samples[: 16_000 * 3])
    for params, words in (
        ({"num_speakers": 2}, "stt.num_speakers needs stt.diarize"),
        ({"diarize": True, "num_speakers": 40}, "between 1 and 20"),
        ({"diarize": True, "num_speakers": 2, "max_speakers": 3}, "not both"),
        ({"diarize": True, "min_speakers": 4, "max_speakers": 2}, "is above"),
    ):
        error = await rpc_error(stt_job(harness, editor, speech, **params))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, params
        assert words in (error.details() or ""), error.details()
