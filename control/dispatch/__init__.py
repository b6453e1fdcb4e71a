"""How jobs travel, on the control plane's side (see voxmesh/mesh.py for the names). Every
status change goes through control/lifecycle; this package moves runs and events.

1. An RPC asks the lifecycle for a change; a new run writes an `outbox` row in the same
   transaction.
2. `dispatcher`: publishes outbox rows to VOXMESH_JOBS (Nats-Msg-Id = <job>.<run>, so a repeat
   is dropped) when the job's creator has a free slot under max_concurrent_jobs (the lifecycle's
   ADMIT: WAITING_FOR_SLOT -> QUEUED). What a run carries comes from the job's kind.
3. Workers report WorkerEvents to VOXMESH_EVENTS; `ingest` applies each through the lifecycle
   (the job's next sequence number: PostgreSQL is the log), which publishes it on core NATS
   after the commit.
4. `broadcast`: every control-plane replica hands those to its WatchJob/WatchJobs streams;
   `watch` is WatchJob's iterator (snapshot, replay, live; refill only on a gap).
`runtime` provisions the mesh and starts and stops all of it. The work is split by job id into
partitions (voxmesh/mesh.py); `leases` gives each replica its fair share of them, so every
replica dispatches and ingests its own partitions and a second replica adds capacity. The
broadcaster runs on every replica for its own watchers.
"""
