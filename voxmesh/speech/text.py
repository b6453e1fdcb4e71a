"""Splitting text into what an engine speaks at once: sentences, paragraph by paragraph."""

from __future__ import annotations

import re

MAX_CHARS = 300
# Sentence ends, including CJK full stops and closing quotes after them.
_END = r"[.!?\u2026\u3002\uff01\uff1f]"
_CLOSE = r"[\"'\u201d\u2019)\]]"
_SENTENCE_END = re.compile(rf"(?:(?<={_END})|(?<={_END}{_CLOSE}))\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


def _shorten(sentence: str) -> list[str]:
    """A sentence too long for one synthesis, cut at clause boundaries (then at spaces)."""
    if len(sentence) <= MAX_CHARS:
        return [sentence]
    pieces, current = [], ""
    for clause in _CLAUSE_END.split(sentence):
        if current and len(current) + len(clause) + 1 > MAX_CHARS:
            pieces.append(current)
            current = ""
        current = f"{current} {clause}".strip()
    pieces.append(current)
    out = []
    for piece in pieces:
        while len(piece) > MAX_CHARS:
            cut = piece.rfind(" ", 0, MAX_CHARS)
            cut = cut if cut > 0 else MAX_CHARS
            out.append(piece[:cut])
            piece = piece[cut:].strip()
        out.append(piece)
    return [p for p in out if p]


def split(text: str) -> list[tuple[str, bool]]:
    """(sentence, ends a paragraph) for each sentence of `text`. Bark cues such as [laughs]
    stay inside their sentence."""
    out: list[tuple[str, bool]] = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        flat = " ".join(paragraph.split())
        if not flat:
            continue
        sentences = [s.strip() for s in _SENTENCE_END.split(flat) if s.strip()]
        pieces = [piece for s in sentences for piece in _shorten(s)]
        out += [(piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)]
    return out
