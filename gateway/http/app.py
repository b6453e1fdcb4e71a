"""The routes of Voxmesh's HTTP API (FastAPI). Every endpoint is documented in the README.

OpenAI audio API: POST /v1/audio/transcriptions, /v1/audio/translations, /v1/audio/speech;
GET /v1/models, /v1/audio/voices. Jobs over HTTP: any POST with `?async=true` (or
`Prefer: respond-async`) answers 202 with the job; GET /v1/jobs/{id}, /v1/jobs/{id}/files/{name};
POST /v1/dubbing (ElevenLabs' shape: GET /v1/dubbing/{id}, /v1/dubbing/{id}/audio/{language}),
POST /v1/voices/clone, POST /v1/stories.
"""
# No `from __future__ import annotations` here: FastAPI reads the route signatures at run time.

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel, Field

from gateway.http import compat
from gateway.http.control import Control, Finished, status_name
from gateway.http.errors import ApiError, bad_field, from_grpc
from voxmesh import audio
from voxmesh.v1 import jobs_pb2, webhooks_pb2

BEARER = "bearer "


def create_app(control_target: str) -> FastAPI:
    channel: grpc.aio.Channel | None = None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal channel
        channel = grpc.aio.insecure_channel(control_target)
        yield
        await channel.close(None)

    app = FastAPI(
        title="Voxmesh HTTP API",
        version="1",
        lifespan=lifespan,
        docs_url="/v1/docs",
        openapi_url="/v1/openapi.json",
        redoc_url=None,
    )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _grpc_error(_: Request, e: grpc.aio.AioRpcError) -> JSONResponse:
        return from_grpc(e).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "header")]
        param = ".".join(where) or None
        message = f"{param}: {first.get('msg', 'invalid')}" if param else str(first.get("msg"))
        return bad_field(param or "", message).response()

    def caller(authorization: str | None) -> Control:
        if not authorization or not authorization.lower().startswith(BEARER):
            raise ApiError(
                401,
                "You didn't provide an API key. Send 'Authorization: Bearer <key>' "
                "(make one with `voxctl keys create` or in the console).",
                code="invalid_api_key",
            )
        assert channel is not None
        return Control(channel, authorization[len(BEARER) :].strip())

    def wants_async(async_: bool, prefer: str | None) -> bool:
        return async_ or "respond-async" in (prefer or "").lower()

    Auth = Annotated[str | None, Header(alias="authorization")]
    Prefer = Annotated[str | None, Header()]
    Async = Annotated[bool, Query(alias="async")]
    ProjectHeader = Annotated[str | None, Header(alias="voxmesh-project")]

    # --- health (for probes; not routed by Envoy) -----------------------------------------
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        """200 while the control plane answers SERVING, else 503 (Kubernetes and Compose probe
        this; the API is no use without the control plane)."""
        assert channel is not None
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = False
        status = "SERVING" if serving else "NOT_SERVING"
        return JSONResponse({"control_plane": status}, status_code=200 if serving else 503)

    # --- models and voices ----------------------------------------------------------------
    @app.get("/v1/models")
    async def models(authorization: Auth = None) -> dict[str, Any]:
        await caller(authorization).check()  # the key must be valid, as OpenAI's is
        names = [*sorted(compat.STT_MODELS), *compat.TTS_MODELS]
        return {"object": "list", "data": [_model(n) for n in names]}

    @app.get("/v1/models/{model}")
    async def model(model: str, authorization: Auth = None) -> dict[str, Any]:
        await caller(authorization).check()
        if model not in compat.STT_MODELS and model not in compat.TTS_MODELS:
            raise _unknown_model(model)
        return _model(model)

    @app.get("/v1/audio/voices")
    async def voices(authorization: Auth = None) -> dict[str, Any]:
        listed = await caller(authorization).voices()
        aliases: dict[str, list[str]] = {}
        for alias, voice in compat.OPENAI_VOICES.items():
            aliases.setdefault(voice, []).append(alias)
        return {
            "object": "list",
            "voices": [
                {
                    "id": v.id,
                    "name": v.id,
                    "engine": v.engine,
                    "language": v.language,
                    "gender": v.gender,
                    "description": v.description,
                    "available": not v.requirements,
                    "requirements": v.requirements,
                    "openai_names": aliases.get(v.id, []),
                    "project_id": v.project_id,
                }
                for v in listed
            ],
            "openai_voices": compat.OPENAI_VOICES,
        }

    # --- speech to text -------------------------------------------------------------------
    async def _stt(
        task: jobs_pb2.SttTask,
        file: UploadFile,
        model: str,
        language: str,
        prompt: str,
        response_format: str,
        temperature: float,
        granularities: list[str],
        stream: bool,
        authorization: str | None,
        async_: bool,
        prefer: str | None,
        project: str | None,
        num_speakers: int = 0,
    ) -> Any:
        c = caller(authorization)
        if model not in compat.STT_MODELS:
            raise _unknown_model(model)
        if response_format not in compat.TRANSCRIPTION_FORMATS:
            raise bad_field(
                "response_format",
                f"response_format must be one of {', '.join(compat.TRANSCRIPTION_FORMATS)}",
            )
        if not 0.0 <= temperature <= 1.0:
            raise bad_field("temperature", "temperature must be between 0 and 1")
        unknown = set(granularities) - {"word", "segment"}
        if unknown:
            raise bad_field(
                "timestamp_granularities[]", "timestamp_granularities takes word and/or segment"
            )
        if response_format == "diarized_json" and task == jobs_pb2.STT_TASK_TRANSLATE:
            raise bad_field("response_format", "diarized_json is for transcriptions")
        if num_speakers and response_format != "diarized_json":
            raise bad_field("num_speakers", "num_speakers needs response_format=diarized_json")
        if granularities and response_format != "verbose_json":
            raise bad_field(
                "timestamp_granularities[]",
                "timestamp_granularities needs response_format=verbose_json",
            )
        limit = int(await c.setting("max_file_size_mb") or 0)
        data = await file.read()
        if limit and len(data) > limit * 1024 * 1024:
            raise ApiError(
                413, f"the file is {len(data) / 1048576:.1f} MB; the limit is {limit} MB "
                "(max_file_size_mb)", param="file", code="file_too_large",
            )  # fmt: skip
        background = wants_async(async_, prefer)
        # The concurrency check goes alongside the upload, not before it: one call less on a
        # short job's way (8-10 ms). A refused request's file is then stored unused, as one
        # refused by CreateJob is.
        busy = None if background else asyncio.ensure_future(c.refuse_if_busy())
        try:
            project_id = await c.project(project)
            file_id = await c.upload(
                file.filename or "audio", file.content_type or "application/octet-stream", data
            )
            if busy is not None:
                await busy
        finally:
            if busy is not None and not busy.done():
                busy.cancel()
            elif busy is not None and not busy.cancelled():
                busy.exception()  # retrieved: when the upload failed first, its error is told
        params = jobs_pb2.SttParams(
            language=language, task=task, initial_prompt=prompt,
            word_timestamps="word" in granularities, model=compat.stt_model(model),
            diarize=response_format == "diarized_json", num_speakers=num_speakers,
            temperature=temperature,
        )  # fmt: skip
        title = f"{'translation' if task == jobs_pb2.STT_TASK_TRANSLATE else 'transcription'} of "
        job = await c.create(
            jobs_pb2.CreateJobRequest(
                project_id=project_id, title=(title + (file.filename or "audio"))[:200],
                input_file_id=file_id, stt=params,
            )
        )  # fmt: skip
        if background:
            return _accepted(job)
        headers = {"voxmesh-job-id": job.id}
        if stream:
            return StreamingResponse(
                _transcript_events(c, job), media_type="text/event-stream", headers=headers
            )
        done = _succeeded(await c.wait(job))
        if response_format in ("srt", "vtt"):
            data = await c.content(done.file(name=f"transcript.{response_format}"))
            media = "text/vtt" if response_format == "vtt" else "text/plain"
            return Response(data, media_type=f"{media}; charset=utf-8", headers=headers)
        document = compat.parse_transcript(await c.content(done.file(name="transcript.json")))
        body, media = compat.transcription(
            document, response_format,
            task="translate" if task == jobs_pb2.STT_TASK_TRANSLATE else "transcribe",
            words="word" in granularities,
            segments="segment" in granularities or not granularities,
        )  # fmt: skip
        if isinstance(body, str):
            return Response(body, media_type=media, headers=headers)
        return JSONResponse(body, headers=headers)

    async def _transcript_events(c: Control, job: jobs_pb2.Job) -> AsyncIterator[bytes]:
        """OpenAI's transcription stream: a delta per segment as the worker decodes it, then
        the whole text (an `error` event if the job fails)."""
        parts: list[str] = []
        try:
            async for event in c.events(job.id):
                which = event.WhichOneof("event")
                if which == "progress" and event.progress.text.strip():
                    parts.append(event.progress.text)
                    yield _sse({"type": "transcript.text.delta", "delta": event.progress.text})
            done = await c.wait(job)
            _succeeded(done)
            document = compat.parse_transcript(await c.content(done.file(name="transcript.json")))
            text = compat.full_text(document)
            if not parts and text:  # a sharded job reports no live text: all at once
                yield _sse({"type": "transcript.text.delta", "delta": text})
            yield _sse({"type": "transcript.text.done", "text": text})
        except ApiError as e:
            yield _sse({"type": "error", "error": e.body()})
        except grpc.aio.AioRpcError as e:
            yield _sse({"type": "error", "error": from_grpc(e).body()})

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        language: Annotated[str, Form()] = "",
        prompt: Annotated[str, Form()] = "",
        response_format: Annotated[str, Form()] = "json",
        temperature: Annotated[float, Form()] = 0.0,
        timestamp_granularities: Annotated[
            list[str] | None, Form(alias="timestamp_granularities[]")
        ] = None,
        stream: Annotated[bool, Form()] = False,
        project: Annotated[str | None, Form()] = None,
        num_speakers: Annotated[int, Form()] = 0,
        authorization: Auth = None,
        async_: Async = False,
        prefer: Prefer = None,
        voxmesh_project: ProjectHeader = None,
    ) -> Any:
        return await _stt(
            jobs_pb2.STT_TASK_TRANSCRIBE, file, model, language, prompt, response_format,
            temperature, timestamp_granularities or [], stream, authorization, async_, prefer,
            project or voxmesh_project, num_speakers,
        )  # fmt: skip

    @app.post("/v1/audio/translations")
    async def translations(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        prompt: Annotated[str, Form()] = "",
        response_format: Annotated[str, Form()] = "json",
        temperature: Annotated[float, Form()] = 0.0,
        project: Annotated[str | None, Form()] = None,
        authorization: Auth = None,
        async_: Async = False,
        prefer: Prefer = None,
        voxmesh_project: ProjectHeader = None,
    ) -> Any:
        return await _stt(
            jobs_pb2.STT_TASK_TRANSLATE, file, model, "", prompt, response_format, temperature,
            [], False, authorization, async_, prefer, project or voxmesh_project,
        )  # fmt: skip

    # --- text to speech -------------------------------------------------------------------
    class SpeechRequest(BaseModel):
        model: str
        input: str
        voice: str
        response_format: str = "mp3"
        speed: float = 1.0
        instructions: str = ""
        stream_format: str = "audio"
        project: str | None = None

    @app.post("/v1/audio/speech")
    async def speech(
        body: SpeechRequest,
        authorization: Auth = None,
        async_: Async = False,
        prefer: Prefer = None,
        voxmesh_project: ProjectHeader = None,
    ) -> Any:
        c = caller(authorization)
        if body.model not in compat.TTS_MODELS:
            raise _unknown_model(body.model)
        if body.response_format not in compat.SPEECH_FORMATS:
            raise bad_field(
                "response_format",
                f"response_format must be one of {', '.join(compat.SPEECH_FORMATS)}",
            )
        if body.stream_format not in ("audio", "sse"):
            raise bad_field("stream_format", "stream_format must be audio or sse")
        if not 0.5 <= body.speed <= 2.0:
            raise bad_field("speed", "Voxmesh speaks at speed 0.5 to 2.0")
        if not body.input.strip():
            raise bad_field("input", "input is empty: give the text to speak")
        voice = compat.OPENAI_VOICES.get(body.voice.lower(), body.voice)
        engine = compat.TTS_MODELS[body.model]
        job_format, media = compat.SPEECH_FORMATS[body.response_format]
        background = wants_async(async_, prefer)
        if not background:
            await c.refuse_if_busy()
        project_id = await c.project(body.project or voxmesh_project)
        job = await c.create(
            jobs_pb2.CreateJobRequest(
                project_id=project_id, title=f"speech: {body.input[:60]}",
                tts=jobs_pb2.TtsParams(
                    text=body.input, voice=voice, engine=engine, format=job_format,
                    speed=body.speed, stream=not background,
                ),
            )
        )  # fmt: skip
        if background:
            return _accepted(job)
        headers = {"voxmesh-job-id": job.id}
        chunks = _spoken(c, job, body.response_format)
        # Until the first sentence is spoken a failure is still an HTTP status; after it, the
        # status line has gone: the audio stream is cut (an SSE stream gets an error event).
        first = await anext(chunks, b"")
        if body.stream_format == "sse":
            return StreamingResponse(
                _speech_events(_then(first, chunks)), media_type="text/event-stream",
                headers=headers,
            )  # fmt: skip
        return StreamingResponse(_then(first, chunks), media_type=media, headers=headers)

    async def _spoken(c: Control, job: jobs_pb2.Job, response_format: str) -> AsyncIterator[bytes]:
        """The job's speech in `response_format`, sentence by sentence as the worker announces
        each part (TtsParams.stream), encoded as it comes; the whole file at the end if no part
        was announced (a worker that does not stream)."""
        encoder = compat.StreamEncoder(response_format)
        seen: set[str] = set()
        result = None
        async for event in c.events(job.id):
            which = event.WhichOneof("event")
            if which == "result":
                result = event.result
            if which != "progress" or not event.progress.part.file_id:
                continue
            part = event.progress.part
            if part.name in seen:  # announced again by a redelivered run
                continue
            seen.add(part.name)
            data = await asyncio.to_thread(_encoded, encoder, await c.download(part.file_id))
            if data:
                yield data
        job, _ = await c.get(job.id)
        done = _succeeded(Finished(job, job.status, result))
        if not seen:
            whole = await c.content(done.file(role="audio"))
            yield await asyncio.to_thread(_encoded, encoder, whole)
        yield encoder.close()

    # --- jobs over HTTP -------------------------------------------------------------------
    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, authorization: Auth = None) -> dict[str, Any]:
        c = caller(authorization)
        job, result = await c.get(job_id)
        return _job_json(job, result)

    @app.get("/v1/jobs/{job_id}/files/{name}")
    async def get_job_file(job_id: str, name: str, authorization: Auth = None) -> Any:
        c = caller(authorization)
        job, result = await c.get(job_id)
        if result is None:
            raise ApiError(409, f"job {job_id} is {status_name(job.status)}; it has no files yet",
                           code="job_not_finished")  # fmt: skip
        file = next((f for f in result.files if f.name == name), None)
        if file is None:
            names = ", ".join(f.name for f in result.files) or "none"
            raise ApiError(404, f"job {job_id} has no file {name!r}; it has: {names}",
                           param="name", code="not_found")  # fmt: skip
        return StreamingResponse(
            c.stream_file(file.file_id), media_type=file.content_type or "application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{file.name}"'},
        )  # fmt: skip

    @app.get("/v1/jobs/{job_id}/webhooks")
    async def job_webhooks(job_id: str, authorization: Auth = None) -> dict[str, Any]:
        c = caller(authorization)
        from voxmesh.v1 import webhooks_pb2_grpc

        assert channel is not None
        listed = await webhooks_pb2_grpc.WebhookServiceStub(channel).ListWebhookDeliveries(
            webhooks_pb2.ListWebhookDeliveriesRequest(job_id=job_id), metadata=c.metadata,
            timeout=30,
        )  # fmt: skip
        return {
            "object": "list",
            "data": [
                json_format.MessageToDict(d, preserving_proto_field_name=True)
                for d in listed.deliveries
            ],
        }

    @app.post("/v1/dubbing", status_code=202)
    async def dubbing(
        file: Annotated[UploadFile, File()],
        target_lang: Annotated[str, Form()],
        source_lang: Annotated[str, Form()] = "",
        name: Annotated[str, Form()] = "",
        voice: Annotated[str, Form()] = "",
        project: Annotated[str | None, Form()] = None,
        authorization: Auth = None,
        voxmesh_project: ProjectHeader = None,
    ) -> dict[str, Any]:
        """ElevenLabs' dubbing shape: create, then poll GET /v1/dubbing/{id} and fetch
        /v1/dubbing/{id}/audio/{target_lang}. Always asynchronous."""
        c = caller(authorization)
        project_id = await c.project(project or voxmesh_project)
        file_id = await _upload(c, file, "media")
        job = await c.create(
            jobs_pb2.CreateJobRequest(
                project_id=project_id, title=(name or f"dub of {file.filename}")[:200],
                input_file_id=file_id,
                dubbing=jobs_pb2.DubbingParams(
                    target_language=target_lang, source_language=source_lang, voice=voice
                ),
            )
        )  # fmt: skip
        return {"dubbing_id": job.id, "expected_duration_sec": 0, **_accepted_body(job)}

    @app.get("/v1/dubbing/{dubbing_id}")
    async def get_dubbing(dubbing_id: str, authorization: Auth = None) -> dict[str, Any]:
        job, result = await caller(authorization).get(dubbing_id)
        _require_type(job, jobs_pb2.JOB_TYPE_DUBBING, "dubbing")
        target = job.dubbing.target_language
        state = {
            jobs_pb2.JOB_STATUS_COMPLETED: "dubbed", jobs_pb2.JOB_STATUS_FAILED: "failed",
            jobs_pb2.JOB_STATUS_CANCELLED: "cancelled",
        }.get(job.status, "dubbing")  # fmt: skip
        return {
            "dubbing_id": job.id,
            "name": job.title,
            "status": state,
            "target_languages": [target] if target else [],
            "error": job.error or None,
            "progress": job.progress,
            "job": _job_json(job, result),
        }

    @app.get("/v1/dubbing/{dubbing_id}/audio/{language_code}")
    async def get_dubbed_audio(
        dubbing_id: str, language_code: str, authorization: Auth = None
    ) -> Any:
        c = caller(authorization)
        job, result = await c.get(dubbing_id)
        _require_type(job, jobs_pb2.JOB_TYPE_DUBBING, "dubbing")
        if result is None or job.status != jobs_pb2.JOB_STATUS_COMPLETED:
            raise ApiError(409, f"dubbing {dubbing_id} is {status_name(job.status)}, not dubbed",
                           code="dubbing_not_ready")  # fmt: skip
        meta = json_format.MessageToDict(result.meta)
        target = str(meta.get("target_language", ""))
        if target and language_code.split("-")[0].lower() != target.split("-")[0].lower():
            raise ApiError(404, f"dubbing {dubbing_id} has no {language_code!r} audio; it was "
                           f"dubbed into {target!r}", param="language_code", code="not_found")  # fmt: skip
        audio = Finished(job, job.status, result).file(role="audio")
        return StreamingResponse(c.stream_file(audio.file_id), media_type=audio.content_type)

    class StoryRequest(BaseModel):
        prompt: str
        genre: str = ""
        audience: str = ""
        target_words: int = Field(default=0, ge=0)
        language: str = ""
        voice: str = ""
        project: str | None = None

    @app.post("/v1/stories", status_code=202)
    async def stories(
        body: StoryRequest, authorization: Auth = None, voxmesh_project: ProjectHeader = None
    ) -> dict[str, Any]:
        c = caller(authorization)
        project_id = await c.project(body.project or voxmesh_project)
        voice = compat.OPENAI_VOICES.get(body.voice.lower(), body.voice)
        job = await c.create(
            jobs_pb2.CreateJobRequest(
                project_id=project_id, title=f"story: {body.prompt[:60]}",
                ai_stories=jobs_pb2.AiStoriesParams(
                    prompt=body.prompt, genre=body.genre, audience=body.audience,
                    target_words=body.target_words, language=body.language, voice=voice,
                ),
            )
        )  # fmt: skip
        return _accepted_body(job)

    @app.post("/v1/voices/clone", status_code=202)
    async def clone(
        file: Annotated[UploadFile, File()],
        text: Annotated[str, Form()],
        name: Annotated[str, Form()] = "",
        project: Annotated[str | None, Form()] = None,
        authorization: Auth = None,
        voxmesh_project: ProjectHeader = None,
    ) -> dict[str, Any]:
        """Speak `text` in the voice of the recording in `file`; with `name`, the voice is saved
        in the project for later TTS jobs."""
        c = caller(authorization)
        project_id = await c.project(project or voxmesh_project)
        file_id = await _upload(c, file, "reference")
        job = await c.create(
            jobs_pb2.CreateJobRequest(
                project_id=project_id, title=f"cloned voice: {text[:60]}", input_file_id=file_id,
                voice_cloning=jobs_pb2.VoiceCloningParams(text=text, save_as_voice=name),
            )
        )  # fmt: skip
        return _accepted_body(job)

    return app


