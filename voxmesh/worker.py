"""The worker runtime every modality service runs; a service supplies only its handler.

    async def handle(ctx: JobContext) -> Outcome: ...
    await Worker("tts", handle, nats_url=...).run()

The runtime pulls from the modality's durable consumer (explicit ack), heartbeats with
`in_progress()` while the handler works, reports progress and logs as WorkerEvents, checks for
cancellation at the handler's checkpoints, stores outputs in the shared blob store, and reports
the result. A `JobFailed` is final (`term`); any other exception is retried with backoff
(`nak(delay)`) until the last delivery, which reports FAILED with the reason. A crash stops the
heartbeat, so JetStream redelivers the run to another worker after ack_wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import BadRequestError, KeyNotFoundError, NoStreamResponseError, NotFoundError

from voxmesh import mesh
from voxmesh.blobs import BlobRef, CorruptBlobError, NatsBlobStore
from voxmesh.observability import (
    WORKER_BUSY,
    WORKER_ERRORS,
    WORKER_JOBS,
    WORKER_SECONDS,
    job_context,
)
from voxmesh.speech import voice_profile
from voxmesh.speech.voice_profile import VoiceProfile
from voxmesh.v1 import jobs_pb2, worker_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=Message)
EMIT_PATIENCE_SECONDS = 30.0
"""How long a worker keeps trying to report an event while NATS has no stream leader."""
UNCONFIRMED_MAX = 64
"""Reports queued behind the one being sent at most (then the handler waits for them)."""
OUTCOMES = ("completed", "failed", "cancelled")
PROGRESS_INTERVAL = 0.25
LIVE_BYTES = 64 * 1024
"""Outputs this small in all go with the completion instead of to the store (StoredFile.data):
the control plane stores them as it records the result, side by side with its SQL, and hands
them to the job's live watchers, so a short job's end waits for no puts here and its waiting
caller for no download. Bigger ones are stored here, and the completion names them."""


class JobFailed(Exception):
    """The input can never succeed (corrupt file, unsupported language): fail without retry."""


class JobCancelled(Exception):
    """Raised by `JobContext.checkpoint()` once the job has been cancelled."""


@dataclass
class Output:
    """One file a handler produced."""

    name: str
    data: bytes
    content_type: str
    role: str = ""
    """What the file is to the job (voxmesh.roles), so others can find it by role."""


@dataclass
class Outcome:
    """What a handler returns: its files and per-type facts for the result meta."""

    files: list[Output] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    voice_profile: dict[str, Any] | None = None
    """A voice cloning job's profile to save as a project voice (save_as_voice)."""


