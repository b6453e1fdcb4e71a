"""voxctl, the CLI, run as a user runs it (a separate process) against the real platform."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from control.auth.tokens import TokenKind, TokenService
from control.db.models import UserRole
from services.tts.config import TtsSettings
from services.tts.handler import make_handler
from tests.conftest import TEST_SECRET
from tests.harness import Harness, run_workers
from tests.test_dispatch import wait_for
from tests.workers import behave
from voxmesh import audio
from voxmesh.v1 import jobs_pb2

ROOT = Path(__file__).resolve().parents[1]


async def voxctl(
    h: Harness, home: Path, *args: str, stdin: str = "", **extra_env: str
) -> tuple[int, str]:
    env = {**os.environ, "VOXCTL_CONFIG_DIR": str(home), "VOXMESH_SERVER": h.target,
           "COLUMNS": "200", "PYTHONPATH": str(ROOT), **extra_env}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxctl", *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(stdin.encode()), 120)
    return proc.returncode or 0, out.decode()


async def test_voxctl_end_to_end(harness: Harness, tmp_path: Path) -> None:
    editor = await harness.user(UserRole.EDITOR, login=False)
    home = tmp_path / "config"
    code, out = await voxctl(
        harness,
        home,
        "login",
        "-u",
        editor.username,
        "--password-stdin",
        stdin=f"{editor.password}\n",
    )
    assert code == 0 and f"as {editor.username} (editor)" in out, out
    credentials = home / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    code, out = await voxctl(harness, home, "projects", "--create", "CLI project")
    assert code == 0, out
    project = out.split()[-1]
    async with run_workers(harness, "tts", make_handler(TtsSettings()), ack_wait=10.0):
        code, out = await voxctl(harness, home, "submit", "tts", "--project", project, "--text",
                                 "Hello from the command line.", "--format", "mp3", "--watch")  # fmt: skip
    assert code == 0 and "completed" in out and "speech.mp3" in out, out
    job = out.split("Created job ")[1].split()[0]
    code, out = await voxctl(harness, home, "jobs", "--status", "completed", "--wide")
    assert code == 0 and job in out and "tts" in out, out
    code, out = await voxctl(harness, home, "download", job, "--out", str(tmp_path / "out"))
    assert code == 0, out
    assert len(audio.decode((tmp_path / "out" / "speech.mp3").read_bytes())) > 16000
    # One job in full: its parameters, the facts its worker reported, its files and its log.
    code, out = await voxctl(harness, home, "show", job[:8])
    assert code == 0 and job in out and "completed" in out, out
    assert "text: Hello from the command line." in out and "speech.mp3" in out, out
    assert "duration_seconds:" in out and "COMPLETED" in out.split("log", 1)[1], out
    assert "project   CLI project" in out, out
    code, out = await voxctl(harness, home, "show", job, "--json")
    shown = json.loads(out)
    assert shown["job"]["id"] == job and shown["result"]["files"], shown
    code, out = await voxctl(harness, home, "settings", "preferred_voice", "en_US-joe-medium")
    assert code == 0, out
    code, out = await voxctl(harness, home, "settings")
    assert "preferred_voice" in out and "user" in out, out
    # Bad input gets the server's words and a non-zero exit.
    code, out = await voxctl(harness, home, "cancel", job)
    assert code == 1 and "FAILED_PRECONDITION" in out and "only PENDING or RUNNING" in out, out
    code, out = await voxctl(harness, home, "jobs", "--type", "karaoke")
    assert code == 2 and "unknown job type" in out

    # An expired access token is refreshed on its own (and the rotated tokens are stored).
    data = json.loads(credentials.read_text())
    entry = data["servers"][harness.target]
    expired = TokenService(
        TEST_SECRET,
        issuer="voxmesh",
        access_ttl=timedelta(seconds=-60),
        refresh_ttl=timedelta(days=1),
    )
    entry["access_token"] = expired.issue(editor.user_id, TokenKind.ACCESS).token
    entry["access_expires_at"] = 0
    old_refresh = entry["refresh_token"]
    credentials.write_text(json.dumps(data))
    code, out = await voxctl(harness, home, "projects")
    assert code == 0 and "CLI project" in out, out
    assert (
        json.loads(credentials.read_text())["servers"][harness.target]["refresh_token"]
        != old_refresh
    )

    code, out = await voxctl(harness, home, "logout")
    assert code == 0
    code, out = await voxctl(harness, home, "projects")
    assert code == 2 and "not signed in" in out


async def test_voxctl_watch_outlives_its_access_tokens(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends a stream when its access token expires; `voxctl watch` refreshes and
    resumes after the last event it saw, so a long job is followed to its end."""
    from tests.test_dispatch import create, setup
    from tests.workers import behave

    monkeypatch.setattr(harness.app.tokens, "access_ttl", timedelta(seconds=3))
    editor, project = await setup(harness)
    home = tmp_path / "config"
    code, out = await voxctl(harness, home, "login", "-u", editor.username, "--password-stdin",
                             stdin=f"{editor.password}\n")  # fmt: skip
    assert code == 0, out
    async with run_workers(harness, "tts", behave, ack_wait=10.0):
        job = await create(editor, project, "sleep:8")  # outlives two or three access tokens
        code, out = await voxctl(harness, home, "watch", job.id)
    assert code == 0 and f"Job {job.id} completed" in out, out


