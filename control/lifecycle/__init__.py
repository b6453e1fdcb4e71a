"""The one owner of job state: `states` is the table of states and allowed transitions,
`transitions.Lifecycle` performs them (the only code that changes a job's status) and records
each as an event, and `effects` is everything that happens after the commit (KV run marks,
events to watchers, metrics, waking the dispatcher).

    lifecycle = Lifecycle(session)
    lifecycle.cancel(job, by="ana")     # FailedPrecondition if the table forbids it
    await session.commit()
    await lifecycle.after_commit(mesh)
"""
