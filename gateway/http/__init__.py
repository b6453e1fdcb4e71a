"""Voxmesh's HTTP API under /v1: the OpenAI audio API (transcriptions, translations, speech,
models, voices) and jobs over HTTP (async requests, dubbing, voice cloning, stories).

It owns no data: every request is a real Voxmesh job made through the control plane's gRPC
API with the caller's own credentials (an API key or an access token), so it shows in
ListJobs, the console and WatchJob with its progress, limits and roles. Envoy routes `/v1/`
here, beside the console and gRPC-web on the same port.

- `app.py`      the routes (FastAPI)
- `control.py`  the gRPC calls a request makes (upload, create, wait, download)
- `compat.py`   OpenAI's names (whisper-1, tts-1, alloy...) and formats (srt, verbose_json, pcm...)
- `errors.py`   gRPC statuses as OpenAI-shaped errors
"""