class JobContext:
    """What a handler sees of its job: parameters, inputs, and ways to report."""

    def __init__(self, worker: Worker, msg: Msg, dispatch: worker_pb2.JobDispatch) -> None:
        self._worker = worker
        self._msg = msg
        self.dispatch = dispatch
        self.job_id = dispatch.job_id
        self.run = dispatch.attempt
        self.delivery = msg.metadata.num_delivered or 1
        which = dispatch.WhichOneof("params")
        self.params: Message = getattr(dispatch, which) if which else struct_pb2.Struct()
        """The job's typed params message (TtsParams, SttParams, ...), defaults filled in."""
        self.voice_profile: dict[str, Any] | None = (
            json_format.MessageToDict(dispatch.voice_profile)
            if dispatch.HasField("voice_profile")
            else None
        )
        """The profile of the project's saved voice the parameters name, if they name one."""
        self.max_audio_seconds: float | None = dispatch.max_audio_seconds or None
        """The longest audio this job may decode (its creator's max_audio_minutes): pass it to
        `voxmesh.audio.decode`. None if the control plane sent no limit."""
        self._cancel_checked = 0.0
        self._last_percent = -1
        self._last_report = 0.0
        self._input: asyncio.Task[bytes] | None = None
        self._sending: asyncio.Future[None] | None = None
        """The last report handed to the sender: each is sent once the one before it is in the
        stream, so they land in order while the handler goes on."""
        self._queued = 0

    def prefetch_input(self) -> None:
        """Start reading the input file now, while the run is checked and its start reported
        (the worker does this as a delivery arrives; `input_bytes` then waits for it)."""
        if self._input is None and self.dispatch.HasField("input_file"):
            self._input = asyncio.ensure_future(self.file_bytes(self.dispatch.input_file))

    def drop_prefetch(self) -> None:
        """The delivery is over: a read still under way stops; an unused one is let go."""
        if self._input is None:
            return
        if self._input.done():
            if not self._input.cancelled():
                self._input.exception()  # retrieved: never logged as unhandled
        else:
            self._input.cancel()
        self._input = None

    def saved_voice(self, name: str) -> VoiceProfile | None:
        """The project's saved (cloned) voice `name`, from the profile the dispatch carried;
        None for a stock voice; JobFailed if the project no longer has it."""
        carried = self.dispatch.voice_profiles.get(name.lower()) if name else None
        try:
            if carried is not None:
                return voice_profile.saved(name, json_format.MessageToDict(carried))
            return voice_profile.saved(name, self.voice_profile)
        except ValueError as e:
            raise JobFailed(str(e)) from None

    @staticmethod
    def in_saved_voice(speech: Any, rate: int, profile: VoiceProfile) -> Any:
        """Base-voice speech at `rate` in the saved voice (JobFailed if it cannot apply)."""
        try:
            return voice_profile.apply(speech, rate, profile)
        except ValueError as e:
            raise JobFailed(f"the saved voice cannot be applied: {e}") from None

    def params_as(self, kind: type[M]) -> M:
        """The params, as the message type this handler takes (JobFailed if they are not)."""
        if not isinstance(self.params, kind):
            raise JobFailed(
                f"this worker takes {kind.DESCRIPTOR.name}, not {self.params.DESCRIPTOR.name}"
            )
        return self.params

    async def progress(
        self,
        percent: float,
        stage: str,
        message: str = "",
        *,
        coalesce: bool = False,
        text: str = "",
        part: Output | None = None,
    ) -> None:
        """Report progress (0-100, never lower than before); also a cancellation checkpoint.
        With `coalesce`, reports closer than PROGRESS_INTERVAL to the previous one are skipped
        (for handlers that advance many times a second); the checkpoint still happens. `text` is
        what was produced since the last report (live captions); `part` a piece of the result
        made ahead of the end (stored now, announced with this report). A report carrying text
        or a part is never coalesced away."""
        value = max(self._last_percent, min(100, int(percent)))
        now = time.monotonic()
        keep = text or part is not None or value >= 100
        if not coalesce or keep or now - self._last_report >= PROGRESS_INTERVAL:
            self._last_percent, self._last_report = value, now
            extra: dict[str, Any] = {}
            if part is not None:
                blob = await self._worker.blobs.put(part.data)
                extra["part"] = worker_pb2.StoredFile(
                    sha256=blob.sha256, key=blob.key, size_bytes=len(part.data),
                    content_type=part.content_type, filename=part.name, role=part.role,
                )  # fmt: skip
            await self._worker.emit(
                self,
                progress=jobs_pb2.JobProgress(
                    percent=value, stage=stage, message=message, text=text
                ),
                **extra,
            )
        await self.checkpoint()

    async def log(self, line: str) -> None:
        await self._worker.emit(self, log=jobs_pb2.JobLogLine(line=line))

    async def checkpoint(self) -> None:
        """Raise JobCancelled if the job was cancelled (checked at most every 0.2 s)."""
        now = time.monotonic()
        if now - self._cancel_checked < 0.2:
            return
        self._cancel_checked = now
        if await self._worker.run_state(self.job_id, self.run) == mesh.CANCEL:
            raise JobCancelled()

    async def input_bytes(self) -> bytes:
        """The job's input file."""
        if not self.dispatch.HasField("input_file"):
            raise JobFailed("this job has no input file")
        self.prefetch_input()
        assert self._input is not None
        return await self._input

    async def file_bytes(self, stored: worker_pb2.StoredFile) -> bytes:
        try:
            return await self._worker.blobs.get(stored.sha256, stored.key)
        except FileNotFoundError:
            raise JobFailed(
                f"input file {stored.filename or stored.file_id} is missing from storage"
            ) from None
        except CorruptBlobError:
            raise JobFailed(
                f"input file {stored.filename or stored.file_id} is corrupted in storage (its "
                "bytes do not match its sha256); it was not used"
            ) from None

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound model code in a thread; the heartbeat goes on meanwhile."""
        return await asyncio.to_thread(fn, *args)

    async def run_shards(
        self, payloads: list[bytes], *, low: float, high: float, stage: str,
        params: Message | None = None,
    ) -> list[bytes]:  # fmt: skip
        """Have every worker of this type (this one included) process `payloads` at once;
        return their results in order. Progress goes from `low` to `high` as shards finish;
        cancellation is checked meanwhile; a shard that fails fails the job. Shards carry the
        job's params, or `params` (what the parent settled, e.g. a detected language)."""
        worker = self._worker
        keys = [f"{mesh.run_key(self.job_id, self.run)}.{i}" for i in range(len(payloads))]
        secret = mesh.shard_secret(self.dispatch.run_token)
        for index, (key, payload) in enumerate(zip(keys, payloads, strict=True)):
            if await worker.shard_result(key) is not None:
                continue  # done before this delivery (the parent was redelivered)
            blob = await worker.blobs.put(payload)
            task = worker_pb2.ShardTask(
                job_id=self.job_id, run=self.run, index=index, count=len(payloads),
                sha256=blob.sha256, key=blob.key, result_key=key, result_secret=secret,
            )  # fmt: skip
            which = self.dispatch.WhichOneof("params")
            if which:
                getattr(task, which).CopyFrom(params or self.params)
            await worker.js.publish(
                mesh.tasks_subject(worker.job_type), task.SerializeToString(),
                headers={"Nats-Msg-Id": key},
            )  # fmt: skip
        results: dict[int, bytes] = {}
        while len(results) < len(keys):
            for index, key in enumerate(keys):
                if index in results:
                    continue
                found = await worker.shard_result(key, secret)
                if found is None:
                    continue
                if found.error:
                    raise JobFailed(f"part {index + 1} of {len(keys)} failed: {found.error}")
                results[index] = found.data
                await self.log(f"part {index + 1} of {len(keys)} done by {found.worker_id}")
            done = len(results)
            await self.progress(
                low + (high - low) * done / len(keys), stage, f"{done} of {len(keys)} parts done"
            )
            if done < len(keys):
                await asyncio.sleep(0.1)
        return [results[i] for i in range(len(keys))]


