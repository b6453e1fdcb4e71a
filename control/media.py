"""What a file is, from its first bytes, never from its name or the client's word."""

from __future__ import annotations

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


def agrees(declared: str, detected: str) -> bool:
    declared = declared.split(";")[0].strip().lower()
    return not declared or declared in ALIASES.get(detected, {detected})
