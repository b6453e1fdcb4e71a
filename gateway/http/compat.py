"""What OpenAI's clients hard-code, in Voxmesh's terms: model and voice names, response formats,
and audio conversion for the formats Voxmesh's engines do not write themselves (aac, pcm)."""

from __future__ import annotations

import io
import json
from typing import Any

import av
import numpy as np

from voxmesh.audio import resample
from voxmesh.speech.languages import SHIPPED_STT
from voxmesh.v1 import jobs_pb2

# --- models -----------------------------------------------------------------------------------
STT_ALIASES = {"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
               "gpt-4o-transcribe-diarize", "whisper", "voxmesh-stt"}  # fmt: skip
"""Names clients hard-code: the job is routed (the model that speaks the language)."""
STT_MODELS = STT_ALIASES | {m.name for m in SHIPPED_STT}
"""Every STT name: the aliases and the shipped models by name (tiny.en, base), which a job
then names (SttParams.model)."""


def stt_model(name: str) -> str:
    """The SttParams.model for a model name ("" for an alias: routed)."""
    return "" if name in STT_ALIASES else name


TTS_MODELS = {"tts-1": "", "tts-1-hd": "", "gpt-4o-mini-tts": "", "voxmesh-tts": "",
              "piper": "piper", "kokoro": "kokoro", "bark": "bark"}  # fmt: skip
"""Name -> TTS engine ("" = the voice's own engine)."""

# --- voices -----------------------------------------------------------------------------------
FEMALE, MALE = "kokoro:en-US/jf_alpha", "en_US-joe-medium"
MALE_2 = "kokoro:en-US/jm_kumo"
OPENAI_VOICES = {
    "alloy": FEMALE,
    "ash": MALE,
    "ballad": MALE_2,
    "coral": FEMALE,
    "echo": MALE,
    "fable": MALE_2,
    "nova": FEMALE,
    "onyx": MALE,
    "sage": FEMALE,
    "shimmer": FEMALE,
    "verse": MALE_2,
    "marin": FEMALE,
    "cedar": MALE,
}
"""OpenAI's voice names -> shipped Voxmesh voices (documented in the README)."""

# --- transcription responses ------------------------------------------------------------------
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")


def full_text(document: dict[str, Any]) -> str:
    return " ".join(s["text"].strip() for s in document.get("segments", []) if s["text"].strip())


