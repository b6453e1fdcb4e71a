"""The STT service: Whisper speech-to-text as a Voxmesh worker.

`audio.py` decodes any common container with PyAV; `engines.py` runs Whisper (faster-whisper
on CTranslate2 weights, or openai-whisper for a `.pt` checkpoint); `formats.py` writes text,
SRT, WebVTT and JSON; `handler.py` is the job handler the shared worker runtime calls;
`python -m services.stt` runs the worker.
"""
