"""What the callers of the control plane hear when a part it depends on is down: PostgreSQL or
NATS unreachable is UNAVAILABLE with a sentence (gRPC clients retry UNAVAILABLE), never
INTERNAL. The interceptor asks `unavailable(exc)` before treating an exception as a bug."""

from __future__ import annotations

import nats.errors as nats_errors
import nats.js.errors as js_errors
import psycopg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from voxmesh.errors import ApiError, Unavailable

DATABASE_DOWN = (
    "the database is unreachable right now; this request was not completed, try again in a "
    "few seconds"
)
MESH_DOWN = (
    "the job mesh (NATS) is unreachable right now; this request was not completed, try again "
    "in a few seconds"
)


# NATS errors that mean "NATS is not reachable (right now)"; others (a bad request, an object
# that is not there) are not outages and are handled, or are bugs, where they happen.
MESH_OUTAGES = (
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.ConnectionDrainingError,
    nats_errors.NoServersError,
    nats_errors.StaleConnectionError,
    nats_errors.TimeoutError,
    nats_errors.FlushTimeoutError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.NoRespondersError,
    js_errors.ServiceUnavailableError,
)


def unavailable(exc: BaseException) -> ApiError | None:
    """The status for an outage behind `exc`, or None if it is not one."""
    if isinstance(exc, OperationalError | InterfaceError | psycopg.OperationalError):
        return Unavailable(DATABASE_DOWN)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return Unavailable(DATABASE_DOWN)
    if isinstance(exc, MESH_OUTAGES):
        return Unavailable(MESH_DOWN)
    if isinstance(exc, ConnectionError | TimeoutError) and exc.__cause__ is not None:
        return unavailable(exc.__cause__)
    return None