# --- helpers ----------------------------------------------------------------------------------
def _model(name: str) -> dict[str, Any]:
    kind = "speech-to-text" if name in compat.STT_MODELS else "text-to-speech"
    return {"id": name, "object": "model", "created": 0, "owned_by": "voxmesh", "kind": kind}


def _unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model {model!r} does not exist here; GET /v1/models lists the models Voxmesh serves",
        param="model",
        code="model_not_found",
    )


def _succeeded(done: Finished) -> Finished:
    if done.job.status == jobs_pb2.JOB_STATUS_COMPLETED:
        return done
    if done.job.status == jobs_pb2.JOB_STATUS_CANCELLED:
        raise ApiError(409, f"job {done.job.id} was cancelled", code="job_cancelled")
    raise ApiError(
        400, f"job {done.job.id} failed: {done.job.error or 'no reason given'}",
        code="job_failed",
    )  # fmt: skip


def _accepted_body(job: jobs_pb2.Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "job",
        "type": _type_name(job.type),
        "status": status_name(job.status),
        "status_url": f"/v1/jobs/{job.id}",
    }


def _accepted(job: jobs_pb2.Job) -> JSONResponse:
    return JSONResponse(
        _accepted_body(job), status_code=202, headers={"location": f"/v1/jobs/{job.id}"}
    )


