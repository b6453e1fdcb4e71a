"""The sample-data command: what the first specification listed, idempotent, resettable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from control import sample_data
from control.db.models import Job, JobResult, Project, Setting, User
from tests.conftest import free_port
from tests.harness import Harness
from voxmesh.blobs import LocalBlobStore
from voxmesh.v1 import auth_pb2, jobs_pb2, results_pb2, settings_pb2

EXPECTED = {"users": 4, "projects": 4, "jobs": 15, "results": 5, "settings": 6}


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
            jobs_pb2.JOB_STATUS_RUNNING,
            jobs_pb2.JOB_STATUS_COMPLETED,
        )
    )
    assert all(j.progress == 100 for j in jobs if j.status == jobs_pb2.JOB_STATUS_COMPLETED)
    results = (await client.results.ListJobResults(results_pb2.ListJobResultsRequest())).results
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
    assert "4 users, 4 projects, 15 jobs, 5 results, 6 settings" in out
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
