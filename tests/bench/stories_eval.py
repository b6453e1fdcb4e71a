"""Does a story follow its prompt? Ten varied premises, each written by both shipped writers
through the stories service's own drafting code, checked automatically: every key entity and
the relation of the premise appear (hand-written word groups, independent of the writer's own
premise check), the story ends with a complete sentence, and its length is within ±25 %.

    .venv/bin/python -m tests.bench.stories_eval [--writer NAME] [--words 150] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import Any

from services.stories.config import StoriesSettings
from services.stories.drafting import Writing, write_base, write_chat
from services.stories.writing import ends_cleanly, missing_terms, premise_terms
from voxmesh.speech.writer import WRITERS, local_model

PROMPTS: list[tuple[str, str, list[list[str]]]] = [
    ("a lighthouse keeper who befriends a storm", "fairy tale",
     [["lighthouse"], ["keeper"], ["storm"], ["friend"]]),
    ("a retired astronaut who teaches her granddaughter to grow tomatoes", "heartwarming",
     [["astronaut"], ["granddaughter"], ["tomato"], ["teach", "taught", "show", "learn"]]),
    ("a detective cat who solves the mystery of the missing cheese", "mystery",
     [["detective"], ["cat"], ["cheese"], ["solv", "found", "mystery"]]),
    ("a shy dragon who learns to sing", "fantasy", [["dragon"], ["sing", "song", "sang"], ["shy"]]),
    ("two rival bakers who must work together to save their village fair", "comedy",
     [["baker", "bakery"], ["village"], ["fair"], ["together"]]),
    ("a robot who plants trees in a city without parks", "science fiction",
     [["robot"], ["tree"], ["plant"], ["city"]]),
    ("a boy who finds a map to a hidden garden under his school", "adventure",
     [["boy"], ["map"], ["garden"], ["school"]]),
    ("an old fisherman who makes peace with a giant octopus", "fable",
     [["fisherman"], ["octopus"], ["peace", "friend"]]),
    ("a girl who teaches a lonely ghost how to laugh", "ghost story",
     [["girl"], ["ghost"], ["laugh"]]),
    ("a train conductor who gets lost in a snowstorm and is guided home by a fox", "winter tale",
     [["conductor", "train"], ["snow"], ["fox"], ["home"]]),
]  # fmt: skip


class _Progress:
    async def report(self, *args: Any, **kwargs: Any) -> None:
        """The eval has no watchers."""


def on_prompt(text: str, groups: list[list[str]]) -> list[str]:
    """The groups a story misses (each group: alternative word stems)."""
    words = re.findall(r"[a-z]+", text.lower())
    return [g[0] for g in groups if not any(stem in w for stem in g for w in words)]


async def evaluate(writer: str, words: int, seed: int) -> tuple[int, int, float]:
    model = local_model(2, writer)
    config = StoriesSettings(writer=writer)
    write = write_chat if model.endpoint.chat else write_base
    good, within, tokens, seconds = 0, 0, 0, 0.0
    for i, (premise, genre, groups) in enumerate(PROMPTS):
        out = Writing(None, _Progress(), words)  # type: ignore[arg-type]
        started = time.perf_counter()
        previous = best = None
        for draft_number in range(1, (config.drafts if model.endpoint.chat else 1) + 1):
            draft = await write(out, model.endpoint, config, premise, genre, "children", words,
                                seed + i + 1000 * (draft_number - 1), previous)  # fmt: skip
            draft.missing = missing_terms(" ".join(draft.story.paragraphs), premise_terms(premise))
            if best is None or draft.rank() < best.rank():
                best = draft
            previous = draft
            if not draft.missing:
                break
        assert best is not None
        draft = best  # what the stories service keeps: the best draft
        text = " ".join(draft.story.paragraphs)
        seconds += time.perf_counter() - started
        tokens += out.tokens
        missed = on_prompt(text, groups)
        complete = ends_cleanly(text)
        fits = 0.75 * words <= draft.story.words <= 1.25 * words
        good += not missed and complete
        within += fits
        print(f"{'ok ' if not missed and complete else 'OFF'} {draft.story.words:4d} words "
              f"{'' if fits else '(length off) '}draft {draft.number} of {out.drafts} {premise!r}"
              f"{' missing ' + ', '.join(missed) if missed else ''}"
              f"{'' if complete else ' (ends mid-sentence)'}")  # fmt: skip
    return good, within, tokens / seconds if seconds else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writer", choices=list(WRITERS), action="append")
    parser.add_argument("--words", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for writer in args.writer or list(WRITERS):
        print(f"== {writer}, {args.words} words per story")
        good, within, rate = asyncio.run(evaluate(writer, args.words, args.seed))
        print(f"{writer}: on prompt {good}/{len(PROMPTS)}, length within ±25 % "
              f"{within}/{len(PROMPTS)}, {rate:.1f} tokens/s while writing")  # fmt: skip


if __name__ == "__main__":
    main()
