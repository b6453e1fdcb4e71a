"""Demo data: users admin / editor1 / editor2 / viewer1, 4 projects, 15 jobs (three per type:
one new, one stopped earlier, one finished), a result with logs and per-type meta for each
finished job, 4 global and 2 user settings.

Nothing in it pretends: the new jobs are queued for real, with inputs that succeed (a recording
of real speech, synthesised here by the stock Piper voice; where no TTS engine is installed, the
jobs that need a recording wait for StartJob instead of being queued to fail); the "earlier"
jobs are CANCELLED history, never a RUNNING row no worker holds; the finished jobs' results say
they are sample data.

Every row has a fixed id, so running it twice adds nothing; `--clear` deletes what the sample
users own (and the sample global settings) and loads it again. The demo passwords exist only
here and are printed by the command; they are never defaults of a real deployment.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import uuid
import wave
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from control import accounts, files
from control.convert import params_to_json
from control.db.models import (
    File,
    Job,
    JobResult,
    JobStatus,
    JobType,
    OutboxEntry,
    Project,
    Setting,
    User,
    UserRole,
)
from voxmesh.blobs import BlobStore
from voxmesh.errors import AlreadyExists
from voxmesh.v1 import jobs_pb2

log = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("6f1d3c2e-8b7a-4e55-9a61-0c5d2b7e9f10")


def sample_id(name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, name)


@dataclass(frozen=True)
class DemoUser:
    username: str
    password: str
    role: UserRole
    display_name: str


USERS = [
    DemoUser("admin", "admin-demo-pass", UserRole.ADMIN, "Ada Admin"),
    DemoUser("editor1", "editor1-demo-pass", UserRole.EDITOR, "Eddie Editor"),
    DemoUser("editor2", "editor2-demo-pass", UserRole.EDITOR, "Erin Editor"),
    DemoUser("viewer1", "viewer1-demo-pass", UserRole.VIEWER, "Vic Viewer"),
]

PROJECTS = [
    ("editor1", "Podcast transcripts", "Weekly episodes, transcribed with subtitles."),
    ("editor1", "Audiobook narration", "Chapters narrated with stock and cloned voices."),
    ("editor2", "Product videos (PT)", "English product videos dubbed into Portuguese."),
    ("admin", "Bedtime stories", "Short generated stories, narrated for children."),
]

GLOBAL_SETTINGS: dict[str, Any] = {
    "max_file_size_mb": 100,
    "default_language": "en",
    "enable_notifications": True,
    "max_concurrent_jobs": 5,
}
USER_SETTINGS = [
    ("admin", "preferred_voice", "en_US-joe-medium"),
    ("editor1", "auto_start_jobs", True),
]

# (type, project index, owner, params message, input file kind)
JOB_SPECS: list[tuple[JobType, int, str, Any, str | None]] = [
    (JobType.STT, 0, "editor1", jobs_pb2.SttParams(language="en", task=jobs_pb2.STT_TASK_TRANSCRIBE, word_timestamps=True, vad_filter=True), "episode"),
    (JobType.TTS, 1, "editor1", jobs_pb2.TtsParams(text="Chapter one. The lighthouse keeper woke before dawn.", voice="en_US-joe-medium", engine="piper", format=jobs_pb2.AUDIO_FORMAT_MP3, speed=1.0), None),
    (JobType.VOICE_CLONING, 1, "editor1", jobs_pb2.VoiceCloningParams(text="Welcome back to the story.", save_as_voice="narrator-anna", format=jobs_pb2.AUDIO_FORMAT_WAV), "reference"),
    (JobType.DUBBING, 2, "editor2", jobs_pb2.DubbingParams(target_language="pt", source_language="en", keep_background=True, max_stretch=1.3, format=jobs_pb2.AUDIO_FORMAT_WAV), "video-audio"),
    (JobType.AI_STORIES, 3, "admin", jobs_pb2.AiStoriesParams(prompt="A shy dragon learns to sing", genre="fantasy", audience="children", target_words=400, language="en", voice="en_US-joe-medium", seed=42, format=jobs_pb2.AUDIO_FORMAT_MP3), None),
]  # fmt: skip

META: dict[JobType, dict[str, Any]] = {
    JobType.STT: {"language": "en", "duration_seconds": 1.0, "word_count": 7, "confidence": 0.93, "engine": "sample"},
    JobType.TTS: {"duration_seconds": 1.0, "sample_rate": 16000, "voice": "en_US-joe-medium", "engine": "sample", "characters": 52},
    JobType.VOICE_CLONING: {"duration_seconds": 1.0, "speaker_similarity": 0.71, "base_voice_similarity": 0.52, "engine": "sample"},
    JobType.DUBBING: {"source_language": "en", "target_language": "pt", "segments": 3, "max_overflow_seconds": 0.0, "duration_seconds": 1.0},
    JobType.AI_STORIES: {"language": "en", "word_count": 9, "tokens_per_second": 0.0, "duration_seconds": 1.0, "model": "sample"},
}  # fmt: skip

TEXT_RESULTS = {
    JobType.STT: ("transcript.txt", "text/plain", "This is sample data, not a transcription.\n"),
    JobType.AI_STORIES: (
        "story.md",
        "text/markdown",
        "# Sample\n\nThis is sample data, not a story.\n",
    ),
}


TITLES = {
    JobType.STT: "Episode 12: transcript",
    JobType.TTS: "Chapter one, narrated",
    JobType.VOICE_CLONING: "Narrator voice",
    JobType.DUBBING: "Product tour, Portuguese dub",
    JobType.AI_STORIES: "The shy dragon",
}
SPEECH_TEXT = (
    "Welcome to episode twelve of the Voxmesh podcast. Today we talk about running speech "
    "models on your own machines. Our guest built a small studio in her garage, and she "
    "records every morning before the neighbours wake up."
)
NEEDS_RECORDING = {JobType.STT, JobType.VOICE_CLONING, JobType.DUBBING}


def sample_speech() -> bytes | None:
    """About 12 s of real English speech (SPEECH_TEXT in the stock Piper voice) as WAV, for the
    sample jobs' inputs; None where no TTS engine is installed here."""
    try:
        import numpy as np

        from voxmesh import audio
        from voxmesh.speech import voices
        from voxmesh.speech.text import split
        from voxmesh.speech.tts import load as load_voice
    except ImportError:
        return None
    try:
        voice = voices.CATALOG[voices.DEFAULT_VOICE]
        engine = load_voice(voice)
        pause = np.zeros(int(0.3 * engine.sample_rate), np.float32)
        parts = []
        for sentence, _ in split(SPEECH_TEXT):
            parts += [engine.synthesize(sentence, voice, 1.0), pause]
        data, *_ = audio.encode(
            np.concatenate(parts), engine.sample_rate, jobs_pb2.AUDIO_FORMAT_WAV
        )
        return data
    except Exception as e:  # an engine that is installed but broken: the jobs wait instead
        log.warning("no sample speech (%s: %s): jobs that need a recording will wait for a "
                    "start", type(e).__name__, e)  # fmt: skip
        return None


