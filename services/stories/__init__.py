"""The AI stories service: a language model writes a story, the TTS engines narrate it.

`generator.py` streams text from an OpenAI-compatible completions endpoint: the shipped Gemma 3
270M served in-process by llama.cpp (xllamacpp), or any endpoint a team configures;
`writing.py` turns a request into a prompt and the stream into a title and paragraphs;
`handler.py` is the job handler; `python -m services.stories` runs the worker.
"""
