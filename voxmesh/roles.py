"""Roles of result files: what a file is to the job that made it, independent of its name or
format. The services set them on their outputs; the control plane stores them with the result
(ResultFile.role) and a job kind passes files on by role (a dubbing revision gets the revised
job's "segments", "segment_audio" and "voice"), never by file name."""

from __future__ import annotations

AUDIO = "audio"
"""The main audio output (speech, the dub, the narration, the cloned voice)."""
VIDEO = "video"
"""The dubbed video."""
TRANSCRIPT = "transcript"
"""Text of what was said (transcript.txt / transcript.json)."""
SUBTITLES = "subtitles"
"""Timed subtitles (SRT or WebVTT)."""
STORY = "story"
"""A story's text and its timing."""
SEGMENTS = "segments"
"""A dub's segments: times, texts, translations, fitting figures (segments.json)."""
SEGMENT_AUDIO = "segment_audio"
"""A dub's synthesised speech per segment, as placed (segment-audio.npz)."""
VOICE = "voice"
"""A voice profile (voice.json)."""
SOURCE = "source"
"""A voice conversion's source recording (a voice cloning dispatch's file)."""
PART = "part"
"""A piece of the main audio announced while the job runs (a streamed TTS sentence, a WAV)."""


def revised(role: str) -> str:
    """The dispatch file key of a revised job's file with `role` (a dubbing revision)."""
    return f"revise.{role}"
