"""What a file is, from its content, never from its name or the client's word: `detect` reads
the first bytes (when the first chunk arrives), `inspect` the whole file (when it is finished)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import av

from voxmesh import audio

# Declared types that mean the same container as the detected one.
ALIASES = {
    "audio/wav": {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"},
    "audio/flac": {"audio/flac", "audio/x-flac"},
    "audio/ogg": {"audio/ogg", "audio/opus", "audio/vorbis", "application/ogg"},
    "audio/mpeg": {"audio/mpeg", "audio/mp3", "audio/x-mp3", "audio/mpeg3"},
    "audio/aac": {"audio/aac", "audio/x-aac", "audio/aacp"},
    "audio/mp4": {"audio/mp4", "audio/x-m4a", "audio/m4a", "video/mp4"},
    "video/mp4": {"video/mp4", "audio/mp4", "video/quicktime"},
    "video/webm": {"video/webm", "audio/webm", "video/x-matroska", "audio/x-matroska"},
}
SNIFF_BYTES = 64


def detect(head: bytes) -> str | None:
    """The media type of an audio or video file starting with `head`, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[:4] == b"fLaC":
        return "audio/flac"
    if head[:4] == b"OggS":
        return "audio/ogg"
    if head[:3] == b"ID3":
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        return "audio/mp4" if head[8:12] in (b"M4A ", b"M4B ") else "video/mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "audio/aac" if head[1] & 0x06 == 0 else "audio/mpeg"  # ADTS has layer 00
    return None


UNDECLARED = {"", "application/octet-stream", "binary/octet-stream"}
"""Types that say only "some bytes" (what curl -F and many tools send for an .mp3): the content
decides."""


def agrees(declared: str, detected: str) -> bool:
    declared = declared.split(";")[0].strip().lower()
    return declared in UNDECLARED or declared in ALIASES.get(detected, {detected})


# What must never be inside an audio payload: a WAV header in front of one of these is not a
# recording. Checked where the samples begin (not only the file's first bytes).
FOREIGN = {
    b"\x7fELF": "an ELF executable",
    b"MZ": "a Windows executable",
    b"PK\x03\x04": "a ZIP archive",
    b"#!": "a script",
    b"%PDF": "a PDF document",
    b"\xca\xfe\xba\xbe": "a Mach-O or Java class file",
    b"\xcf\xfa\xed\xfe": "a Mach-O executable",
}
DECODE_CHECK_SECONDS = 1.0


class MediaError(Exception):
    """The file is not usable audio; the message says why, for the person who sent it."""


@dataclass(frozen=True)
class Inspection:
    content_type: str
    seconds: float | None
    """How long the container says the audio is; None if it does not say."""


def inspect(data: bytes) -> Inspection:
    """Check a whole uploaded file, not just its first bytes: its type from its content, its
    structure (for WAV: every chunk inside the file, the samples not another kind of file), its
    duration from the container's headers, and that its audio track decodes."""
    detected = detect(data[:SNIFF_BYTES])
    if detected is None:
        raise MediaError(
            "this is not an audio or video file of a known format (WAV, FLAC, MP3, OGG/Opus, "
            "AAC, M4A/MP4, WebM)"
        )
    if detected == "audio/wav":
        _check_wav(data)
        wav = audio.pcm_wav(data)
        if wav is not None:  # plain samples: the headers say all, nothing to decode
            if not wav.frames:
                raise MediaError("the audio track holds no sound that decodes")
            return Inspection(detected, wav.seconds)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as e:
        raise MediaError(
            f"the file looks like {detected} but cannot be read as one ({e})"
        ) from None
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise MediaError("the file has no audio track")
        seconds = audio.declared_seconds(container, stream)
        decoded = 0.0
        try:
            for frame in container.decode(stream):
                if not isinstance(frame, av.AudioFrame):
                    continue
                decoded += frame.samples / (frame.sample_rate or 1)
                if decoded >= DECODE_CHECK_SECONDS:
                    break
        except (av.error.FFmpegError, ValueError) as e:
            raise MediaError(f"the audio track does not decode ({e})") from None
        if decoded == 0:
            raise MediaError("the audio track holds no sound that decodes")
    return Inspection(detected, seconds)


def _check_wav(data: bytes) -> None:
    riff_size = int.from_bytes(data[4:8], "little")
    # Writers that stream (espeak-ng, sox to a pipe) cannot know the length and put a
    # placeholder there: a size beyond the file means "up to the end".
    end = min(len(data), riff_size + 8)
    found_format, found_data = False, False
    for chunk, body, size in audio.wav_chunks(data, end):
        if chunk != b"data" and body + size > end + 1:
            raise MediaError(f"the WAV chunk {chunk!r} runs past the end of the file")
        if chunk == b"fmt ":
            found_format = True
        elif chunk == b"data":
            found_data = True
            for magic, what in FOREIGN.items():
                if data[body : body + len(magic)] == magic:
                    raise MediaError(f"this WAV file's samples are {what}, not sound")
    if not (found_format and found_data):
        raise MediaError("the WAV file lacks its 'fmt ' or 'data' chunk")
    if len(data) - end > 1:
        tail = data[end : end + 8]
        what = next((w for m, w in FOREIGN.items() if tail.startswith(m)), "data")
        raise MediaError(f"the WAV file carries {len(data) - end} bytes of {what} after its end")