async def test_voxctl_keys_make_use_list_and_revoke(harness: Harness, tmp_path: Path) -> None:
    editor = await harness.user(UserRole.EDITOR)
    home = tmp_path / "home"
    rc, out = await voxctl(harness, home, "login", "-u", editor.username, "--password-stdin",
                           stdin=editor.password + "\n")  # fmt: skip
    assert rc == 0, out
    rc, out = await voxctl(harness, home, "keys", "create", "nightly-batch", "--role", "viewer")
    assert rc == 0, out
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("vxk_"), out
    # A script with only the key (no sign-in stored) lists projects as a viewer...
    rc, out = await voxctl(harness, tmp_path / "elsewhere", "projects", VOXMESH_API_KEY=secret)
    assert rc == 0, out
    rc, out = await voxctl(harness, home, "keys", "list")
    assert rc == 0 and "nightly-batch" in out and secret[:12] in out and secret not in out, out
    key_id = next(line.split()[1] for line in out.splitlines() if "nightly-batch" in line)
    rc, out = await voxctl(harness, home, "keys", "revoke", key_id)
    assert rc == 0 and "revoked" in out, out
    rc, out = await voxctl(harness, tmp_path / "elsewhere", "projects", VOXMESH_API_KEY=secret)
    assert rc != 0 and "UNAUTHENTICATED" in out and "revoked" in out, out


async def _login(h: Harness, home: Path, role: UserRole = UserRole.EDITOR) -> Any:
    who = await h.user(role)
    code, out = await voxctl(h, home, "login", "-u", who.username, "--password-stdin",
                             stdin=f"{who.password}\n")  # fmt: skip
    assert code == 0, out
    return who


async def test_voxctl_takes_short_ids_and_project_names(harness: Harness, tmp_path: Path) -> None:
    home = tmp_path / "config"
    editor = await _login(harness, home)
    code, out = await voxctl(harness, home, "projects", "--create", "Podcasts")
    assert code == 0, out
    project = uuid.UUID(out.split()[-1])
    # Two ids that share their first 8 characters, and one that does not.
    twins = [uuid.UUID("abcd1234-0000-4000-8000-00000000000" + d) for d in "12"]
    for job_id in twins:
        await harness.job(project, editor.user_id, job_id=job_id, title="twin")
    single = await harness.job(project, editor.user_id, title="an episode with a long title " * 3)
    # At 80 columns ids are never cut: the short id column shows 8 characters whole.
    code, out = await voxctl(harness, home, "jobs", "--project", "podcasts", COLUMNS="80")
    assert code == 0 and "3 jobs" in out, out
    assert str(single)[:8] in out and "abcd1234" in out and "…" not in out.split("title")[0], out
    code, out = await voxctl(harness, home, "jobs", "--project", "Podcasts", "--json")
    assert code == 0 and {j["id"] for j in json.loads(out)} == {str(single), *map(str, twins)}
    # A unique prefix works anywhere an id is asked; an ambiguous one says which ids it matches.
    code, out = await voxctl(harness, home, "cancel", str(single)[:6])
    assert code == 0 and f"Cancelled job {single}" in out, out
    code, out = await voxctl(harness, home, "cancel", "abcd1234")
    assert code == 2 and "ambiguous" in out and "abcd1234-0000" in out, out
    code, out = await voxctl(harness, home, "cancel", "abcd1234-0000-4000-8000-000000000002")
    assert code == 0, out
    code, out = await voxctl(harness, home, "watch", "ab")
    assert code == 2 and "too short" in out, out
    code, out = await voxctl(harness, home, "watch", "ffff0000")
    assert code == 1 and "no job id matches" in out, out
    code, out = await voxctl(harness, home, "jobs", "--project", "Radio")
    assert code == 1 and "no project" in out and "voxctl projects" in out, out
    # An unsupported format is refused before anything is uploaded.
    recording = tmp_path / "speech.wav"
    recording.write_bytes(audio.encode(np.zeros(16000, np.float32), 16000)[0])
    code, out = await voxctl(harness, home, "submit", "dub", "--project", "Podcasts", "--file",
                             str(recording), "--target-language", "pt", "--format", "aac")  # fmt: skip
    assert code == 2 and "'aac' is not produced" in out and "wav, flac, mp3, ogg" in out, out
    assert "uploading" not in out
    async with harness.app.engine.connect() as conn:
        uploads = (await conn.exec_driver_sql("SELECT count(*) FROM uploads")).scalar()
    assert uploads == 0


