"""Writing one draft of a story with a writer model, streaming the text to watchers as it
comes, and holding it to the requested length: a draft that stops short is continued, one that
runs out of tokens is trimmed to whole paragraphs and given an ending.

Small models overrun what they are asked for and sometimes stop early or loop, so the length is
not left to the model: the draft's words are counted and the story is steered to within ±25 %
of the target, or the job says why not (`length_verdict`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from services.stories.writing import (
    OPENING,
    Story,
    chat_messages,
    continue_message,
    ending_message,
    ends_cleanly,
    prompt,
    revise_message,
    shape,
    split_title,
)
from voxmesh.speech.writer import Endpoint, Finished, chat, stream
from voxmesh.stages import Stages
from voxmesh.worker import JobContext

FLUSH_SECONDS = 0.3
TOKENS_PER_WORD = 1.3
"""English prose in these models' tokenizers, measured: 1.1 to 1.2; a margin on top."""
LOW, HIGH = 0.75, 1.25
"""A finished story's words, as a share of the target."""
CONTINUATIONS = 2


@dataclass
class Draft:
    number: int
    story: Story
    missing: list[str] = field(default_factory=list)
    no_dialogue: bool = False
    """Asked for dialogue (a dialogue voice), and nobody speaks."""

    def markdown(self) -> str:
        return f"# {self.story.title}\n\n" + "\n\n".join(self.story.paragraphs)

    def rank(self) -> tuple[int, int, float]:
        """Smaller is better: on the premise (and speaking, when asked), then ending with a
        sentence, then near the length."""
        text = " ".join(self.story.paragraphs)
        return (len(self.missing) + self.no_dialogue, 0 if ends_cleanly(text) else 1,
                -min(self.story.words, 10**6))  # fmt: skip


class Writing:
    """Text on its way to watchers: pieces are gathered and sent as progress every 0.3 s."""

    def __init__(self, ctx: JobContext, stages: Stages[None], target: int) -> None:
        self.ctx, self.stages, self.target = ctx, stages, target
        self.pending, self.words, self.tokens, self.drafts = "", 0, 0, 0
        self.last = time.perf_counter()

    async def take(self, pieces: AsyncIterator[str], finished: Finished, lead: str = "") -> str:
        text, self.pending = "", self.pending + lead
        async for piece in pieces:
            text, self.pending = text + piece, self.pending + piece
            if time.perf_counter() - self.last >= FLUSH_SECONDS:
                await self.flush(len(text.split()))
        self.tokens += finished.tokens
        return text

    async def flush(self, words: int = 0) -> None:
        if self.pending:
            await self.stages.report("writing", min(1.0, words / self.target), self.pending)
        self.pending, self.last = "", time.perf_counter()


def _settings(config: Any, seed: int, cooler: float = 0.0) -> dict[str, Any]:
    return {
        "temperature": max(0.2, config.temperature - cooler),
        "seed": seed,
        "repeat_penalty": config.repeat_penalty,
    }


def _words(text: str) -> int:
    return len(text.split())


def _whole_paragraphs(body: str, limit: int) -> str:
    """The paragraphs of `body` that end with a sentence, at most `limit` words of them."""
    kept: list[str] = []
    for paragraph in (p.strip() for p in body.split("\n\n")):
        if not paragraph or not ends_cleanly(paragraph):
            break
        if kept and _words("\n\n".join([*kept, paragraph])) > limit:
            break
        kept.append(paragraph)
    return "\n\n".join(kept)


async def write_chat(
    out: Writing, endpoint: Endpoint, config: Any, premise: str, genre: str, audience: str,
    target: int, seed: int, previous: Draft | None = None, dialogue: bool = False,
) -> Draft:  # fmt: skip
    """A draft from an instruction-tuned writer; after a `previous` draft that left out part
    of the premise, the writer sees it and is told what it left out."""
    out.drafts += 1
    messages = chat_messages(premise, genre, audience, target, dialogue)
    if previous is not None and (previous.missing or previous.no_dialogue):
        messages += [
            {"role": "assistant", "content": previous.markdown()},
            revise_message(premise, previous.missing, previous.no_dialogue),
        ]
    finished = Finished()
    lead = "\n\n" if out.drafts > 1 else ""
    # A redraft is written cooler: it must follow the correction more than it must vary.
    cooler = 0.2 * (out.drafts - 1)
    answer = await out.take(
        chat(endpoint, messages, max_tokens=int(target * HIGH * TOKENS_PER_WORD) + 40,
             finished=finished, **_settings(config, seed, cooler)),
        finished, lead,
    )  # fmt: skip
    title, body = split_title(answer)
    if finished.reason == "length" or not ends_cleanly(body):
        # Out of tokens mid-story: keep the whole paragraphs that fit and ask for an ending.
        body = _whole_paragraphs(body, target)
        room = max(25, int(target * HIGH) - _words(body) - 10)
        messages += [{"role": "assistant", "content": body}, ending_message(premise, min(room, 80))]
        finished = Finished()
        ending = await out.take(
            chat(endpoint, messages, max_tokens=int(min(room, 80) * TOKENS_PER_WORD) + 20,
                 finished=finished, **_settings(config, seed)),
            finished, "\n\n",
        )  # fmt: skip
        body = f"{body}\n\n{ending.strip()}"
    for _ in range(CONTINUATIONS):
        if _words(body) >= target * LOW:
            break
        missing = target - _words(body)
        messages += [{"role": "assistant", "content": body}, continue_message(missing)]
        finished = Finished()
        more = await out.take(
            chat(endpoint, messages, max_tokens=int(missing * 1.1 * TOKENS_PER_WORD) + 30,
                 finished=finished, **_settings(config, seed)),
            finished, "\n\n",
        )  # fmt: skip
        if not more.strip():
            break
        body = f"{body}\n\n{split_title(more)[1]}"
    return Draft(out.drafts, shape(body, target, title))


async def write_base(
    out: Writing, endpoint: Endpoint, config: Any, premise: str, genre: str, audience: str,
    target: int, seed: int, previous: Draft | None = None, dialogue: bool = False,
) -> Draft:  # fmt: skip
    """A draft from a base model: it is given a story's opening and continues it (and continues
    again from what it wrote when it stopped short)."""
    out.drafts += 1
    opening = prompt(premise, genre, audience, target, dialogue)
    raw = ""
    for _ in range(1 + CONTINUATIONS):
        finished = Finished()
        missing = target - _words(raw)
        raw += await out.take(
            stream(endpoint, opening + raw, max_tokens=int(missing * TOKENS_PER_WORD * 1.2) + 40,
                   finished=finished, **_settings(config, seed)),
            finished, OPENING if not raw else "",
        )  # fmt: skip
        story = shape(f"{OPENING}{raw}", target, title="")
        if story.words >= target * LOW or story.looped or finished.reason == "length":
            break  # long enough, looping, or out of tokens (not a model that stopped early)
    return Draft(out.drafts, shape(f"{OPENING}{raw}", target, title=""))


def length_verdict(story: Story, target: int) -> str:
    """Why a story is outside ±25 % of its target length (empty when it is within)."""
    if target * LOW <= story.words <= target * HIGH:
        return ""
    why = (
        "the writer fell into repeating itself and the story was stopped there"
        if story.looped
        else "the writer ended the story there and would not continue it"
    )
    return f"the story has {story.words} words of the {target} asked for: {why}"
