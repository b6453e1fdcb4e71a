"""Audio for every speech service: decoding any common container (PyAV), loudness
normalisation (pyloudnorm, ITU-R BS.1770), and encoding to WAV, FLAC, MP3 or Ogg/Opus."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from voxmesh.v1 import jobs_pb2

SAMPLE_RATE = 16_000


class AudioError(Exception):
    """The input cannot be decoded as audio; the message says why, for the user."""


def spoken(seconds: float) -> str:
    """A duration as a person says it: '10 h 0 min', '3 min 20 s', '4.5 s'."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{seconds:.1f} s"


def declared_seconds(container: Any, stream: Any) -> float | None:
    """How long the container says its audio is (from headers, nothing decoded), if it says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000  # AV_TIME_BASE
    return None


@dataclass(frozen=True)
class PcmWav:
    """A WAV file of plain samples, read from its headers: nothing to decode."""

    rate: int
    channels: int
    dtype: str
    """numpy's name for one sample: "<i2" (16-bit integers) or "<f4" (32-bit floats)."""
    samples: memoryview
    """The data chunk's whole frames (a writer that streams may leave its size open: then up
    to the end of the file)."""

    @property
    def frames(self) -> int:
        return len(self.samples) // (self.channels * np.dtype(self.dtype).itemsize)

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_SAMPLE_TYPES = {(_PCM, 16): "<i2", (_FLOAT, 32): "<f4"}


def wav_chunks(data: bytes, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """A RIFF/WAVE file's chunks up to `end` (default: the end of `data`), in order: each
    one's id, where its body starts and the size its header gives (which may run past `end`:
    the caller judges that)."""
    end = len(data) if end is None else end
    position = 12
    while position + 8 <= end:
        size = int.from_bytes(data[position + 4 : position + 8], "little")
        yield data[position : position + 4], position + 8, size
        position += 8 + size + (size & 1)


def pcm_wav(data: bytes) -> PcmWav | None:
    """`data` as a WAV file of 16-bit integer or 32-bit float samples (what recorders, sox,
    espeak-ng and the TTS services write), or None for anything else, which PyAV decodes (and
    whose faults it reports)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    view = memoryview(data)
    sample_type, rate, channels = None, 0, 0
    for chunk, body, size in wav_chunks(data):
        if chunk == b"fmt ":
            if size < 16 or body + size > len(data):
                return None
            tag = int.from_bytes(data[body : body + 2], "little")
            channels = int.from_bytes(data[body + 2 : body + 4], "little")
            rate = int.from_bytes(data[body + 4 : body + 8], "little")
            align = int.from_bytes(data[body + 12 : body + 14], "little")
            bits = int.from_bytes(data[body + 14 : body + 16], "little")
            if tag == _EXTENSIBLE and size >= 40:  # the real format is the sub-format's tag
                tag = int.from_bytes(data[body + 24 : body + 26], "little")
            sample_type = _SAMPLE_TYPES.get((tag, bits))
            if sample_type is None or not 0 < channels <= 8 or not 0 < rate <= 768_000:
                return None
            if align != channels * bits // 8:
                return None
        elif chunk == b"data":
            if sample_type is None:
                return None  # samples before their format: leave it to PyAV
            end = min(len(data), body + size)
            frame = channels * np.dtype(sample_type).itemsize
            whole = (end - body) // frame * frame
            return PcmWav(rate, channels, sample_type, view[body : body + whole])
    return None


def _too_long(seconds: float, limit: float) -> AudioError:
    return AudioError(
        f"the audio is {spoken(seconds)} long; the limit is {spoken(limit)} (max_audio_minutes)"
    )


def decode(data: bytes, rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Samples of the first audio track of `data` (WAV, FLAC, MP3, OGG/Opus, M4A/AAC, MP4,
    WebM, ...), resampled to `rate` Hz mono float32 in [-1, 1].

    With `max_seconds`, input whose container declares it longer is refused before anything is
    decoded, and decoding stops with an error once it passes that length (a header may lie):
    the memory a file can take is bounded by the limit, not by how well it compresses (6.9 MB
    of FLAC silence decodes to 10 hours).

    A mono WAV of plain samples at `rate` (a recorder's, or a client's that resampled for
    Whisper) is read as it is, the same samples PyAV gives, in well under a millisecond where
    PyAV takes about 15 ms for 7 s."""
    wav = pcm_wav(data)
    if wav is not None and wav.channels == 1 and wav.rate == rate:
        if max_seconds is not None and wav.seconds > max_seconds:
            raise _too_long(wav.seconds, max_seconds)
        if not wav.frames:
            raise AudioError("the audio track is empty")
        samples = np.frombuffer(wav.samples, dtype=wav.dtype).astype(np.float32)
        if wav.dtype == "<i2":
            samples /= 32768.0
        return np.clip(samples, -1.0, 1.0, out=samples)
    return _decoded_by_av(data, rate, max_seconds)


def _decoded_by_av(data: bytes, rate: int, max_seconds: float | None) -> np.ndarray:
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.InvalidDataError, av.error.FFmpegError, ValueError) as e:
        raise AudioError(f"the file is not readable audio or video ({e})") from None
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioError("the file has no audio track")
        declared = declared_seconds(container, stream)
        if max_seconds is not None and declared is not None and declared > max_seconds:
            raise _too_long(declared, max_seconds)
        most = None if max_seconds is None else int((max_seconds + 1) * rate) * 4  # float32
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        # One growing buffer, not a list of frames plus a concatenated copy: an hour of audio
        # peaks at about 1.1x its decoded size (230 MB) instead of 2-3x.
        buffer = bytearray()
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):  # type: ignore[arg-type]
                    buffer += out.to_ndarray().tobytes()
                if most is not None and len(buffer) > most:
                    raise AudioError(
                        f"the audio decodes to more than {spoken(max_seconds or 0)}, the limit "
                        "(max_audio_minutes), although its header says otherwise"
                    )
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


