"""Fits a VoiceProfile to a reference: the reference's pitch statistics and mean spectral
envelope, then the envelope warp and equalisation that bring calibration speech of the base
voice closest to the reference, as the fitting encoder (d-vector) judges it."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from voxmesh.speech import voice_profile
from voxmesh.speech.speaker import DVectorEncoder, cosine
from voxmesh.speech.voice_profile import VoiceProfile

CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "She sells sea shells by the sea shore, while the children play on warm yellow sand."
)
WARPS = (0.88, 0.94, 1.0, 1.06, 1.12)
EQS = (0.0, 0.5, 1.0)
CANDIDATES = list(itertools.product(WARPS, EQS))


def fit(
    reference: np.ndarray,
    calibration: np.ndarray,
    base_voice: str,
    encoder: DVectorEncoder,
    step: Callable[[int, int], None] = lambda done, total: None,
) -> tuple[VoiceProfile, float]:
    """The best profile for `reference` (16 kHz), and its fitting score."""
    ref = voice_profile.analyse(reference)
    mean, std = voice_profile.pitch_stats(ref.f0)
    target = encoder.embed(reference)
    profile = VoiceProfile(
        base_voice=base_voice, f0_log_mean=mean, f0_log_std=std,
        envelope=voice_profile.mean_envelope(ref).tolist(), embedding=target.tolist(),
    )  # fmt: skip
    calibration_analysis = voice_profile.analyse(calibration)
    best, best_score = (1.0, 1.0), -2.0
    for i, (warp, eq) in enumerate(CANDIDATES):
        profile.warp, profile.eq = warp, eq
        converted = voice_profile.convert(calibration, profile, calibration_analysis)
        score = cosine(target, encoder.embed(converted))
        if score > best_score:
            best, best_score = (warp, eq), score
        step(i + 1, len(CANDIDATES))
    profile.warp, profile.eq = best
    return profile, best_score
