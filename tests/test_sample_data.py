"""The sample-data command: believable and honest (new jobs queued with inputs that succeed,
earlier ones CANCELLED history, no RUNNING row without a worker), idempotent, resettable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jiwer
import pytest
from sqlalchemy import func, select

from control import sample_data
from control.db.models import Job, JobResult, Project, Setting, User
from services.tts.config import TtsSettings
from services.tts.handler import make_handler as make_tts
from tests.conftest import free_port
from tests.harness import Harness, run_workers
from tests.speech import normalize
from tests.test_dispatch import wait_for
from tests.test_stt import stt_worker
from voxmesh import audio
from voxmesh.blobs import LocalBlobStore
from voxmesh.v1 import auth_pb2, files_pb2, jobs_pb2, results_pb2, settings_pb2

EXPECTED = {"users": 4, "projects": 4, "jobs": 15, "results": 10, "settings": 6}


async def _load(h: Harness, tmp_path: Path, clear: bool = False) -> dict[str, int]:
    async with h.app.sessions() as session:
        if clear:
            await sample_data.clear(session)
        counts = await sample_data.load(session, LocalBlobStore(tmp_path / "blobs"))
        await session.commit()
    return counts


async def _table_counts(h: Harness) -> dict[str, int]:
    async with h.app.sessions() as session:
        return {
            model.__tablename__: int(
                await session.scalar(select(func.count()).select_from(model)) or 0
            )
            for model in (User, Project, Job, JobResult, Setting)
        }


async def test_sample_data_matches_the_specification(harness: Harness, tmp_path: Path) -> None:
    assert await _load(harness, tmp_path) == EXPECTED
    counts = await _table_counts(harness)
    assert await _load(harness, tmp_path) == EXPECTED  # twice: nothing duplicated
    assert await _table_counts(harness) == counts

    login = await harness.anonymous.auth.Login(
        auth_pb2.LoginRequest(username="editor1", password="editor1-demo-pass")
    )
    client = harness.client(login.tokens.access_token)
    jobs = (await client.jobs.ListJobs(jobs_pb2.ListJobsRequest())).jobs
    assert Counter((j.type, j.status) for j in jobs) == Counter(
        (t, s)
        for t in (1, 2, 3, 4, 5)
        for s in (
            jobs_pb2.JOB_STATUS_PENDING,
            jobs_pb2.JOB_STATUS_CANCELLED,
            jobs_pb2.JOB_STATUS_COMPLETED,
        )
    )
    assert all(j.progress == 100 for j in jobs if j.status == jobs_pb2.JOB_STATUS_COMPLETED)
    # No title states a status (the status column does); without a recording, the new jobs
    # that need one wait for a start instead of being queued to fail on a placeholder.
    assert not any("pending" in j.title.lower() or "running" in j.title.lower() for j in jobs)
    waiting = {j.type for j in jobs if j.pending_state == jobs_pb2.PENDING_STATE_AWAITING_START}
    assert waiting == {
        jobs_pb2.JOB_TYPE_STT,
        jobs_pb2.JOB_TYPE_VOICE_CLONING,
        jobs_pb2.JOB_TYPE_DUBBING,
    }
    results = (await client.results.ListJobResults(results_pb2.ListJobResultsRequest())).results
    results = [r for r in results if r.files]  # the finished ones (cancelled ones have logs)
    assert len(results) == 5
    meta_keys = {r.job_type: set(r.meta.keys()) for r in results}
    assert {"language", "duration_seconds", "word_count", "confidence"} <= meta_keys[
        jobs_pb2.JOB_TYPE_STT
    ]
    assert all(r.logs and r.files for r in results)
    for r in results:  # every result file's bytes exist in the blob store
        assert r.files[0].size_bytes > 0

    glob = await client.settings.ListSettings(
        settings_pb2.ListSettingsRequest(scope=settings_pb2.SETTING_SCOPE_GLOBAL)
    )
    values = {s.key: s.value for s in glob.settings}
    assert (
        values["max_file_size_mb"].number_value == 100
        and values["default_language"].string_value == "en"
    )
    assert (
        values["enable_notifications"].bool_value is True
        and values["max_concurrent_jobs"].number_value == 5
    )
    mine = await client.settings.ListSettings(
        settings_pb2.ListSettingsRequest(scope=settings_pb2.SETTING_SCOPE_USER)
    )
    assert [(s.key, s.value.bool_value) for s in mine.settings] == [("auto_start_jobs", True)]


async def test_clear_resets_only_sample_data(harness: Harness, tmp_path: Path) -> None:
    await _load(harness, tmp_path)
    outsider = await harness.user(sample_data.UserRole.EDITOR)
    kept = await harness.project(outsider.user_id, name="Not a sample")
    async with harness.app.sessions() as session:
        job = await session.get(Job, sample_data.sample_id("job:TTS:PENDING"))
        assert job is not None
        await session.delete(job)
        row = await session.scalar(select(Setting).where(Setting.key == "max_concurrent_jobs"))
        assert row is not None
        row.value = 50
        await session.commit()
    assert await _load(harness, tmp_path, clear=True) == EXPECTED
    async with harness.app.sessions() as session:
        restored = await session.scalar(
            select(Setting.value).where(Setting.key == "max_concurrent_jobs")
        )
        assert restored == 5
        assert await session.get(Project, kept) is not None


def test_command_prints_the_demo_credentials(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "VOXMESH_DATA_DIR": str(tmp_path),
           "VOXMESH_NATS_PORT": str(free_port())}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "control", "sample-data"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "4 users, 4 projects, 15 jobs, 10 results, 6 settings" in out
    for user in sample_data.USERS:
        assert f"{user.username}" in out and user.password in out
    again = subprocess.run(
        [sys.executable, "-m", "control", "sample-data", "--clear"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert again.startswith("Reset and loaded sample data: 4 users, 4 projects, 15 jobs")


@pytest.mark.slow
async def test_sample_jobs_that_are_queued_succeed(harness: Harness) -> None:
    """With a recording (real speech, synthesised by the stock voice), every new sample job is
    queued, none is RUNNING without a worker; the transcription and the narration then run on
    real workers and complete, and the transcript says what the recording says."""
    speech = sample_data.sample_speech()
    assert speech is not None, "Piper is installed with the tts extra"
    seconds = len(audio.decode(speech)) / 16000
    assert 8 < seconds < 60, seconds  # also a valid voice-cloning reference (3-60 s)
    assert harness.app.mesh is not None
    async with harness.app.sessions() as session:  # into the store the workers read
        await sample_data.load(session, harness.app.mesh.blobs, speech)
        await session.commit()
    harness.app.mesh.wake()
    login = await harness.anonymous.auth.Login(
        auth_pb2.LoginRequest(username="admin", password="admin-demo-pass")
    )
    admin = harness.client(login.tokens.access_token)
    jobs = (await admin.jobs.ListJobs(jobs_pb2.ListJobsRequest())).jobs
    new = {j.type: j for j in jobs if j.status == jobs_pb2.JOB_STATUS_PENDING}
    assert len(new) == 5 and all(
        j.pending_state != jobs_pb2.PENDING_STATE_AWAITING_START for j in new.values()
    )
    assert not any(j.status == jobs_pb2.JOB_STATUS_RUNNING for j in jobs)
    stt, tts = new[jobs_pb2.JOB_TYPE_STT], new[jobs_pb2.JOB_TYPE_TTS]
    async with stt_worker(harness), run_workers(harness, "tts", make_tts(TtsSettings())):
        for job in (stt, tts):
            done = await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED,
                                                    jobs_pb2.JOB_STATUS_FAILED}, timeout=240)  # fmt: skip
            assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, (job.title, done.error)
    result = await admin.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=stt.id))
    transcript = next(f for f in result.result.files if f.name == "transcript.txt")
    parts = [p async for p in admin.files.DownloadFile(
        files_pb2.DownloadFileRequest(file_id=transcript.file_id))]  # fmt: skip
    text = b"".join(p.data for p in parts[1:]).decode()
    error = jiwer.wer(normalize(sample_data.SPEECH_TEXT), normalize(text))
    assert error < 0.25, (error, text)
