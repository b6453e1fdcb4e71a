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
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control import accounts
from control.auth import principal as principal_ctx
from control.auth.rules import AccessLevel, level_name, role_satisfies
from control.auth.tokens import TokenError, TokenKind, TokenService
from control.db.models import User
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
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        self._rules = rules
        self._tokens = tokens
        self._sessions = sessions

    async def __call__(self, method: str, context: grpc.aio.ServicerContext) -> None:
        principal_ctx.set_current(None)
        level = self._rules.get(method)
        if level is None:  # a method of a guarded service that no rule names: fail closed
            raise PermissionDenied(f"{method} has no access rule")
        if level == access_pb2.ACCESS_LEVEL_PUBLIC:
            return
        token = bearer_token(context)
        if token is None:
            raise Unauthenticated(
                "sign in first: send 'authorization: Bearer <access token>' (AuthService/Login)"
            )
        try:
            claims = self._tokens.decode(token, TokenKind.ACCESS)
        except TokenError as e:
            raise Unauthenticated(str(e)) from e
        async with self._sessions() as session:
            user = await session.get(User, claims.user_id)
            if user is None or not user.is_active:
                raise Unauthenticated("this account no longer exists or has been deactivated")
            if claims.family_id and await accounts.family_revoked(session, claims.family_id):
                raise Unauthenticated("this session has been signed out; sign in again")
        role = user.profile.role
        if not role_satisfies(role, level):
            raise PermissionDenied(
                f"{method.rsplit('/', 1)[-1]} needs the {level_name(level)} role or higher; "
                f"you are {role.value.lower()}"
            )
        principal_ctx.set_current(principal_ctx.Principal(user.id, user.username, role))