Handler = Callable[[JobContext], Awaitable[Outcome]]


@dataclass
class ShardContext:
    """One shard of a large job, as a shard handler sees it."""

    job_id: str
    run: int
    index: int
    count: int
    params: Message
    """The job's typed params message."""
    data: bytes

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)


ShardHandler = Callable[[ShardContext], Awaitable[bytes]]


def retry_delay(delivery: int) -> float:
    """Backoff before redelivering after a transient failure: 1 s, 4 s, 16 s, ... (max 60 s)."""
    return float(min(60, 4 ** (delivery - 1)))


class Worker:
    def __init__(
        self,
        job_type: str,
        handler: Handler,
        *,
        nats_url: str,
        worker_id: str | None = None,
        shard_handler: ShardHandler | None = None,
        capabilities: dict[str, Any] | None = None,
    ) -> None:
        self.job_type = job_type
        self.capabilities = capabilities or {}
        """What this worker can run (e.g. {"engines": ["piper", "kokoro"]}), announced every
        mesh.PRESENCE_SECONDS so the control plane can say what is available now."""
        self.holding: set[str] = set()
        """The jobs this worker is running now (announced with its presence: the control plane
        fails a RUNNING job that no worker has held for ack_wait * max_deliver)."""
        self.handler = handler
        self.nats_url = nats_url
        self.worker_id = worker_id or f"{job_type}@{socket.gethostname()}:{os.getpid()}"
        self.shard_handler = shard_handler
        self.limits = mesh.ConsumerLimits(ack_wait_seconds=30.0, max_deliver=3)
        """The control plane's ack_wait and max_deliver, read from the consumer at start."""
        self._seq = 0
        self.ready = asyncio.Event()

    async def run_state(self, job_id: str, run: int) -> bytes | None:
        try:
            entry = await self.kv.get(mesh.run_key(job_id, run))
            return entry.value
        except KeyNotFoundError:
            return None

    async def shard_result(
        self, key: str, secret: bytes | None = None
    ) -> worker_pb2.ShardResult | None:
        """A shard's result if it is written (opened with the run's `secret`; without it, only
        whether it exists is known: the data stays sealed)."""
        try:
            entry = await self.shards.get(key)
        except KeyNotFoundError:
            return None
        if secret is None:
            return worker_pb2.ShardResult()
        try:
            return worker_pb2.ShardResult.FromString(
                mesh.open_shard_result(secret, key, entry.value or b"")
            )
        except ValueError as e:
            return worker_pb2.ShardResult(error=str(e))

    async def emit(self, ctx: JobContext, **event: Any) -> None:
        """Report an event of the run. Its start, progress and logs are sent in order behind
        the handler's back (it does not wait a round trip for each: about 8 ms before a short
        job's model starts); the outcome is sent once all of them are in the stream."""
        self._seq += 1
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(datetime.now(UTC))
        message = worker_pb2.WorkerEvent(
            job_id=ctx.job_id, attempt=ctx.run, worker_id=self.worker_id, time=stamp,
            local_seq=self._seq, delivery=ctx.delivery, run_token=ctx.dispatch.run_token, **event,
        )  # fmt: skip
        msg_id = f"{ctx.job_id}.{ctx.run}.{ctx.delivery}.{self.worker_id}.{self._seq}"
        subject, data = mesh.events_subject(ctx.job_id), message.SerializeToString()
        if any(name in event for name in OUTCOMES):
            await self.confirm(ctx)
            await self._publish(subject, data, msg_id)
            return
        before = ctx._sending

        async def send() -> None:
            try:
                if before is not None:
                    await before  # a report that failed fails the ones after it
                await self._publish(subject, data, msg_id)
            finally:
                ctx._queued -= 1

        ctx._queued += 1
        ctx._sending = asyncio.ensure_future(send())
        if ctx._queued > UNCONFIRMED_MAX:  # NATS is slow: wait rather than pile reports up
            await self.confirm(ctx)

    async def confirm(self, ctx: JobContext) -> None:
        """Wait until every report handed to the sender is in the stream (raising what stopped
        one: the delivery then ends unsettled and is redelivered)."""
        sending, ctx._sending = ctx._sending, None
        if sending is not None:
            await sending

    async def _publish(self, subject: str, data: bytes, msg_id: str) -> None:
        # While a NATS cluster fails over, the events stream may have no leader for a while:
        # keep trying (the message id makes a repeat harmless) rather than lose the delivery.
        deadline = time.monotonic() + EMIT_PATIENCE_SECONDS
        delay = 0.2
        while True:
            try:
                await self.js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
                return
            except (NoRespondersError, NoStreamResponseError, NatsTimeout) as e:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("cannot report to NATS yet (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _bind(self) -> None:
        """Bind to what the control plane provisioned, waiting for it if it has not yet."""
        self.limits = await mesh.consumer_limits(
            self.js, mesh.JOBS_STREAM, mesh.worker_consumer(self.job_type)
        )
        while True:
            try:
                self.kv = await self.js.key_value(mesh.CONTROL_BUCKET)
                self.shards = await self.js.key_value(mesh.SHARDS_BUCKET)
                self.blobs = await NatsBlobStore.open(self.js, mesh.FILES_BUCKET)
                return
            except (NotFoundError, BadRequestError):
                log.warning("the mesh's buckets do not exist yet: waiting for the control plane")
                await asyncio.sleep(2)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self.nc = await mesh.connect(self.nats_url, self.worker_id)
        self.js = self.nc.jetstream()
        try:
            await self._bind()
            loops = [self._pull(mesh.JOBS_STREAM, mesh.worker_consumer(self.job_type),
                                self._process, stop)]  # fmt: skip
            if self.shard_handler is not None:
                loops.append(self._pull(mesh.TASKS_STREAM, mesh.shard_consumer(self.job_type),
                                        self._process_shard, stop))  # fmt: skip
            log.info(
                "worker %s pulling %s jobs (ack_wait %gs, max_deliver %d, from the consumer)",
                self.worker_id, self.job_type, self.limits.ack_wait_seconds,
                self.limits.max_deliver,
            )  # fmt: skip
            self.ready.set()
            announcing = asyncio.create_task(self._announce(), name="presence")
            try:
                await asyncio.gather(*loops)
            finally:
                announcing.cancel()
                with contextlib.suppress(Exception):  # leaving: forget me now, not in 15 s
                    await self._presence({"leaving": True})
        finally:
            with contextlib.suppress(Exception):
                await self.nc.close()  # between jobs: nothing in flight to drain

    async def _presence(self, extra: dict[str, Any] | None = None) -> None:
        body = {"worker_id": self.worker_id, "capabilities": self.capabilities,
                "jobs": sorted(self.holding), **(extra or {})}  # fmt: skip
        await self.nc.publish(mesh.presence_subject(self.job_type), json.dumps(body).encode())

    async def _announce(self) -> None:
        """Every PRESENCE_SECONDS until cancelled, stopping or not: a worker that was told to
        stop still holds the jobs it is finishing, and says so until it leaves."""
        while True:
            try:
                await self._presence()
            except NatsError as e:  # reconnecting: the next announcement tells it again
                log.debug("presence not announced: %s", e)
            await asyncio.sleep(mesh.PRESENCE_SECONDS)

    async def _pull(
        self, stream: str, durable: str, process: Callable[[Msg], Awaitable[None]],
        stop: asyncio.Event,
    ) -> None:  # fmt: skip
        """Pull one message at a time from a durable consumer and process it, until `stop`.

        A NATS outage never ends the loop: fetches fail while the client reconnects (forever,
        see `mesh.connect`) and resume after; a message whose processing failed for it is
        redelivered once its ack_wait passes."""
        sub = await self.js.pull_subscribe_bind(durable=durable, stream=stream)
        outage = 0
        while not stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=1)
            except (NatsTimeout, TimeoutError):
                outage = 0
                continue
            except NatsError as e:
                outage += 1
                if outage == 1:
                    log.warning("cannot pull %s jobs (%s); retrying until NATS is back",
                                durable, e.__class__.__name__)  # fmt: skip
                await asyncio.sleep(min(5.0, 0.2 * outage))
                continue
            outage = 0
            for msg in msgs:
                try:
                    await process(msg)
                except NatsError as e:  # the outcome could not be sent: it is redelivered
                    log.warning("lost NATS while finishing a message of %s (%s); it will be "
                                "redelivered", durable, e)  # fmt: skip

    async def _process_shard(self, msg: Msg) -> None:
        assert self.shard_handler is not None
        task = worker_pb2.ShardTask.FromString(msg.data)
        if await self.run_state(task.job_id, task.run) is not None:
            await msg.ack()  # the job was cancelled or has finished
            return
        if await self.shard_result(task.result_key) is not None:
            await msg.ack()
            return
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        delivery = msg.metadata.num_delivered or 1
        result = worker_pb2.ShardResult(worker_id=self.worker_id)
        which = task.WhichOneof("params")
        try:
            data = await self.blobs.get(task.sha256, task.key)
            shard = ShardContext(
                task.job_id, task.run, task.index, task.count,
                getattr(task, which) if which else struct_pb2.Struct(), data,
            )  # fmt: skip
            result.data = await self.shard_handler(shard)
        except JobFailed as e:
            result.error = str(e)
        except Exception as e:
            log.exception("shard %s failed (delivery %s)", task.result_key, delivery)
            if delivery < self.limits.max_deliver:
                heartbeat.cancel()
                await msg.nak(delay=retry_delay(delivery))
                return
            result.error = f"failed {delivery} times; last error: {type(e).__name__}: {e}"
        finally:
            heartbeat.cancel()
        await self.shards.put(
            task.result_key,
            mesh.seal_shard_result(task.result_secret, task.result_key, result.SerializeToString()),
        )
        await msg.ack()

    async def _heartbeat(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.limits.heartbeat_seconds)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _process(self, msg: Msg) -> None:
        try:
            dispatch = worker_pb2.JobDispatch.FromString(msg.data)
        except Exception:
            log.error("unreadable dispatch on %s; terminating it", msg.subject)
            await msg.term()
            return
        ctx = JobContext(self, msg, dispatch)
        ctx.prefetch_input()  # side by side with the checks below and the start report
        try:
            if await self.run_state(ctx.job_id, ctx.run) is not None:
                await msg.ack()  # cancelled or finished while it waited
                return
            ctx._cancel_checked = time.monotonic()  # just asked: the first checkpoint need not
            await self._process_run(ctx, msg, dispatch)
        finally:
            ctx.drop_prefetch()

    async def _process_run(
        self, ctx: JobContext, msg: Msg, dispatch: worker_pb2.JobDispatch
    ) -> None:
        with job_context(ctx.job_id, dispatch.traceparent):
            started = time.monotonic()
            WORKER_BUSY.labels(self.job_type).set(1)
            self.holding.add(ctx.job_id)
            try:
                outcome = await self._run_handler(ctx, msg)
            finally:
                self.holding.discard(ctx.job_id)
                WORKER_BUSY.labels(self.job_type).set(0)
            WORKER_JOBS.labels(self.job_type, outcome).inc()
            WORKER_SECONDS.labels(self.job_type, outcome).observe(time.monotonic() - started)
            log.info("delivery %s of run %s: %s", ctx.delivery, ctx.run, outcome)

    async def _run_handler(self, ctx: JobContext, msg: Msg) -> str:
        """Run the handler for one delivery and settle the message; return the outcome."""
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            await self.emit(ctx, started=worker_pb2.WorkerStarted())
            outcome = await self.handler(ctx)
            # Small outputs go with the completion; others to the store, side by side (a
            # transcript is four files).
            carried = sum(len(o.data) for o in outcome.files) <= LIVE_BYTES
            blobs = [BlobRef(hashlib.sha256(o.data).hexdigest(), b"") for o in outcome.files]
            if not carried:
                blobs = await asyncio.gather(*(self.blobs.put(o.data) for o in outcome.files))
            stored = []
            for output, blob in zip(outcome.files, blobs, strict=True):
                stored.append(worker_pb2.StoredFile(
                    sha256=blob.sha256, key=blob.key, size_bytes=len(output.data),
                    content_type=output.content_type, filename=output.name, role=output.role,
                    data=output.data if carried else b"",
                ))  # fmt: skip
            meta = struct_pb2.Struct()
            meta.update(outcome.meta)
            completed = worker_pb2.WorkerCompleted(files=stored, meta=meta)
            if outcome.voice_profile is not None:
                completed.voice_profile.update(outcome.voice_profile)
            await self.emit(ctx, completed=completed)
            await msg.ack()
            return "completed"
        except JobCancelled:
            await self.emit(ctx, cancelled=worker_pb2.WorkerCancelled())
            await msg.ack()
            return "cancelled"
        except JobFailed as e:
            WORKER_ERRORS.labels(self.job_type, "job_failed").inc()
            log.warning("job failed: %s", e)
            await self.emit(ctx, failed=worker_pb2.WorkerFailed(
                reason=str(e) or "the job failed", category="input"))  # fmt: skip
            await msg.term()
            return "failed"
        except Exception as e:
            WORKER_ERRORS.labels(self.job_type, type(e).__name__).inc()
            reason = f"{type(e).__name__}: {e}"
            log.exception("job %s run %s delivery %s failed", ctx.job_id, ctx.run, ctx.delivery)
            if ctx.delivery >= self.limits.max_deliver:
                await self.emit(ctx, failed=worker_pb2.WorkerFailed(
                    reason=f"failed {ctx.delivery} times; last error: {reason}",
                    category="error"))  # fmt: skip
                await msg.term()
                return "failed"
            delay = retry_delay(ctx.delivery)
            await self.emit(ctx, log=jobs_pb2.JobLogLine(
                line=f"delivery {ctx.delivery} failed ({reason}); retrying in {delay:g}s"))  # fmt: skip
            await self.confirm(ctx)  # this delivery's reports land before the next one's
            await msg.nak(delay=delay)
            return "retried"
        finally:
            heartbeat.cancel()
