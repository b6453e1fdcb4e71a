"""The TTS service: Piper (default, CPU, voices shipped in packages) and Bark behind one job type.

`engines.py` loads and runs the engines; `text.py` splits text into sentences; `handler.py` is
the job handler (sentence by sentence, with progress, cancellation and natural pauses, then
loudness normalisation and encoding); `python -m services.tts` runs the worker.
"""
