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
