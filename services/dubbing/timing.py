"""Fits each synthesised segment to its source time slot.

For segment i (source slot start_i..end_i, next segment starting at next_i):
1. it fits its own slot at natural speed: placed as is;
2. it fits before the next segment starts: it spills into the following silence, natural speed;
3. otherwise it is sped up (WSOLA time-scale modification, `audiotsm`) just enough to end by
   next_i, at most by `max_stretch`;
4. still too long: the caller re-phrases (a shorter translation) and fits again; the next
   segment may then start up to MAX_DELAY late; anything beyond is reported as overflow
   (seconds past the next segment's start in the dub).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 16000
MAX_DELAY = 0.6
"""How much later than its source a segment may start when the previous one spilled into it."""


@dataclass
class Fit:
    audio: np.ndarray
    natural_seconds: float
    slot_seconds: float
    available_seconds: float
    stretch: float
    overflow_seconds: float
    spilled: bool


def time_stretch(audio: np.ndarray, factor: float) -> np.ndarray:
    """`audio` played `factor` times faster, pitch kept (WSOLA)."""
    if abs(factor - 1.0) < 1e-3 or len(audio) < 2048:
        return audio
    from audiotsm import wsola
    from audiotsm.io.array import ArrayReader, ArrayWriter

    reader = ArrayReader(audio.reshape(1, -1).astype(np.float32))
    writer = ArrayWriter(channels=1)
    wsola(channels=1, speed=factor).run(reader, writer)
    return np.asarray(writer.data, dtype=np.float32).reshape(-1)


def fit(audio: np.ndarray, start: float, end: float, next_start: float, max_stretch: float) -> Fit:
    natural = len(audio) / RATE
    slot = max(0.05, end - start)
    available = max(slot, next_start - start)
    if natural <= available:
        return Fit(audio, natural, slot, available, 1.0, 0.0, natural > slot)
    factor = min(natural / available, max_stretch)
    stretched = time_stretch(audio, factor)
    length = len(stretched) / RATE
    return Fit(stretched, natural, slot, available, factor, max(0.0, length - available), True)
