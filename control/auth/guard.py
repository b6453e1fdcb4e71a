"""The one place access rules are enforced: reads `authorization: Bearer <jwt or API key>`,
checks the token (or the key: control/auth/keys.py) and the caller's current role (read from the database on every call, so a demoted or
deactivated user loses access at once) against the RPC's declared rule.

UNAUTHENTICATED: no token, or a token that is invalid, expired, of the wrong type, or whose
user is gone or inactive. PERMISSION_DENIED: a valid caller whose role is below the rule.
Ownership (may this editor change that project?) is checked by the servicers, where the
objects are loaded.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy import bindparam, exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from control.auth import keys
from control.auth import principal as principal_ctx
from control.auth.rules import AccessLevel, level_name, role_satisfies
from control.auth.streams import DEACTIVATED, SIGNED_OUT, StreamSession, StreamSessions
from control.auth.tokens import TokenError, TokenKind, TokenService
from control.db.models import Profile, RefreshToken, User, UserRole
from voxmesh.errors import PermissionDenied, Unauthenticated
from voxmesh.v1 import access_pb2

BEARER = "bearer "

_CALLER = (
    select(
        User.username,
        User.is_active,
        Profile.role,
        exists()
        .where(RefreshToken.family_id == bindparam("family"), RefreshToken.revoked_at.is_not(None))
        .correlate(None),
    )
    .join(Profile, Profile.user_id == User.id)
    .where(User.id == bindparam("user"))
)
"""Who a token's user is now, and whether its sign-in was revoked (built once; bound per call)."""


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            if value.lower().startswith(BEARER):
                return value[len(BEARER) :].strip()
            raise Unauthenticated(
                "authorization metadata must be 'Bearer <access token or API key>'"
            )
    return None


class AuthGuard:
    def __init__(
        self,
        rules: dict[str, AccessLevel],
        tokens: TokenService,
        engine: AsyncEngine,
        streams: StreamSessions | None = None,
    ) -> None:
        self._rules = rules
        self._tokens = tokens
        self._streams = streams or StreamSessions(engine)
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def __call__(
        self, method: str, context: grpc.aio.ServicerContext
    ) -> StreamSession | None:
        """Refuse the call, or let it in and return its sign-in (a stream is held to it for as
        long as it runs; None for public RPCs)."""
        principal_ctx.set_current(None)
        level = self._rules.get(method)
        if level is None:  # a method of a guarded service that no rule names: fail closed
            raise PermissionDenied(f"{method} has no access rule")
        if level == access_pb2.ACCESS_LEVEL_PUBLIC:
            return None
        token = bearer_token(context)
        if token is None:
            raise Unauthenticated(
                "sign in first: send 'authorization: Bearer <access token>' (AuthService/Login)"
            )
        if keys.is_api_key(token):
            return await self._admit_key(method, level, token)
        try:
            claims = self._tokens.decode(token, TokenKind.ACCESS)
        except TokenError as e:
            raise Unauthenticated(str(e)) from e
        # One round trip, outside any transaction: is the user active, what is their role now,
        # and has this sign-in been revoked.
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(_CALLER, {"user": claims.user_id, "family": claims.family_id})
            ).one_or_none()
        if row is None or not row.is_active:
            raise Unauthenticated(DEACTIVATED)
        username, _, role, signed_out = row
        if signed_out:
            raise Unauthenticated(SIGNED_OUT)
        _require_level(method, level, role)
        principal_ctx.set_current(principal_ctx.Principal(claims.user_id, username, role))
        return self._streams.open(claims.user_id, claims.family_id, claims.expires_at)

    async def _admit_key(self, method: str, level: AccessLevel, secret: str) -> StreamSession:
        holder = await keys.resolve(self._engine, secret)
        _require_level(method, level, holder.role, through_key=True)
        principal_ctx.set_current(
            principal_ctx.Principal(
                holder.user_id,
                holder.username,
                holder.role,
                key_id=holder.key_id,
                project_id=holder.project_id,
            )
        )
        # A stream opened with a key ends when the key is revoked (its id stands as the
        # sign-in family) or expires.
        expires = holder.expires_at or datetime.now(UTC) + KEY_STREAM_HORIZON
        return self._streams.open(holder.user_id, holder.key_id, expires)


KEY_STREAM_HORIZON = timedelta(days=3650)


def _require_level(
    method: str, level: AccessLevel, role: UserRole, *, through_key: bool = False
) -> None:
    if role_satisfies(role, level):
        return
    whom = "this API key is" if through_key else "you are"
    raise PermissionDenied(
        f"{method.rsplit('/', 1)[-1]} needs the {level_name(level)} role or higher; "
        f"{whom} {role.value.lower()}"
    )
