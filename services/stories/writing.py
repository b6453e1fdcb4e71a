"""From a story request to a prompt, and from streamed text to a title and paragraphs; the
checks that keep a small model honest (length, loops)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Story:
    title: str
    paragraphs: list[str] = field(default_factory=list)

    @property
    def words(self) -> int:
        return sum(len(p.split()) for p in self.paragraphs)

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "\n\n".join(self.paragraphs) + "\n"


OPENING = "Once upon a time,"
_METADATA = re.compile(r"^[\w()\u2019' ./-]{1,40}:\s|^(chapter|part|by|isbn|copyright)\b", re.I)


def prompt(premise: str, genre: str, audience: str, target_words: int) -> str:
    """A story's first words for a base model to continue (it completes text; it takes no
    orders), so what comes back is prose, not a catalogue entry."""
    kind = " ".join(x for x in (genre, "story") if x)
    reader = f" for {audience}" if audience else ""
    return (
        f"Here is a short {kind}{reader} about {premise.rstrip('.')}. It is about "
        f"{target_words} words long, told in short paragraphs.\n\n{OPENING}"
    )


def title_prompt(story_text: str) -> str:
    return f'Story:\n{story_text[:1500]}\n\nThe title of this story is "'


def clean_title(raw: str, fallback: str) -> str:
    title = re.sub(r"[#*\"\n]", " ", raw.split('"')[0]).strip()
    title = " ".join(title.split())[:100]
    return title if 2 <= len(title.split()) <= 12 else fallback


def distinct_ngram_ratio(text: str, n: int = 3) -> float:
    """Distinct n-grams over all n-grams: near 1 for prose, low for looping output."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def shape(raw: str, target_words: int, title: str) -> Story:
    """The paragraphs of `raw` (the opening plus the model's continuation), cut at a sentence
    end near the target length; metadata-like lines and looping paragraphs dropped."""
    body = f"{OPENING}{raw}"
    paragraphs: list[str] = []
    seen: set[str] = set()
    total = 0
    for block in re.split(r"\n\s*\n|\n", body):
        text = " ".join(block.split())
        if not text or text.lower() in seen or _METADATA.match(text):
            continue
        if re.match(r"^(the end|\*\*\*)", text.lower()):
            break
        if distinct_ngram_ratio(text) < 0.5:
            break  # the model fell into a loop: stop the story here
        seen.add(text.lower())
        limit = int(target_words * 1.15)
        if total + len(text.split()) > limit:  # keep the sentences that fit, then stop
            kept: list[str] = []
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                if kept and total + len(" ".join([*kept, sentence]).split()) > limit:
                    break
                kept.append(sentence)
            paragraphs.append(" ".join(kept))
            break
        paragraphs.append(text)
        total += len(text.split())
    if paragraphs and not re.search(r"[.!?\"']$", paragraphs[-1]):  # drop a cut-off sentence
        last = re.split(r"(?<=[.!?])\s+", paragraphs[-1])
        paragraphs[-1] = " ".join(last[:-1]) if len(last) > 1 else paragraphs[-1] + "."
    return Story(title, [p for p in paragraphs if p])


_QUOTED = re.compile(r"\u201c[^\u201d]+\u201d|\"[^\"]+\"")


def runs(text: str) -> list[tuple[str, bool]]:
    """(text, is quoted dialogue) runs of a paragraph, in order."""
    out: list[tuple[str, bool]] = []
    position = 0
    for match in _QUOTED.finditer(text):
        before = text[position : match.start()].strip()
        if before:
            out.append((before, False))
        spoken = match.group(0).strip('\u201c\u201d"').strip()
        if spoken:
            out.append((spoken, True))
        position = match.end()
    if text[position:].strip():
        out.append((text[position:].strip(), False))
    return out
