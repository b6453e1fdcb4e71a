"""What the callers of the control plane hear when a part it depends on is down: PostgreSQL or
NATS unreachable is UNAVAILABLE with a sentence (gRPC clients retry UNAVAILABLE), never
INTERNAL. The interceptor asks `unavailable(exc)` before treating an exception as a bug."""

from __future__ import annotations

import psycopg
from nats.errors import Error as NatsError
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


def unavailable(exc: BaseException) -> ApiError | None:
    """The status for an outage behind `exc`, or None if it is not one."""
    if isinstance(exc, OperationalError | InterfaceError | psycopg.OperationalError):
        return Unavailable(DATABASE_DOWN)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return Unavailable(DATABASE_DOWN)
    if isinstance(exc, NatsError):
        return Unavailable(MESH_DOWN)
    if isinstance(exc, ConnectionError | TimeoutError) and exc.__cause__ is not None:
        return unavailable(exc.__cause__)
    return None