def tone_wav(seconds: float = 1.0, rate: int = 16000, freq: float = 440.0) -> bytes:
    """A quiet sine tone: placeholder audio for demo inputs, plainly not speech."""
    frames = b"".join(
        struct.pack("<h", int(3000 * math.sin(2 * math.pi * freq * i / rate)))
        for i in range(int(seconds * rate))
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


async def clear(session: AsyncSession) -> None:
    user_ids = [sample_id(f"user:{u.username}") for u in USERS]
    project_ids = select(Project.id).where(Project.owner_id.in_(user_ids))
    await session.execute(
        delete(Job).where(or_(Job.created_by.in_(user_ids), Job.project_id.in_(project_ids)))
    )
    await session.execute(delete(Project).where(Project.owner_id.in_(user_ids)))
    await session.execute(delete(File).where(File.owner_id.in_(user_ids)))
    await session.execute(
        delete(Setting).where(Setting.user_id.is_(None), Setting.key.in_(GLOBAL_SETTINGS))
    )
    await session.execute(delete(User).where(User.id.in_(user_ids)))


async def _ensure_users(session: AsyncSession) -> dict[str, uuid.UUID]:
    ids: dict[str, uuid.UUID] = {}
    for demo in USERS:
        uid = sample_id(f"user:{demo.username}")
        ids[demo.username] = uid
        if await session.get(User, uid) is not None:
            continue
        if await accounts.find_by_username(session, demo.username) is not None:
            raise AlreadyExists(
                f"a user named {demo.username!r} exists that the sample data did not create; "
                "sample data will not touch it"
            )
        await accounts.create_user(
            session,
            username=demo.username,
            password=demo.password,
            role=demo.role,
            display_name=demo.display_name,
            email=f"{demo.username}@example.com",
            user_id=uid,
        )
    return ids


async def _put_file(
    session: AsyncSession, blobs: BlobStore, key: str, owner: uuid.UUID,
    name: str, content_type: str, data: bytes, project_id: uuid.UUID | None = None,
) -> File:  # fmt: skip
    file_id = sample_id(f"file:{key}")
    existing = await session.get(File, file_id)
    if existing is not None:
        return existing
    return await files.record(
        session, await blobs.put(data), owner_id=owner, filename=name,
        content_type=content_type, size_bytes=len(data), file_id=file_id, sealed_here=True,
        project_id=project_id,
    )  # fmt: skip


async def load(
    session: AsyncSession, blobs: BlobStore, speech: bytes | None = None
) -> dict[str, int]:
    """Add whatever of the sample data is missing; returns counts of what exists after.
    `speech`: a recording for the inputs (sample_speech()); without one, the new jobs that need
    a recording wait for StartJob rather than fail at once on a placeholder."""
    users = await _ensure_users(session)
    now = datetime.now(UTC).replace(microsecond=0)

    project_ids = []
    for i, (owner, name, description) in enumerate(PROJECTS):
        pid = sample_id(f"project:{name}")
        project_ids.append(pid)
        if await session.get(Project, pid) is None:
            session.add(Project(id=pid, name=name, description=description, owner_id=users[owner],
                                created_at=now - timedelta(days=10 - i)))  # fmt: skip
    await session.flush()

    tone = tone_wav()
    recording = speech or tone
    statuses = (JobStatus.PENDING, JobStatus.CANCELLED, JobStatus.COMPLETED)
    for t, (job_type, project_index, owner, params, input_kind) in enumerate(JOB_SPECS):
        for s, status in enumerate(statuses):
            jid = sample_id(f"job:{job_type.value}:{status.value}")
            if await session.get(Job, jid) is not None:
                continue
            input_file = None
            if input_kind is not None:
                name = f"{input_kind}.wav" if speech else f"{input_kind}-placeholder-tone.wav"
                input_file = await _put_file(session, blobs, f"{input_kind}:{jid}", users[owner],
                                             name, "audio/wav", recording)  # fmt: skip
            created = now - timedelta(hours=48 - 3 * t - s)
            title = TITLES[job_type] + {JobStatus.PENDING: "", JobStatus.CANCELLED: ", first take",
                                        JobStatus.COMPLETED: " (sample result)"}[status]  # fmt: skip
            job = Job(
                id=jid, project_id=project_ids[project_index], created_by=users[owner],
                type=job_type, status=status, title=title,
                params=params_to_json(params), input_file_id=input_file.id if input_file else None,
                created_at=created, updated_at=created, run=1, last_event_seq=0,
            )  # fmt: skip
            if status is not JobStatus.PENDING:
                job.attempts, job.started_at = 1, created + timedelta(minutes=1)
                job.finished_at = created + timedelta(minutes=3)
                job.progress = 100 if status is JobStatus.COMPLETED else 45
            if status is JobStatus.CANCELLED:
                job.error = "cancelled"
            session.add(job)
            await session.flush()
            if status is JobStatus.PENDING:
                if job_type in NEEDS_RECORDING and speech is None:
                    job.awaiting_start = True  # a placeholder tone would only fail: not queued
                else:  # queued like any new job: a worker will take it, and it will succeed
                    session.add(OutboxEntry(job_id=jid, run=1))
            if status is JobStatus.CANCELLED:
                session.add(JobResult(
                    job_id=jid, files=[], meta={}, finished_at=job.finished_at,
                    logs=(f"{created + timedelta(minutes=1):%Y-%m-%dT%H:%M:%SZ} worker started (sample data)\n"
                          f"{created + timedelta(minutes=3):%Y-%m-%dT%H:%M:%SZ} cancelled by {owner} at 45%\n"),
                ))  # fmt: skip
            if status is JobStatus.COMPLETED:
                name, content_type, text = TEXT_RESULTS.get(
                    job_type, ("sample-tone.wav", "audio/wav", "")
                )
                data = text.encode() if text else tone
                out = await _put_file(session, blobs, f"result:{jid}", users[owner], name,
                                      content_type, data, job.project_id)  # fmt: skip
                session.add(JobResult(
                    job_id=jid, result_url=f"voxmesh://files/{out.id}",
                    files=[{"file_id": str(out.id), "name": name, "content_type": content_type,
                            "size_bytes": len(data)}],
                    logs=(f"{created + timedelta(minutes=1):%Y-%m-%dT%H:%M:%SZ} worker started (sample data)\n"
                          f"{created + timedelta(minutes=3):%Y-%m-%dT%H:%M:%SZ} finished: sample data, no model ran\n"),
                    meta=META[job_type], finished_at=job.finished_at,
                ))  # fmt: skip

    for key, value in GLOBAL_SETTINGS.items():
        await session.execute(
            insert(Setting).values(id=uuid.uuid4(), key=key, value=value, user_id=None)
            .on_conflict_do_nothing(index_elements=[Setting.key], index_where=Setting.user_id.is_(None))
        )  # fmt: skip
    for owner, key, value in USER_SETTINGS:
        await session.execute(
            insert(Setting).values(id=uuid.uuid4(), key=key, value=value, user_id=users[owner])
            .on_conflict_do_nothing(index_elements=[Setting.user_id, Setting.key])
        )  # fmt: skip
    await session.flush()

    sample_users = list(users.values())
    return {
        "users": len(sample_users),
        "projects": len(list(await session.scalars(select(Project.id).where(Project.id.in_(project_ids))))),
        "jobs": len(list(await session.scalars(select(Job.id).where(Job.project_id.in_(project_ids))))),
        "results": len(list(await session.scalars(select(JobResult.job_id).join(Job).where(Job.project_id.in_(project_ids))))),
        "settings": len(list(await session.scalars(select(Setting.id).where(or_(Setting.user_id.in_(sample_users), Setting.key.in_(GLOBAL_SETTINGS) & Setting.user_id.is_(None)))))),
    }  # fmt: skip


def credentials_text() -> str:
    lines = ["Demo accounts (sample data only; never use these on a real deployment):"]
    lines += [f"  {u.username:<8} {u.password:<20} {u.role.value}" for u in USERS]
    return "\n".join(lines)
