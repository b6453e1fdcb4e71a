"""Named stages with one table of progress ranges per job type, so a handler says where it is
("synthesising", 3 of 10 done) and the table alone decides the percentages.

    PROGRESS = {"decoding": (0, 3), "transcribing": (3, 25), ...}   # the job type's table
    stages = Stages(ctx, PROGRESS)
    await stages.report("synthesising", done=3 / 10, message="segment 3 of 10")

A long handler is a list of stage functions over one state object, run in order by `run`:
each gets the stages (to report within its range) and the state it reads and fills in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

from voxmesh.worker import JobContext, Output

S = TypeVar("S")
ProgressTable = Mapping[str, tuple[float, float]]
Stage = Callable[["Stages", S], Awaitable[None]]


class Stages(Generic[S]):
    def __init__(self, ctx: JobContext, table: ProgressTable) -> None:
        self.ctx = ctx
        self.table = table
        for name, (low, high) in table.items():
            if not 0 <= low <= high <= 100:
                raise ValueError(f"stage {name!r}: range {low}-{high} is not within 0-100")

    async def report(
        self, stage: str, done: float = 0.0, message: str = "", *, coalesce: bool = False,
        part: Output | None = None,
    ) -> None:  # fmt: skip
        """Progress at fraction `done` (0-1) of `stage`'s range; a cancellation checkpoint."""
        low, high = self.table[stage]
        percent = low + (high - low) * min(1.0, max(0.0, done))
        await self.ctx.progress(percent, stage, message, coalesce=coalesce, part=part)

    async def run(self, state: S, stages: Sequence[tuple[str, Stage[S]]]) -> S:
        """Run each stage function in order over `state`; each starts by reporting its stage."""
        for name, stage in stages:
            await self.report(name)
            await stage(self, state)
        return state
