"""Quality bounds, measured: every bound a test holds a model to is checked here, and the value
measured is appended to `.test-output/quality.jsonl` (test, metric, value, bound), so bounds are
set from the spread of many runs (fresh clones, loaded machines) with a margin, not guessed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

LOG = Path(__file__).resolve().parents[1] / ".test-output" / "quality.jsonl"


def at_most(metric: str, value: float, bound: float, detail: Any = None) -> None:
    _record(metric, value, bound, "<=")
    assert value <= bound, (metric, value, bound, detail)


def at_least(metric: str, value: float, bound: float, detail: Any = None) -> None:
    _record(metric, value, bound, ">=")
    assert value >= bound, (metric, value, bound, detail)


def _record(metric: str, value: float, bound: float, op: str) -> None:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    with LOG.open("a") as out:
        out.write(json.dumps({"time": time.time(), "test": test, "metric": metric,
                              "value": round(float(value), 4), "bound": bound, "op": op}) + "\n")  # fmt: skip
