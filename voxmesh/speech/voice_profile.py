"""A cloned voice as a profile, and the conversion that applies it to speech.

No voice-cloning or voice-conversion weights ship in any registry package (see the cloning
service's README), so Voxmesh clones by signal processing on the WORLD vocoder (`pyworld`):
speech is analysed into pitch (F0), spectral envelope and aperiodicity; the pitch is moved to the
reference speaker's log-F0 mean and spread; the envelope is frequency-warped (vocal-tract length)
and equalised toward the reference's long-term envelope; WORLD resynthesises it. The cloning
service fits `warp` and `eq` per reference by scoring candidates with a speaker encoder; the
profile is what a saved voice keeps, and what TTS (and stories) apply to a base voice's speech.

It moves a voice measurably toward the reference (the similarity figures are in every cloning
job's result); it is not a neural clone. Hosts with real cloning weights plug them in as
engines (services/cloning/engines.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

RATE = 16000
"""Profiles and conversion work on 16 kHz mono."""
FRAME_MS = 5.0
SMOOTH_BINS = 15


@dataclass
class VoiceProfile:
    """What a saved voice keeps: no audio, only these numbers."""

    base_voice: str
    """The stock voice whose speech is converted (text-to-speech cloning)."""
    f0_log_mean: float
    f0_log_std: float
    envelope: list[float]
    """The reference's mean log spectral envelope over voiced frames (CheapTrick bins)."""
    warp: float = 1.0
    """Frequency warp of the envelope: > 1 moves formants up (a shorter vocal tract)."""
    eq: float = 1.0
    """How much of the envelope difference to the reference is applied (0..1)."""
    embedding: list[float] = field(default_factory=list)
    """The reference's speaker embedding (d-vector), for similarity checks."""
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VoiceProfile:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class Analysis:
    f0: np.ndarray
    sp: np.ndarray
    ap: np.ndarray


def analyse(audio: np.ndarray) -> Analysis:
    """WORLD analysis of 16 kHz mono float audio."""
    import pyworld

    x = np.ascontiguousarray(audio, dtype=np.float64)
    f0, times = pyworld.harvest(x, RATE, frame_period=FRAME_MS)
    sp = pyworld.cheaptrick(x, f0, times, RATE)
    ap = pyworld.d4c(x, f0, times, RATE)
    return Analysis(f0, sp, ap)


def pitch_stats(f0: np.ndarray) -> tuple[float, float]:
    voiced = f0[f0 > 0]
    if voiced.size < 20:
        raise ValueError("too little voiced speech to measure the pitch")
    log_f0 = np.log(voiced)
    return float(log_f0.mean()), float(max(log_f0.std(), 1e-3))


def mean_envelope(analysis: Analysis) -> np.ndarray:
    voiced = analysis.f0 > 0
    return np.log(analysis.sp[voiced] + 1e-12).mean(axis=0)


def convert(
    audio: np.ndarray, profile: VoiceProfile, analysis: Analysis | None = None
) -> np.ndarray:
    """`audio` (16 kHz mono) spoken in the profile's voice, peak-normalised to 0.9."""
    import pyworld

    a = analysis or analyse(audio)
    mean, std = pitch_stats(a.f0)
    safe = np.maximum(a.f0, 1.0)
    f0 = np.where(
        a.f0 > 0,
        np.exp((np.log(safe) - mean) / std * profile.f0_log_std + profile.f0_log_mean),
        0.0,
    )
    bins = a.sp.shape[1]
    freqs = np.arange(bins, dtype=np.float64)
    source = np.clip(freqs / profile.warp, 0, bins - 1)
    log_sp = np.log(a.sp + 1e-12)
    warped = np.stack([np.interp(source, freqs, row) for row in log_sp])
    target = np.asarray(profile.envelope, dtype=np.float64)
    if target.shape[0] != bins:
        raise ValueError(f"voice profile has {target.shape[0]} envelope bins, audio has {bins}")
    voiced = a.f0 > 0
    difference = target - warped[voiced].mean(axis=0)
    difference = np.convolve(difference, np.ones(SMOOTH_BINS) / SMOOTH_BINS, mode="same")
    warped += profile.eq * difference
    y = pyworld.synthesize(f0, np.exp(warped), a.ap, RATE, FRAME_MS)
    peak = float(np.max(np.abs(y))) or 1.0
    return (y / peak * 0.9).astype(np.float32)


def saved(name: str, profile: dict[str, Any] | None) -> VoiceProfile | None:
    """The project's saved voice `name`, from the profile its dispatch carried, or None when
    `name` is a stock voice. ValueError if the project no longer has it."""
    from voxmesh.speech import voices

    if not name or name in voices.CATALOG:
        return None
    if profile is None:
        raise ValueError(f"the saved voice {name!r} no longer exists in this project")
    return VoiceProfile.from_json(profile)


def apply(speech: np.ndarray, rate: int, profile: VoiceProfile) -> np.ndarray:
    """Base-voice speech at `rate`, converted into the saved voice (at the profile's RATE).
    ValueError if the profile cannot be applied."""
    from voxmesh.audio import resample

    return convert(resample(speech, rate, RATE), profile)
