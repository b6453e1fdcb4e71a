"""Who is calling the current RPC. The guard sets it; servicers read it with `current()`."""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass

from control.db.models import UserRole


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    username: str
    role: UserRole
    key_id: uuid.UUID | None = None
    """Set when the caller acts through an API key rather than a sign-in."""
    project_id: uuid.UUID | None = None
    """Set when that key acts only in one project."""

    @property
    def is_admin(self) -> bool:
        return self.role is UserRole.ADMIN


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "voxmesh_principal", default=None
)


def current() -> Principal:
    """The signed-in caller. Only valid inside an RPC whose rule is not public."""
    principal = _current.get()
    if principal is None:
        raise RuntimeError("no signed-in caller in this context (is the RPC public?)")
    return principal


def set_current(principal: Principal | None) -> None:
    _current.set(principal)
