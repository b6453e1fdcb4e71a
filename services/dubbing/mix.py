"""Mixing the dub at the original timestamps, and putting it back into a video."""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np

RATE = 16000
RAMP = int(0.05 * RATE)


def mix(
    total_seconds: float,
    placements: list[tuple[float, np.ndarray]],
    background: np.ndarray | None,
    background_db: float,
) -> np.ndarray:
    """The dub: each segment at its start time, over the original ducked under the segments (or
    over silence)."""
    length = int(total_seconds * RATE)
    ends = [int(start * RATE) + len(audio) for start, audio in placements]
    out = np.zeros(max([length, *ends]), np.float32)
    if background is not None:
        duck = float(10 ** (background_db / 20))
        gain = np.ones(len(out), np.float32)
        for (start, _), end in zip(placements, ends, strict=True):
            gain[int(start * RATE) : end] = duck
        ramps = np.ones(RAMP, np.float32) / RAMP
        gain = np.convolve(gain, ramps, mode="same").astype(np.float32)  # 50 ms ramps
        bg = np.zeros(len(out), np.float32)
        bg[: min(len(background), len(out))] = background[: len(out)]
        out += bg * gain
    for (start, audio), end in zip(placements, ends, strict=True):
        out[int(start * RATE) : end] += audio
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    return (out / peak * 0.98).astype(np.float32) if peak > 0.98 else out


def video_stream(data: bytes) -> bool:
    """Whether the input has a video track (the dub then goes back into the container)."""
    try:
        with av.open(io.BytesIO(data)) as container:
            return bool(container.streams.video)
    except av.FFmpegError:
        return False


def mux(video: bytes, samples: np.ndarray, rate: int) -> tuple[bytes, str, str]:
    """The input video with its audio replaced by `samples`: (bytes, media type, extension).
    The video packets are copied untouched; the audio is AAC in MP4, Opus in WebM/Matroska."""
    with av.open(io.BytesIO(video)) as opened:
        source: Any = opened
        names = source.format.name.split(",")
        webm = "webm" in names or "matroska" in names
        fmt, codec, media_type, ext = (
            ("webm", "libopus", "video/webm", "webm")
            if webm
            else ("mp4", "aac", "video/mp4", "mp4")
        )
        buf = io.BytesIO()
        with av.open(buf, mode="w", format=fmt) as out:
            vin = source.streams.video[0]
            vout: Any = out.add_stream_from_template(vin)
            aout: Any = out.add_stream(codec, rate=48000)
            aout.layout = "mono"
            for packet in source.demux(vin):
                if packet.dts is None:
                    continue
                packet.stream = vout
                out.mux(packet)
            frame = av.AudioFrame.from_ndarray(
                np.clip(samples, -1, 1).reshape(1, -1).astype(np.float32),
                format="flt",
                layout="mono",
            )
            frame.sample_rate = rate
            ctx = aout.codec_context
            resampler = av.AudioResampler(format=ctx.format, layout="mono", rate=48000,
                                          frame_size=ctx.frame_size or None)  # fmt: skip
            for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
                for packet in aout.encode(resampled):
                    out.mux(packet)
            for packet in aout.encode(None):
                out.mux(packet)
    return buf.getvalue(), media_type, ext
