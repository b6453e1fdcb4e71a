"""The model manager: every model a process uses is loaded once, by key, and kept warm.

    engine = MODELS.get(("stt", "base", "int8", 2), lambda: FasterWhisperEngine(...))

Loading is serialised per key (two jobs asking for the same model at once load it once) and
never holds a global lock while a model loads, so different models load side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class ModelManager:
    def __init__(self) -> None:
        self._models: dict[Hashable, Any] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The model under `key`, loading it with `load()` the first time."""
        found = self._models.get(key)
        if found is not None:
            return found  # type: ignore[no-any-return]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._models:
                self._models[key] = load()
            return self._models[key]  # type: ignore[no-any-return]


MODELS = ModelManager()
"""The process's models."""


def onnx_session(model: str | bytes, *, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session for a model (a path or its bytes), as every ONNX model here
    runs: `threads` for its intra-op pool (0: ONNX Runtime's choice, one per core), and threads
    that sleep when idle instead of spinning. A worker shares its cores with other workers, the
    control plane and the databases (`make run` runs them all on one machine), and a spinning
    pool takes CPU from them, and from itself whenever it has fewer cores than threads: with
    spinning off, Piper spoke the same sentences 20-25 % sooner on the 2-core VM while another
    process was busy, and as fast with 9 % less CPU when it was quiet."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