# Output formats, the one list the control plane validates against and the services encode
# with: AudioFormat → (container, codec, sample rate, media type, file extension).
FORMATS: dict[int, tuple[str, str, int | None, str, str]] = {
    jobs_pb2.AUDIO_FORMAT_WAV: ("wav", "pcm_s16le", None, "audio/wav", "wav"),
    jobs_pb2.AUDIO_FORMAT_FLAC: ("flac", "flac", None, "audio/flac", "flac"),
    jobs_pb2.AUDIO_FORMAT_MP3: ("mp3", "libmp3lame", None, "audio/mpeg", "mp3"),
    jobs_pb2.AUDIO_FORMAT_OGG_OPUS: ("ogg", "libopus", 48_000, "audio/ogg", "ogg"),
}
DEFAULT_FORMAT = jobs_pb2.AUDIO_FORMAT_WAV
TARGET_LUFS = -23.0  # EBU R128: room for speech peaks under the -1 dBFS ceiling


PEAK_CEILING = 10 ** (-1 / 20)  # -1 dBFS


def normalize_loudness(
    samples: np.ndarray, rate: int, target_lufs: float = TARGET_LUFS
) -> np.ndarray:
    """`samples` at `target_lufs` integrated loudness, peaks kept below -1 dBFS."""
    if len(samples) < rate // 2 or not np.any(samples):
        return samples
    out = samples * loudness_gain(samples, rate, target_lufs)
    peak = float(np.max(np.abs(out)))
    if peak > PEAK_CEILING:
        out *= PEAK_CEILING / peak
    return out.astype(np.float32)


def loudness_gain(samples: np.ndarray, rate: int, target_lufs: float = TARGET_LUFS) -> float:
    """The gain that brings `samples` to `target_lufs` (1.0 when too short or silent to say):
    what a stream applies to every part, measured on its first."""
    import pyloudnorm

    if len(samples) < rate // 2 or not np.any(samples):
        return 1.0
    loudness = pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64))
    if not np.isfinite(loudness):
        return 1.0
    return float(10 ** ((target_lufs - loudness) / 20))


def limit(samples: np.ndarray, ceiling: float = PEAK_CEILING) -> np.ndarray:
    """Peaks above `ceiling` softened (tanh knee) rather than clipped, sample by sample, so a
    stream's parts can be limited one at a time and still join up."""
    out = samples.astype(np.float32)
    over = np.abs(out) > ceiling * 0.9
    if np.any(over):
        knee = ceiling * 0.9
        room = ceiling - knee
        excess = (np.abs(out[over]) - knee) / room
        out[over] = np.sign(out[over]) * (knee + room * np.tanh(excess))
    return out


def loudness(samples: np.ndarray, rate: int) -> float:
    import pyloudnorm

    return float(pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64)))


def encode(
    samples: np.ndarray, rate: int, audio_format: int = DEFAULT_FORMAT
) -> tuple[bytes, str, str, int]:
    """(bytes, media type, extension, sample rate) of mono `samples` in `audio_format` (an
    AudioFormat; unspecified means WAV). ValueError for a format not in FORMATS."""
    if audio_format not in FORMATS and audio_format:
        raise ValueError(f"audio format {audio_format} cannot be encoded")
    container_name, codec, forced_rate, media_type, extension = FORMATS[
        audio_format or DEFAULT_FORMAT
    ]
    out_rate = forced_rate or rate
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container_name) as out:
        stream: Any = out.add_stream(codec, rate=out_rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.clip(samples, -1, 1).reshape(1, -1).astype(np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = rate
        codec_context = stream.codec_context
        resampler = av.AudioResampler(
            format=codec_context.format, layout="mono", rate=out_rate,
            frame_size=codec_context.frame_size or None,
        )  # fmt: skip
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue(), media_type, extension, out_rate


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 `samples` from `rate` to `target` Hz (FFmpeg's resampler)."""
    if rate == target or not len(samples):
        return samples
    frame = av.AudioFrame.from_ndarray(
        samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono"
    )
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    out = [
        f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]
    ]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
