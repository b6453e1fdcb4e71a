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


CONVERSATION_LINES = {
    "piper": [
        "Good morning, and welcome back to the program about old books and their readers.",
        "I have always wondered how a reader chooses which chapter to record first.",
        "That makes sense. Do listeners ever write to you about the voices you choose?",
        "And what do you do when a sentence is simply too long to read in one breath?",
        "Is there a book you would never agree to read aloud, whatever the offer?",
        "Thank you both for coming in today; this was a real pleasure.",
    ],
    "kokoro": [
        "I think the secret is patience, and a quiet room with thick curtains.",
        "Some of them do, and they are very kind about it, even when I make mistakes.",
        "My favourite part is when a story surprises me halfway through the reading.",
        "I mark the page with a pencil, take a breath, and read it again slowly.",
        "Only the ones with tiny print in the footnotes; my eyes would never forgive me.",
        "The pleasure was ours, and I hope the listeners enjoyed it as much as we did.",
    ],
}


def _speech_extent(samples: np.ndarray, rate: int = RATE) -> np.ndarray:
    """Frames (10 ms) with speech energy, small gaps (< 0.3 s) filled: where a clip speaks."""
    hop = rate // 100
    frames = samples[: len(samples) // hop * hop].reshape(-1, hop)
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
    speech = energy > energy.max() - 35
    gap = 0
    for i in range(len(speech)):
        if speech[i]:
            if 0 < gap < 30:
                speech[i - gap : i] = True
            gap = 0
        else:
            gap += 1
    return speech


def conversation(
    overlap: float = 0.6, speakers: tuple[str, ...] = ("piper", "reader", "kokoro"), rounds: int = 6
) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """A three-person conversation of over 60 s: the LibriVox reader (a real person), Piper's
    joe and Kokoro's female voice take turns (or those of `speakers`), each turn starting
    `overlap` s before the previous one ends (a negative overlap leaves a pause). Returns 16 kHz samples and the reference turns (speaker, start, end),
    taken from where each clip has speech energy (so pauses inside a turn are not speech)."""
    from voxmesh import audio
    from voxmesh.speech import voices
    from voxmesh.speech.tts import load as load_voice

    def synth(voice_id: str, text: str) -> np.ndarray:
        voice = voices.CATALOG[voice_id]
        engine = load_voice(voice)
        return audio.resample(engine.synthesize(text, voice, 1.0), engine.sample_rate, RATE)

    reader = [samples for samples, _ in clips()]
    turns: list[tuple[str, np.ndarray]] = []
    for i in range(rounds):
        if "piper" in speakers:
            turns.append(("piper", synth("en_US-joe-medium", CONVERSATION_LINES["piper"][i])))
        if "reader" in speakers:
            turns.append(("reader", reader[i % len(reader)]))
        if "kokoro" in speakers:
            line = CONVERSATION_LINES["kokoro"][i]
            turns.append(("kokoro", synth("kokoro:en-US/jf_alpha", line)))
    placed: list[tuple[str, int, np.ndarray]] = []
    position = 0
    for speaker, samples in turns:
        extent = _speech_extent(samples)
        first, last = int(np.argmax(extent)), len(extent) - int(np.argmax(extent[::-1]))
        clip = samples[first * RATE // 100 : last * RATE // 100]
        start = max(0, position - int(overlap * RATE)) if placed else int(0.3 * RATE)
        placed.append((speaker, start, clip))
        position = start + len(clip)
    mix = np.zeros(position + RATE // 2, np.float32)
    reference: list[tuple[str, float, float]] = []
    for speaker, start, clip in placed:
        peak = float(np.max(np.abs(clip))) or 1.0
        mix[start : start + len(clip)] += clip * (0.5 / peak)
        extent = _speech_extent(clip)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], extent.astype(int), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            reference.append((speaker, start / RATE + a / 100, start / RATE + b / 100))
    return mix, reference
