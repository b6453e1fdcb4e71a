"""Transcript files: plain text, SRT (`srt`), WebVTT (`webvtt-py`) and JSON with words."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import srt
import webvtt

from voxmesh.speech.stt import Segment


def display(speaker: str) -> str:
    """How a label is shown to people: "SPEAKER_02" -> "SPEAKER 2"."""
    head, _, number = speaker.rpartition("_")
    return f"{head} {int(number)}" if head and number.isdigit() else speaker


def _said(s: Segment) -> str:
    """A segment's text, with its speaker when the transcript was diarized."""
    return f"[{display(s.speaker)}] {s.text}" if s.speaker else s.text


def to_text(segments: list[Segment]) -> str:
    return "\n".join(_said(s) for s in segments if s.text) + "\n"


def to_srt(segments: list[Segment]) -> str:
    subtitles = [
        srt.Subtitle(
            index=i,
            start=timedelta(seconds=s.start),
            end=timedelta(seconds=s.end),
            content=_said(s),
        )
        for i, s in enumerate((s for s in segments if s.text), start=1)
    ]
    return str(srt.compose(subtitles))


def _vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def to_vtt(segments: list[Segment]) -> str:
    document = webvtt.WebVTT()
    for s in segments:
        if s.text:
            document.captions.append(webvtt.Caption(_vtt_time(s.start), _vtt_time(s.end), _said(s)))
    out = io.StringIO()
    document.write(out)
    return out.getvalue()


def to_json(
    segments: list[Segment], meta: dict[str, Any], extra: dict[str, Any] | None = None
) -> str:
    return json.dumps(
        {
            **meta,
            **(extra or {}),
            "segments": [
                {
                    "id": i,
                    "start": round(s.start, 3),
                    "end": round(s.end, 3),
                    "text": s.text,
                    **({"speaker": s.speaker} if s.speaker else {}),
                    "avg_logprob": round(s.avg_logprob, 4),
                    "no_speech_prob": round(s.no_speech_prob, 4),
                    "words": [
                        {
                            "start": round(w.start, 3),
                            "end": round(w.end, 3),
                            "word": w.word,
                            "probability": round(w.probability, 4),
                            **({"speaker": w.speaker} if w.speaker else {}),
                        }
                        for w in s.words
                    ],
                }
                for i, s in enumerate(segments)
            ],
        },
        ensure_ascii=False,
        indent=2,
    )