def _type_name(value: int) -> str:
    return jobs_pb2.JobType.Name(value).removeprefix("JOB_TYPE_").lower()


def _require_type(job: jobs_pb2.Job, job_type: int, what: str) -> None:
    if job.type != job_type:
        raise ApiError(404, f"job {job.id} is not a {what} job", code="not_found")


def _job_json(job: jobs_pb2.Job, result: jobs_pb2.JobResult | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.id,
        "object": "job",
        "type": _type_name(job.type),
        "status": status_name(job.status),
        "progress": job.progress,
        "title": job.title,
        "project_id": job.project_id,
        "error": job.error or None,
        "created_at": job.create_time.seconds or None,
        "finished_at": job.finish_time.seconds or None,
        "files": [],
        "meta": {},
    }
    if result is not None:
        body["files"] = [
            {
                "name": f.name,
                "content_type": f.content_type,
                "size_bytes": f.size_bytes,
                "role": f.role,
                "url": f"/v1/jobs/{job.id}/files/{f.name}",
            }
            for f in result.files
        ]
        body["meta"] = json_format.MessageToDict(result.meta)
    return body


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


async def _upload(c: Control, file: UploadFile, fallback: str) -> str:
    """A form's file, uploaded as the caller (StartUpload refuses one over max_file_size_mb:
    413)."""
    return await c.upload(
        file.filename or fallback, file.content_type or "application/octet-stream",
        await file.read(),
    )  # fmt: skip


def _encoded(encoder: compat.StreamEncoder, audio_file: bytes) -> bytes:
    """A part (or the whole speech) through the response's encoder, decoded at 24 kHz."""
    return encoder.feed(audio.decode(audio_file, compat.PCM_RATE), compat.PCM_RATE)


async def _then(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        if chunk:
            yield chunk


async def _speech_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI's speech stream: `speech.audio.delta` events of base64 audio as it is made,
    then `speech.audio.done` (an `error` event if the job fails after the first sentence)."""
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            for start in range(0, len(chunk), 32 * 1024):
                piece = base64.b64encode(chunk[start : start + 32 * 1024]).decode()
                yield _sse({"type": "speech.audio.delta", "audio": piece})
    except ApiError as e:
        yield _sse({"type": "error", "error": e.body()})
        return
    except grpc.aio.AioRpcError as e:
        yield _sse({"type": "error", "error": from_grpc(e).body()})
        return
    yield _sse({"type": "speech.audio.done", "usage": {"output_bytes": size}})