async def test_voxctl_settings_voices_and_json(harness: Harness, tmp_path: Path) -> None:
    home = tmp_path / "config"
    await _login(harness, home)
    code, out = await voxctl(harness, home, "settings")
    row = next(line for line in out.splitlines() if "max_concurrent_jobs" in line)
    assert " 5 " in row and "5.0" not in row, row  # integers print as integers
    code, out = await voxctl(harness, home, "settings", "--json")
    values = json.loads(out)
    assert values["max_concurrent_jobs"] == 5 and values["auto_start_jobs"] is True
    async with run_workers(harness, "tts", behave, capabilities={"engines": ["piper"]}):
        deadline = asyncio.get_running_loop().time() + 15
        while True:  # until the worker's announcement has arrived
            code, out = await voxctl(harness, home, "voices", "--json")
            if json.loads(out):
                break
            assert asyncio.get_running_loop().time() < deadline, "the worker never announced"
        assert {v["id"] for v in json.loads(out)} == {"en_US-joe-medium"}
        code, out = await voxctl(harness, home, "voices")
        assert code == 0 and "en_US-joe-medium" in out and "bark" not in out, out
        code, out = await voxctl(harness, home, "voices", "--all", "--engine", "bark")
        assert code == 0 and "bark:v2/en_speaker_0" in out and " no " in out, out
    # Models: what a job may name, before any STT worker announces (the shipped set).
    code, out = await voxctl(harness, home, "models", "--json")
    listed = {(m["name"], m["job_type"]): m for m in json.loads(out)}
    assert set(listed) >= {("tiny.en", "stt"), ("base", "stt"),
                           ("qwen2.5-coder-1.5b-instruct", "ai_stories")}, listed  # fmt: skip
    assert listed["base", "stt"]["multilingual"] and listed["tiny.en", "stt"]["languages"] == ["en"]
    code, out = await voxctl(harness, home, "models", "--type", "story")
    assert code == 0 and "gemma-3-270m" in out and "tiny.en" not in out, out


async def test_voxctl_watch_follows_the_newest_run(harness: Harness, tmp_path: Path) -> None:
    home = tmp_path / "config"
    editor = await _login(harness, home)
    project = str(await harness.project(editor.user_id, name="Retries"))
    async with run_workers(harness, "tts", behave):
        # Its first run fails (after some progress); the retried run completes.
        job = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
            project_id=project, tts=jobs_pb2.TtsParams(text="fail-then-sleep:3")))).job  # fmt: skip
        await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_FAILED})
        code, out = await voxctl(harness, home, "retry", job.id[:8])
        assert code == 0 and "run 2" in out, out
        code, out = await voxctl(harness, home, "watch", job.id[:8])
    assert code == 0 and f"Job {job.id} completed (run 2)" in out, out
    assert "failed" not in out and "100%" in out, out  # the old run is history; the bar ends full
    code, out = await voxctl(harness, home, "watch", job.id[:8], "--json")
    finished = json.loads(out)
    assert finished["status"] == "JOB_STATUS_COMPLETED" and finished["files"], finished