def transcription(
    document: dict[str, Any], response_format: str, *, task: str, words: bool, segments: bool
) -> tuple[str | dict[str, Any], str]:
    """(body, media type) for a transcript.json in OpenAI's json, text or verbose_json (srt and
    vtt are the job's own transcript.srt and transcript.vtt)."""
    text = full_text(document)
    if response_format == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if response_format == "json":
        return {"text": text, "usage": {"type": "duration", "seconds": _seconds(document)}}, ""
    if response_format == "diarized_json":
        return diarized(document), ""
    body: dict[str, Any] = {
        "task": task,
        "language": document.get("language", ""),
        "duration": document.get("duration_seconds", document.get("duration", 0.0)),
        "text": text,
    }
    if segments:
        body["segments"] = [
            {
                "id": s["id"],
                "seek": 0,
                "start": s["start"],
                "end": s["end"],
                "text": s["text"],
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": s.get("avg_logprob", 0.0),
                "compression_ratio": 0.0,
                "no_speech_prob": s.get("no_speech_prob", 0.0),
            }
            for s in document.get("segments", [])
        ]
    if words:
        body["words"] = [
            {"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
            for s in document.get("segments", [])
            for w in s.get("words", [])
        ]
    return body, ""


def speaker_letter(label: str) -> str:
    """OpenAI labels speakers A, B, ...: "SPEAKER_01" -> "A"."""
    number = label.rpartition("_")[2]
    if not number.isdigit() or int(number) < 1:
        return label
    n, letters = int(number), ""
    while n:
        n, rest = divmod(n - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def diarized(document: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's diarized_json (gpt-4o-transcribe-diarize) from a diarized transcript.json."""
    return {
        "task": "transcribe",
        "duration": document.get("duration_seconds", 0.0),
        "text": full_text(document),
        "segments": [
            {
                "type": "transcript.text.segment",
                "id": f"seg_{s['id']}",
                "start": s["start"],
                "end": s["end"],
                "text": s["text"],
                "speaker": speaker_letter(s.get("speaker", "")),
            }
            for s in document.get("segments", [])
            if s["text"].strip()
        ],
        "usage": {"type": "duration", "seconds": _seconds(document)},
    }


def _seconds(document: dict[str, Any]) -> int:
    return round(float(document.get("duration_seconds", document.get("duration", 0.0))))


def parse_transcript(data: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(data)
    return document


# --- speech formats ---------------------------------------------------------------------------
SPEECH_FORMATS = {
    "mp3": (jobs_pb2.AUDIO_FORMAT_MP3, "audio/mpeg"),
    "opus": (jobs_pb2.AUDIO_FORMAT_OGG_OPUS, "audio/ogg"),
    "flac": (jobs_pb2.AUDIO_FORMAT_FLAC, "audio/flac"),
    "wav": (jobs_pb2.AUDIO_FORMAT_WAV, "audio/wav"),
    "aac": (jobs_pb2.AUDIO_FORMAT_WAV, "audio/aac"),  # encoded here from the engine's WAV
    "pcm": (jobs_pb2.AUDIO_FORMAT_WAV, "audio/pcm"),  # raw 24 kHz s16le mono, as OpenAI's
}
PCM_RATE = 24_000


def pcm_seconds(data: bytes) -> float:
    return len(np.frombuffer(data, dtype=np.int16)) / PCM_RATE


# --- speech as it is made ---------------------------------------------------------------------
_STREAM_CODECS = {
    "mp3": ("mp3", "libmp3lame", None),
    "opus": ("ogg", "libopus", 48_000),
    "aac": ("adts", "aac", None),
    "flac": ("flac", "flac", None),
}


class _Sink(io.RawIOBase):
    """Where the muxer writes: collected until taken (not seekable, so muxers stream)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        self._buffer += bytes(data)
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


class StreamEncoder:
    """Audio in as it is made, `response_format` bytes out as soon as the encoder has them:
    a speech response that starts playing after the first sentence. pcm is raw 24 kHz s16le;
    wav is a streamed WAV (sizes left open, as a live recorder writes them); mp3, opus (Ogg),
    aac (ADTS) and flac come from FFmpeg's encoders, frame by frame."""

    def __init__(self, response_format: str) -> None:
        if response_format not in SPEECH_FORMATS:
            raise ValueError(f"no streaming encoder for {response_format!r}")
        self.format = response_format
        self._rate = 0
        self._sink = _Sink()
        self._container: Any = None
        self._stream: Any = None
        self._resampler: Any = None

    def feed(self, samples: np.ndarray, rate: int) -> bytes:
        samples = np.clip(samples.astype(np.float32).reshape(-1), -1.0, 1.0)
        if self.format == "pcm":
            return _s16(resample(samples, rate, PCM_RATE))
        if self.format == "wav":
            head = b""
            if not self._rate:
                self._rate = rate
                head = _streamed_wav_header(rate)
            return head + _s16(resample(samples, rate, self._rate))
        if self._container is None:
            container, codec, forced = _STREAM_CODECS[self.format]
            self._container = av.open(self._sink, "w", format=container)
            self._stream = self._container.add_stream(codec, rate=forced or rate)
            self._stream.layout = "mono"
            context = self._stream.codec_context
            self._resampler = av.AudioResampler(
                format=context.format, layout="mono", rate=forced or rate,
                frame_size=context.frame_size or None,
            )  # fmt: skip
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        self._encode(self._resampler.resample(frame))
        return self._sink.take()

    def close(self) -> bytes:
        """The encoder's last frames (and the container's trailer)."""
        if self._container is None:
            return b""
        self._encode(self._resampler.resample(None))
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None
        return self._sink.take()

    def _encode(self, frames: list[Any]) -> None:
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)


def _s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _streamed_wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "until the end" (0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF" + unknown.to_bytes(4, "little") + b"WAVE"
        + b"fmt " + (16).to_bytes(4, "little") + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
        + (rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little") + b"data" + unknown.to_bytes(4, "little")
    )  # fmt: skip
