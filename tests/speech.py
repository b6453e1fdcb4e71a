"""Real spoken English for tests: five LibriVox clips (public domain, read by a person) with
their transcripts, from Debian's pocketsphinx-testdata (`make test` installs it)."""

from __future__ import annotations

import io
import re
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
RATE = 16_000


def clips() -> list[tuple[np.ndarray, str]]:
    if not (LIBRIVOX / "transcription").exists():
        pytest.skip("needs Debian's pocketsphinx-testdata (make test installs it as root)")
    out = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        match = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
        if not match:
            continue
        with wave.open(str(LIBRIVOX / f"{match.group(2)}.wav")) as w:
            assert w.getframerate() == RATE and w.getnchannels() == 1
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        out.append((pcm.astype(np.float32) / 32768, match.group(1)))
    return out


def passage(pause: float = 0.8, repeat: int = 1) -> tuple[np.ndarray, str]:
    """The clips one after another with pauses: ~27 s of speech, and what is said."""
    silence = np.zeros(int(pause * RATE), np.float32)
    parts, words = [], []
    for _ in range(repeat):
        for samples, text in clips():
            parts += [samples, silence]
            words.append(text)
    return np.concatenate(parts), " ".join(words)


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def encode(
    samples: np.ndarray, container: str, codec: str, rate: int, video: str | None = None
) -> bytes:
    """`samples` (16 kHz mono) encoded with a real codec into a real container, optionally
    with a video track (so it is the audio *track* of a video that gets transcribed)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        if video is not None:
            vstream = out.add_stream(video, rate=5)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        astream = out.add_stream(codec, rate=rate)
        astream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = RATE
        resampler = av.AudioResampler(
            format=astream.codec_context.format, layout="mono", rate=rate,
            frame_size=astream.codec_context.frame_size or None,
        )  # fmt: skip
        if video is not None:
            seconds = len(samples) / RATE
            for i in range(int(seconds * 5)):
                picture = av.VideoFrame.from_ndarray(
                    np.full((48, 64, 3), i % 255, np.uint8), format="rgb24"
                )
                picture.pts, picture.time_base = i, Fraction(1, 5)
                for packet in vstream.encode(picture):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in astream.encode(resampled):
                out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def normalize(text: str) -> str:
    text = text.lower().replace("mr.", "mister").replace("-", " ")
    text = re.sub(r"[^a-z' ]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()
