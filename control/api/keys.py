"""KeyService: API keys for services and scripts (control/auth/keys.py says how they work)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from control.api.projects import get_project
from control.app import ControlApp
from control.auth import keys, policy, principal
from control.auth.rules import ROLE_LEVEL
from control.convert import role_from_pb, role_to_pb, ts
from control.db.models import ApiKey, User
from control.validate import text_field, uuid_field
from voxmesh.errors import InvalidArgument, NotFound, PermissionDenied
from voxmesh.v1 import keys_pb2, keys_pb2_grpc, users_pb2


def key_to_pb(key: ApiKey, owner: str) -> keys_pb2.ApiKey:
    return keys_pb2.ApiKey(
        id=str(key.id),
        name=key.name,
        owner_id=str(key.owner_id),
        owner_username=owner,
        role=role_to_pb(key.role),
        project_id=str(key.project_id) if key.project_id else "",
        prefix=key.prefix,
        create_time=ts(key.created_at),
        expire_time=ts(key.expires_at),
        last_used_time=ts(key.last_used_at),
        revoke_time=ts(key.revoked_at),
    )


def _no_keys_from_keys(action: str) -> None:
    if principal.current().key_id is not None:
        raise PermissionDenied(
            f"an API key cannot {action} API keys: sign in with a password (voxctl login)"
        )


async def _owner(session: AsyncSession, raw: str) -> User:
    who = principal.current()
    owner_id = uuid_field(raw, "owner_id", required=False) or who.user_id
    if owner_id != who.user_id and not who.is_admin:
        raise PermissionDenied("only admins may manage other users' API keys")
    owner = await session.get(User, owner_id)
    if owner is None:
        raise NotFound(f"no user with id {owner_id}", field="owner_id")
    return owner


class KeyService(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

    async def CreateApiKey(
        self, request: keys_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.CreateApiKeyResponse:
        _no_keys_from_keys("create")
        who = principal.current()
        name = text_field(request.name, "name", min_len=1, max_len=100)
        if request.role and request.role not in users_pb2.UserRole.values():
            raise InvalidArgument(f"role {request.role} is not a known role", field="role")
        expires = None
        if request.HasField("expire_time"):
            expires = request.expire_time.ToDatetime(tzinfo=UTC)
            if expires <= datetime.now(UTC):
                raise InvalidArgument("expire_time must be in the future", field="expire_time")
        project_id = uuid_field(request.project_id, "project_id", required=False)
        async with self.app.sessions() as session:
            owner = await _owner(session, request.owner_id)
            if not owner.is_active:
                raise InvalidArgument(f"{owner.username} is deactivated", field="owner_id")
            owner_role = owner.profile.role
            role = role_from_pb(request.role) if request.role else owner_role
            if ROLE_LEVEL[role] > ROLE_LEVEL[owner_role]:
                raise PermissionDenied(
                    f"a key's role is at most its owner's: {owner.username} is "
                    f"{owner_role.value.lower()}, so the key cannot be {role.value.lower()}"
                )
            if project_id is not None:
                project = await get_project(session, project_id)
                if project.owner_id != owner.id and owner_role.value != "ADMIN":
                    policy.require_project_owner(who, project, "scope keys to it")
            secret = keys.new_secret()
            key = ApiKey(
                id=uuid.uuid4(),
                owner_id=owner.id,
                name=name,
                role=role,
                project_id=project_id,
                prefix=secret[: keys.SHOWN_CHARS],
                secret_sha256=keys.digest(secret),
                created_by=who.user_id,
                expires_at=expires,
            )
            session.add(key)
            await session.commit()
            return keys_pb2.CreateApiKeyResponse(key=key_to_pb(key, owner.username), secret=secret)

    async def ListApiKeys(
        self, request: keys_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.ListApiKeysResponse:
        who = principal.current()
        stmt = select(ApiKey, User.username).join(User, User.id == ApiKey.owner_id)
        async with self.app.sessions() as session:
            if request.all_users:
                if not who.is_admin:
                    raise PermissionDenied("only admins may list every user's API keys")
            else:
                owner = await _owner(session, request.owner_id)
                stmt = stmt.where(ApiKey.owner_id == owner.id)
            if not request.include_revoked:
                stmt = stmt.where(
                    ApiKey.revoked_at.is_(None),
                    or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > datetime.now(UTC)),
                )
            rows = (await session.execute(stmt.order_by(ApiKey.created_at.desc()))).all()
        return keys_pb2.ListApiKeysResponse(keys=[key_to_pb(k, name) for k, name in rows])

    async def RevokeApiKey(
        self, request: keys_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.RevokeApiKeyResponse:
        who = principal.current()
        key_id = uuid_field(request.key_id, "key_id", required=True)
        assert key_id is not None
        async with self.app.sessions() as session:
            key = await session.get(ApiKey, key_id, with_for_update=True)
            if key is None or (key.owner_id != who.user_id and not who.is_admin):
                raise NotFound(f"no API key with id {key_id}", field="key_id")
            if key.revoked_at is None:
                key.revoked_at = datetime.now(UTC)
            owner = await session.get(User, key.owner_id)
            await session.commit()
            assert owner is not None
            response = keys_pb2.RevokeApiKeyResponse(key=key_to_pb(key, owner.username))
        self.app.streams.end(family_id=key_id, reason=keys.KEY_REVOKED)
        return response
