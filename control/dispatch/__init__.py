"""How jobs travel, on the control plane's side (see voxmesh/mesh.py for the names):

1. An RPC changes a job and writes an `outbox` row in the same transaction (`journal`).
2. `dispatcher`: publishes outbox rows to VOXMESH_JOBS (Nats-Msg-Id = job.run, so a repeat is
   dropped), when the job's creator has a free slot under max_concurrent_jobs.
3. Workers report WorkerEvents to VOXMESH_EVENTS; `ingest` applies each to PostgreSQL, giving it
   the job's next sequence number (PostgreSQL is the log), and publishes it on core NATS.
4. `broadcast`: every control-plane replica hands those to its WatchJob/WatchJobs streams;
   watchers catch up from PostgreSQL, so nothing is missed across reconnects or restarts.
`runtime` starts and stops all of it; the dispatcher and ingester run on one replica at a time
(a PostgreSQL advisory lock), the broadcaster on every replica.
"""
