"""Long audio split at silences into parts several workers transcribe at once, and the parts'
segments stitched back onto one timeline.

A cut goes at the quietest 300 ms near each target boundary, so no word straddles a seam: each
word is transcribed by exactly one part, none lost or doubled."""

from __future__ import annotations

import io
import itertools
import json
import wave
from dataclasses import asdict

import numpy as np

from voxmesh.audio import SAMPLE_RATE
from voxmesh.speech.stt import Segment, Word

FRAME = 320  # 20 ms
SMOOTH = 15  # 300 ms


def split_points(audio: np.ndarray, target_seconds: float) -> list[int]:
    """Sample indices where to cut `audio` into parts of about `target_seconds`."""
    target = int(target_seconds * SAMPLE_RATE)
    frames = len(audio) // FRAME
    if frames == 0:
        return []
    energy = np.sqrt(np.mean(audio[: frames * FRAME].reshape(frames, FRAME) ** 2, axis=1))
    smooth = np.convolve(energy, np.ones(SMOOTH) / SMOOTH, mode="same")
    search = max(int(min(10 * SAMPLE_RATE, target // 3) // FRAME), 1)
    cuts: list[int] = []
    position = 0
    while len(audio) - position > target * 1.5:
        center = (position + target) // FRAME
        lo, hi = max(center - search, position // FRAME + 1), min(center + search, frames - 1)
        quietest = lo + int(np.argmin(smooth[lo:hi]))
        cut = quietest * FRAME
        cuts.append(cut)
        position = cut
    return cuts


def parts(audio: np.ndarray, cuts: list[int]) -> list[tuple[float, np.ndarray]]:
    """(start seconds, samples) of each part."""
    edges = [0, *cuts, len(audio)]
    return [(a / SAMPLE_RATE, audio[a:b]) for a, b in itertools.pairwise(edges)]


def to_wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def encode_result(segments: list[Segment], language: str) -> bytes:
    return json.dumps({"language": language, "segments": [asdict(s) for s in segments]}).encode()


def decode_result(data: bytes, offset: float) -> tuple[list[Segment], str]:
    """A part's segments, moved onto the whole file's timeline."""
    raw = json.loads(data)
    segments = [
        Segment(
            start=s["start"] + offset,
            end=s["end"] + offset,
            text=s["text"],
            avg_logprob=s["avg_logprob"],
            no_speech_prob=s["no_speech_prob"],
            words=[
                Word(w["start"] + offset, w["end"] + offset, w["word"], w["probability"])
                for w in s["words"]
            ],
        )
        for s in raw["segments"]
    ]
    return segments, raw["language"]
