"""The access rule of every RPC, read from the `(voxmesh.v1.access)` option in the protos.

The protos are the one place a rule is declared; this module turns them into a table keyed by
full method name ("/voxmesh.v1.JobService/CreateJob"), and refuses to build one if any RPC of a
served service lacks a rule, so a new RPC can never be served unguarded by accident.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor

from control.db.models import UserRole
from voxmesh.v1 import access_pb2

AccessLevel = int  # an access_pb2.AccessLevel value

# The least access level each role satisfies.
ROLE_LEVEL: dict[UserRole, int] = {
    UserRole.VIEWER: access_pb2.ACCESS_LEVEL_VIEWER,
    UserRole.EDITOR: access_pb2.ACCESS_LEVEL_EDITOR,
    UserRole.ADMIN: access_pb2.ACCESS_LEVEL_ADMIN,
}


def method_rules(services: Iterable[descriptor.ServiceDescriptor]) -> dict[str, AccessLevel]:
    rules: dict[str, AccessLevel] = {}
    missing: list[str] = []
    for service in services:
        for method in service.methods:
            name = f"/{service.full_name}/{method.name}"
            level: int = method.GetOptions().Extensions[access_pb2.access]  # type: ignore[index]
            if level == access_pb2.ACCESS_LEVEL_UNSPECIFIED:
                missing.append(name)
            rules[name] = level
    if missing:
        raise RuntimeError(f"RPCs without an access rule: {', '.join(missing)}")
    return rules


def role_satisfies(role: UserRole, level: AccessLevel) -> bool:
    return ROLE_LEVEL[role] >= level


def level_name(level: AccessLevel) -> str:
    return access_pb2.AccessLevel.Name(level).removeprefix("ACCESS_LEVEL_").lower()
