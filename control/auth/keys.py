"""API keys: long-lived credentials for services (`authorization: Bearer vxk_...`).

A key is `vxk_` + 256 random bits (url-safe base64). Only its SHA-256 is stored, so the lookup
on every call is one index probe; a fast hash is enough for a secret of that entropy (the slow
password hashes exist for secrets people choose). `resolve` is what the guard calls: the key's
owner, its role now (the lower of the key's and the owner's current role), its project scope,
or UNAUTHENTICATED saying why not.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from control.auth.rules import ROLE_LEVEL
from control.db.models import ApiKey, Profile, User, UserRole
from voxmesh.errors import Unauthenticated

PREFIX = "vxk_"
SHOWN_CHARS = 12  # "vxk_" + 8: enough to tell keys apart in a list, useless to an attacker
LAST_USED_RESOLUTION = timedelta(minutes=1)

KEY_REVOKED = "this API key has been revoked"
KEY_EXPIRED = "this API key has expired"
KEY_UNKNOWN = "this API key is not valid for this server"


def is_api_key(token: str) -> bool:
    return token.startswith(PREFIX)


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def lower_role(a: UserRole, b: UserRole) -> UserRole:
    return a if ROLE_LEVEL[a] <= ROLE_LEVEL[b] else b


@dataclass(frozen=True)
class KeyHolder:
    key_id: uuid.UUID
    user_id: uuid.UUID
    username: str
    role: UserRole
    project_id: uuid.UUID | None
    expires_at: datetime | None


_HOLDER = (
    select(
        ApiKey.id,
        ApiKey.owner_id,
        ApiKey.role.label("key_role"),
        ApiKey.project_id,
        ApiKey.expires_at,
        ApiKey.last_used_at,
        ApiKey.revoked_at,
        User.username,
        User.is_active,
        Profile.role,
    )
    .join(User, User.id == ApiKey.owner_id)
    .join(Profile, Profile.user_id == User.id)
    .where(ApiKey.secret_sha256 == bindparam("digest"))
)
"""A key's holder by the key's digest (built once; bound per call)."""


async def resolve(engine: AsyncEngine, secret: str) -> KeyHolder:
    """Who acts with this key now; UNAUTHENTICATED if nobody may."""
    async with engine.connect() as conn:
        row = (await conn.execute(_HOLDER, {"digest": digest(secret)})).one_or_none()
        if row is None:
            raise Unauthenticated(KEY_UNKNOWN)
        key = row
        now = datetime.now(UTC)
        if key.revoked_at is not None:
            raise Unauthenticated(KEY_REVOKED)
        if key.expires_at is not None and key.expires_at <= now:
            raise Unauthenticated(KEY_EXPIRED)
        if not row.is_active:
            raise Unauthenticated("the owner of this API key has been deactivated")
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            # Recorded to the minute: one write per key per minute, not one per call.
            await conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key.id)
                .where(
                    or_(
                        ApiKey.last_used_at.is_(None),
                        ApiKey.last_used_at < now - LAST_USED_RESOLUTION,
                    )
                )
                .values(last_used_at=now)
            )
            await conn.commit()
    return KeyHolder(
        key_id=row.id,
        user_id=row.owner_id,
        username=row.username,
        role=lower_role(key.key_role, row.role),
        project_id=row.project_id,
        expires_at=row.expires_at,
    )
