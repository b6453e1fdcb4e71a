"""Decoding any common audio or video container to what Whisper takes: 16 kHz mono float32."""

from __future__ import annotations

import io

import av
import numpy as np

SAMPLE_RATE = 16_000


class AudioError(Exception):
    """The input cannot be decoded as audio; the message says why, for the user."""


def decode(data: bytes, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples of the first audio track of `data` (WAV, FLAC, MP3, OGG/Opus, M4A/AAC, MP4,
    WebM, ...), resampled to `rate` Hz mono float32 in [-1, 1]."""
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.InvalidDataError, av.error.FFmpegError, ValueError) as e:
        raise AudioError(f"the file is not readable audio or video ({e})") from None
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioError("the file has no audio track")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        # One growing buffer, not a list of frames plus a concatenated copy: an hour of audio
        # peaks at about 1.1x its decoded size (230 MB) instead of 2-3x.
        buffer = bytearray()
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):  # type: ignore[arg-type]
                    buffer += out.to_ndarray().tobytes()
            for out in resampler.resample(None):
                buffer += out.to_ndarray().tobytes()
        except (av.error.FFmpegError, ValueError) as e:
            if not buffer:
                raise AudioError(f"the audio track could not be decoded ({e})") from None
            # A truncated tail: keep what decoded.
    if not buffer:
        raise AudioError("the audio track is empty")
    samples = np.frombuffer(buffer, dtype=np.float32)
    return np.clip(samples, -1.0, 1.0, out=samples)
