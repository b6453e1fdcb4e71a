"""Which workers are connected now, and what they can run: every replica listens to the
workers' announcements (mesh.presence_subject, every mesh.PRESENCE_SECONDS) and forgets a worker
silent for 3 intervals, or at once when it says it is leaving. ListVoices reads it to say
which voices a connected worker can speak.

The subject names the worker's type and NATS permissions let a worker publish only on its own
type's subject, so a worker cannot claim to be another type; what it says it can run is its
own word (a TTS worker that claims an engine it lacks fails those jobs with a reason)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from voxmesh import mesh
from voxmesh.speech.languages import SHIPPED_STT, SttModel

log = logging.getLogger(__name__)
FORGET_AFTER = 3 * mesh.PRESENCE_SECONDS
HELD_MEMORY_SECONDS = 3600.0
"""How long a replica remembers that a job was held (the reaper asks for longer if its grace is)."""


@dataclass
class Seen:
    job_type: str
    capabilities: dict[str, Any]
    jobs: frozenset[str] = frozenset()
    at: float = field(default_factory=time.monotonic)


class Presence:
    def __init__(self) -> None:
        self._workers: dict[str, Seen] = {}
        self._last_held: dict[str, float] = {}
        """Per job: when a worker last said it holds it (monotonic), for _held_memory seconds."""
        self._held_memory = HELD_MEMORY_SECONDS
        self._pruned_at = time.monotonic()
        self.listening_since: float | None = None
        """When this replica began hearing announcements (before FORGET_AFTER has passed
        since, it cannot know that a worker is absent)."""

    async def start(self, nc: NATS) -> None:
        await nc.subscribe(mesh.presence_subject("*"), cb=self._on_announce)
        self.listening_since = time.monotonic()

    def lost(self) -> None:
        """This replica's NATS connection dropped: it hears nobody until it is back."""
        self.listening_since = None

    def regained(self) -> None:
        """Back on NATS: absence is known again only after a full FORGET_AFTER of listening."""
        self.listening_since = time.monotonic()

    def knows_absence(self) -> bool:
        """Whether a worker that held a job would have been heard from by now."""
        return (
            self.listening_since is not None
            and time.monotonic() - self.listening_since > FORGET_AFTER
        )

    async def _on_announce(self, msg: Msg) -> None:
        job_type = msg.subject.rsplit(".", 1)[-1]
        try:
            body = json.loads(msg.data)
            worker_id = str(body["worker_id"])[:200]
            capabilities = body.get("capabilities") or {}
            jobs = frozenset(str(j) for j in body.get("jobs") or ())
            if not isinstance(capabilities, dict):
                raise ValueError("capabilities is not an object")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignored a malformed %s presence announcement: %s", job_type, e)
            return
        key = f"{job_type}/{worker_id}"
        now = time.monotonic()
        for job in jobs:
            self._last_held[job] = now
        if now - self._pruned_at > FORGET_AFTER:  # bounded: what no longer tells anything goes
            self._pruned_at = now
            for job in [j for j, at in self._last_held.items() if now - at > self._held_memory]:
                del self._last_held[job]
        if body.get("leaving"):
            self._workers.pop(key, None)
        else:
            self._workers[key] = Seen(job_type, capabilities, jobs)

    def workers(self, job_type: str | None = None) -> list[Seen]:
        """The workers heard from lately (of `job_type`)."""
        now = time.monotonic()
        for key in [k for k, seen in self._workers.items() if now - seen.at > FORGET_AFTER]:
            del self._workers[key]
        return [s for s in self._workers.values() if job_type in (None, s.job_type)]

    def engines(self, job_type: str = "tts") -> set[str]:
        """The speech engines a connected worker of `job_type` says it can run."""
        return {
            str(engine)
            for seen in self.workers(job_type)
            for engine in seen.capabilities.get("engines", ())
        }

    def announced_stt_models(self) -> tuple[SttModel, ...]:
        """The STT models connected workers announce, in their order of preference."""
        found: dict[str, SttModel] = {}
        for seen in self.workers("stt"):
            for capability in seen.capabilities.get("models") or ():
                model = SttModel.from_capability(capability)
                if model is not None:
                    found.setdefault(model.name, model)
        return tuple(found.values())

    def stt_models(self) -> tuple[SttModel, ...]:
        """What STT jobs are validated against: the announced models, or the shipped set while
        none is announced (a job may then wait for a worker)."""
        return self.announced_stt_models() or SHIPPED_STT

    def held_jobs(self) -> set[str]:
        """The job ids connected workers say they are running now."""
        return {job for seen in self.workers() for job in seen.jobs}

    def unheld_for(self, job_id: str) -> float:
        """Seconds since a worker last said it holds the job, as far as this replica can tell:
        at most since it began listening (0 while it is not)."""
        if self.listening_since is None:
            return 0.0
        since = max(self._last_held.get(job_id, 0.0), self.listening_since)
        return time.monotonic() - since

    def remember_held_for(self, seconds: float) -> None:
        """Keep when jobs were last held for at least this long (the reaper's grace)."""
        self._held_memory = max(self._held_memory, seconds)
