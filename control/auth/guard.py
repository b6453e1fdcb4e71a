"""The one place access rules are enforced: reads `authorization: Bearer <jwt>`, checks the
token and the caller's current role (read from the database on every call, so a demoted or
deactivated user loses access at once) against the RPC's declared rule.

UNAUTHENTICATED: no token, or a token that is invalid, expired, of the wrong type, or whose
user is gone or inactive. PERMISSION_DENIED: a valid caller whose role is below the rule.
Ownership (may this editor change that project?) is checked by the servicers, where the
objects are loaded.
"""

from __future__ import annotations

import grpc
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from control.auth import principal as principal_ctx
from control.auth.rules import AccessLevel, level_name, role_satisfies
from control.auth.streams import DEACTIVATED, SIGNED_OUT, StreamSession, StreamSessions
from control.auth.tokens import TokenError, TokenKind, TokenService
from control.db.models import Profile, RefreshToken, User
from voxmesh.errors import PermissionDenied, Unauthenticated
from voxmesh.v1 import access_pb2

BEARER = "bearer "


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            if value.lower().startswith(BEARER):
                return value[len(BEARER) :].strip()
            raise Unauthenticated("authorization metadata must be 'Bearer <access token>'")
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
        try:
            claims = self._tokens.decode(token, TokenKind.ACCESS)
        except TokenError as e:
            raise Unauthenticated(str(e)) from e
        # One round trip, outside any transaction: is the user active, what is their role now,
        # and has this sign-in been revoked.
        revoked = (
            exists()
            .where(RefreshToken.family_id == claims.family_id, RefreshToken.revoked_at.is_not(None))
            .correlate(None)
        )
        stmt = (
            select(User.username, User.is_active, Profile.role, revoked)
            .join(Profile, Profile.user_id == User.id)
            .where(User.id == claims.user_id)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).one_or_none()
        if row is None or not row.is_active:
            raise Unauthenticated(DEACTIVATED)
        username, _, role, signed_out = row
        if signed_out:
            raise Unauthenticated(SIGNED_OUT)
        if not role_satisfies(role, level):
            raise PermissionDenied(
                f"{method.rsplit('/', 1)[-1]} needs the {level_name(level)} role or higher; "
                f"you are {role.value.lower()}"
            )
        principal_ctx.set_current(principal_ctx.Principal(claims.user_id, username, role))
        return self._streams.open(claims.user_id, claims.family_id, claims.expires_at)
