"""Job states and the transitions allowed between them: the table every status change is
checked against. PENDING's three sub-states are states of their own here (and `pending_state`
in the API): waiting for StartJob, waiting for a concurrency slot, queued for a worker."""

from __future__ import annotations

import enum

from sqlalchemy import ColumnElement

from control.db.models import Job, JobStatus
from voxmesh.errors import FailedPrecondition


class State(enum.StrEnum):
    AWAITING_START = "PENDING (waiting for StartJob)"
    WAITING_FOR_SLOT = "PENDING (waiting for a free slot under max_concurrent_jobs)"
    QUEUED = "PENDING (queued for a worker)"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


def state_of(job: Job) -> State:
    if job.status is JobStatus.PENDING:
        if job.awaiting_start:
            return State.AWAITING_START
        return State.WAITING_FOR_SLOT if job.queued_at is None else State.QUEUED
    return State[job.status.name]


def waiting_for_slot_sql() -> ColumnElement[bool]:
    """state_of(job) is WAITING_FOR_SLOT, in SQL."""
    return (Job.status == JobStatus.PENDING) & ~Job.awaiting_start & Job.queued_at.is_(None)


def holding_slot_sql() -> ColumnElement[bool]:
    """state_of(job) is QUEUED or RUNNING (what counts against max_concurrent_jobs), in SQL."""
    return (Job.status == JobStatus.RUNNING) | (
        (Job.status == JobStatus.PENDING) & Job.queued_at.is_not(None)
    )


PENDING = frozenset({State.AWAITING_START, State.WAITING_FOR_SLOT, State.QUEUED})
FINISHED = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED})


class Transition(enum.StrEnum):
    CREATE = "create"
    START = "start"
    """StartJob: a job created with auto_start_jobs off may now run."""
    ADMIT = "admit"
    """The dispatcher found a slot and handed the run to JetStream."""
    WORKER_STARTED = "worker_started"
    """A worker began (or, redelivered, resumed) the run."""
    PROGRESS = "progress"
    COMPLETE = "complete"
    FAIL = "fail"
    """The worker gave up: unusable input, or failed on every delivery."""
    GIVE_UP = "give_up"
    """JetStream stopped delivering the run (max_deliver reached: workers kept dying)."""
    CANCEL = "cancel"
    RETRY = "retry"
    EDIT_PARAMS = "edit_params"
    DELETE = "delete"


ANY = frozenset(State)
DISPATCHED = frozenset({State.WAITING_FOR_SLOT, State.QUEUED})
"""States in which a worker may hold the run: QUEUED, and WAITING_FOR_SLOT too, since a publish
whose ack was lost (NATS went away just then) may still have been stored and delivered. The
run token on the worker's events proves the run was dispatched; the outbox row is then marked
done when the dispatcher next sees it."""
ALLOWED: dict[Transition, tuple[frozenset[State], State | None]] = {
    # transition:             (allowed from,                                  to)
    Transition.CREATE:         (frozenset(),                                  None),
    Transition.START:          (frozenset({State.AWAITING_START}),            State.WAITING_FOR_SLOT),
    Transition.ADMIT:          (frozenset({State.WAITING_FOR_SLOT}),          State.QUEUED),
    Transition.WORKER_STARTED: (DISPATCHED | {State.RUNNING},                 State.RUNNING),
    Transition.PROGRESS:       (frozenset({State.RUNNING}),                   State.RUNNING),
    Transition.COMPLETE:       (frozenset({State.RUNNING}),                   State.COMPLETED),
    Transition.FAIL:           (frozenset({State.RUNNING}),                   State.FAILED),
    Transition.GIVE_UP:        (DISPATCHED | {State.RUNNING},                 State.FAILED),
    Transition.CANCEL:         (PENDING | {State.RUNNING},                    State.CANCELLED),
    Transition.RETRY:          (frozenset({State.FAILED, State.CANCELLED}),   State.WAITING_FOR_SLOT),
    Transition.EDIT_PARAMS:    (frozenset({State.AWAITING_START, State.WAITING_FOR_SLOT}), None),
    Transition.DELETE:         (ANY - {State.RUNNING},                        None),
}  # fmt: skip
"""Each transition: the states it may start from, and the state it leads to (None: the state
does not change, or, for CREATE and DELETE, there is none before or after)."""

REFUSALS: dict[Transition, str] = {
    Transition.START: "only a PENDING job waiting for StartJob can be started; this one is {state}",
    Transition.CANCEL: "the job is {state}; only PENDING or RUNNING jobs can be cancelled",
    Transition.RETRY: "the job is {state}; only FAILED or CANCELLED jobs can be retried",
    Transition.EDIT_PARAMS: "parameters can only change while the job is PENDING and not yet "
    "queued for a worker; it is {state} (cancel it and create a new one, or RetryJob a "
    "finished one)",
    Transition.DELETE: "the job is {state}; cancel it before deleting it",
}
"""Why a caller's request is refused, in a sentence (a worker event that does not fit is
dropped silently instead: it is late or repeated)."""


def allowed(job: Job, transition: Transition) -> bool:
    return state_of(job) in ALLOWED[transition][0]


def require(job: Job, transition: Transition) -> State:
    """The job's state if `transition` is allowed from it; FailedPrecondition otherwise."""
    state = state_of(job)
    if state not in ALLOWED[transition][0]:
        template = REFUSALS.get(transition, "the job is {state}: it cannot " + transition.value)
        raise FailedPrecondition(template.format(state=state.value))
    return state
