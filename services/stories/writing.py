"""From a story request to a prompt, and from streamed text to a title and paragraphs; the
checks that keep a small model honest (length, loops)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Story:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    looped: bool = False
    """The writer fell into a loop and the story was stopped there."""

    @property
    def words(self) -> int:
        return sum(len(p.split()) for p in self.paragraphs)

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "\n\n".join(self.paragraphs) + "\n"


OPENING = "Once upon a time,"
_METADATA = re.compile(r"^[\w()\u2019' ./-]{1,40}:\s|^(chapter|part|by|isbn|copyright)\b", re.I)


def prompt(
    premise: str, genre: str, audience: str, target_words: int, dialogue: bool = False
) -> str:
    """A story's first words for a base model to continue (it completes text; it takes no
    orders), so what comes back is prose, not a catalogue entry."""
    kind = " ".join(x for x in (genre, "story") if x)
    reader = f" for {audience}" if audience else ""
    return (
        f"Here is a short {kind}{reader} about {premise.rstrip('.')}. It is about "
        f"{target_words} words long, told in short paragraphs"
        f"{', with dialogue' if dialogue else ''}.\n\n{OPENING}"
    )


DIALOGUE = (
    "The characters talk to each other: write at least three lines of dialogue, each in "
    'double quotes, like: "Wait for me," said the fox. '
)

SYSTEM = (
    "You are a storyteller. You write complete, original short stories in plain English prose, "
    "and you always tell exactly the story you are asked for."
)


def chat_messages(
    premise: str, genre: str, audience: str, target_words: int, dialogue: bool = False
) -> list[dict[str, str]]:
    """The chat an instruction-tuned writer is asked. Models of this size write about 1.3x the
    words they are asked for, so they are asked for fewer (`asked_words`)."""
    kind = f"a {genre} story" if genre else "a story"
    reader = f" for {audience}" if audience else ""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Write {kind}{reader}.\n\nPremise: {premise.rstrip('.')}.\n\n"
            "The characters and events of the premise are the heart of the story: show them "
            f"plainly, and use the premise's own words for them ({', '.join(premise_words(premise))}). "
            f"Length: about {asked_words(target_words)} words, "
            "in short paragraphs. Start with the title on its own line, like: # The Title. "
            + (DIALOGUE if dialogue else "")
            + "Finish the story with a proper ending."
        )},
    ]  # fmt: skip


def asked_words(target_words: int) -> int:
    return max(40, round(target_words * 0.8))


def continue_message(missing_words: int) -> dict[str, str]:
    return {"role": "user", "content": (
        f"Continue the story from where it stopped: add about {missing_words} more words, then "
        "give it a proper ending. Do not repeat what is written and do not add a title."
    )}  # fmt: skip


def revise_message(premise: str, missing: list[str], no_dialogue: bool = False) -> dict[str, str]:
    said = [w for w in premise_words(premise) if _stem(w) in missing] or missing
    words = ", ".join(f'"{w}"' for w in said)
    lacks = [f"it never says {words}"] if missing else []
    lacks += ["nobody speaks (put what the characters say in double quotes)"] if no_dialogue else []
    return {"role": "user", "content": (
        f"That story leaves out part of what was asked: {'; '.join(lacks)}. Write the whole "
        f"story again, title first, so that the premise ({premise.rstrip('.')}) is plainly what "
        "happens, in about the same length."
    )}  # fmt: skip


def has_dialogue(story: Story) -> bool:
    """Some paragraph has quoted speech (what a dialogue voice speaks)."""
    return any(quoted for paragraph in story.paragraphs for _, quoted in runs(paragraph))


def ending_message(premise: str, max_words: int) -> dict[str, str]:
    return {"role": "user", "content": (
        f"Now end the story in at most {max_words} words, in a way that fits the premise "
        f"({premise.rstrip('.')}). Write only the ending."
    )}  # fmt: skip


def split_title(text: str) -> tuple[str, str]:
    """(title, body) of a chat writer's answer: the title is a "# ..." or "Title: ..." line among
    the first lines (lines before it, such as a preamble, are dropped)."""
    lines = text.strip().splitlines()
    for i, line in enumerate(lines[:3]):
        found = re.match(r"^\s*(#+\s*|title:\s*)(.+)$", line, re.I)
        if found:
            title = re.sub(r"[#*\"_]", "", found.group(2)).strip()
            return " ".join(title.split())[:100], "\n".join(lines[i + 1 :]).strip()
    return "", text.strip()


_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "from",
        "by",
        "about",
        "into",
        "over",
        "under",
        "who",
        "whom",
        "whose",
        "which",
        "that",
        "this",
        "these",
        "those",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "his",
        "her",
        "their",
        "its",
        "our",
        "your",
        "my",
        "he",
        "she",
        "they",
        "it",
        "we",
        "you",
        "i",
        "him",
        "them",
        "us",
        "me",
        "one",
        "some",
        "any",
        "all",
        "no",
        "not",
        "very",
        "so",
        "as",
        "than",
        "then",
        "when",
        "where",
        "while",
        "how",
        "why",
        "what",
        "there",
        "here",
        "out",
        "up",
        "down",
        "off",
        "only",
        "just",
        "who's",
        "learns",
        "learn",
        "finds",
        "find",
        "gets",
        "get",
        "becomes",
        "become",
        "tries",
        "try",
        "story",
        "tale",
    ]
)


def _stem(word: str) -> str:
    for suffix in ("ies", "ing", "ers", "er", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def premise_words(premise: str) -> list[str]:
    """The premise's content words as written (its people, things and what happens)."""
    words: list[str] = []
    for word in re.findall(r"[A-Za-z]+", premise):
        if len(word) >= 3 and word.lower() not in _STOPWORDS and word.lower() not in words:
            words.append(word.lower())
    return words


def premise_terms(premise: str) -> list[str]:
    """The premise's content words (its people, things and what happens between them), stemmed:
    what a story on this premise names."""
    return list(dict.fromkeys(_stem(w) for w in premise_words(premise)))


def missing_terms(story_text: str, terms: list[str]) -> list[str]:
    """The premise terms a story never mentions (a stem matches a word that contains it, or a
    word of 5 letters or more it ends with: "befriend" is found in "friends")."""
    words = {_stem(w) for w in re.findall(r"[a-z]+", story_text.lower()) if len(w) >= 3}
    return [t for t in terms if not any(t in w or (len(w) >= 5 and t.endswith(w)) for w in words)]


def ends_cleanly(text: str) -> bool:
    """The last thing written is a complete sentence."""
    return bool(re.search(r"[.!?][\"'\u201d\u2019)]*$", text.strip()))


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


def shape(body: str, target_words: int, title: str) -> Story:
    """The paragraphs of `body` (what the writer wrote; a base model's includes the OPENING it
    was given), cut at a sentence end by 1.15x the target length; metadata-like lines dropped,
    and the story stops where the model fell into a loop."""
    paragraphs: list[str] = []
    seen: set[str] = set()
    total = 0
    looped = False
    for block in re.split(r"\n\s*\n|\n", body):
        text = " ".join(block.split())
        if not text or text.lower() in seen or _METADATA.match(text):
            continue
        if re.match(r"^(the end|\*\*\*)", text.lower()):
            break
        if distinct_ngram_ratio(text) < 0.5:
            looped = True  # the model fell into a loop: stop the story here
            break
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
    return Story(title, [p for p in paragraphs if p], looped)


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
