"""AuthService: Login, RefreshToken (rotating, with reuse detection), VerifyToken, Logout."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
from sqlalchemy import update

from control import accounts
from control.app import ControlApp
from control.auth import passwords
from control.auth.streams import SIGNED_OUT
from control.auth.throttle import LoginThrottle
from control.auth.tokens import Claims, TokenError, TokenKind
from control.convert import role_to_pb, ts, user_to_pb
from control.db.models import RefreshToken, User
from voxmesh.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from voxmesh.v1 import auth_pb2, auth_pb2_grpc

WRONG_CREDENTIALS = "wrong username or password"


class AuthService(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app
        self.throttle = LoginThrottle()

    async def _issue_pair(
        self, session: object, user_id: uuid.UUID, family: uuid.UUID
    ) -> auth_pb2.TokenPair:
        tokens = self.app.tokens
        access = tokens.issue(user_id, TokenKind.ACCESS, family_id=family)
        refresh = tokens.issue(user_id, TokenKind.REFRESH, family_id=family)
        session.add(  # type: ignore[attr-defined]
            RefreshToken(
                jti=refresh.claims.token_id,
                family_id=family,
                user_id=user_id,
                issued_at=refresh.claims.issued_at,
                expires_at=refresh.claims.expires_at,
            )
        )
        return auth_pb2.TokenPair(
            access_token=access.token,
            access_expires_at=ts(access.claims.expires_at),
            refresh_token=refresh.token,
            refresh_expires_at=ts(refresh.claims.expires_at),
            token_type="Bearer",
        )

    async def Login(
        self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.LoginResponse:
        if not request.username.strip():
            raise InvalidArgument("username is required", field="username")
        if not request.password:
            raise InvalidArgument("password is required", field="password")
        if len(request.username) > 64 or len(request.password) > passwords.MAX_LENGTH:
            raise Unauthenticated(WRONG_CREDENTIALS)
        username = request.username.strip()
        wait = self.throttle.admit(username)  # counted as a failure until it succeeds
        if wait > 0:
            raise ResourceExhausted(
                f"too many failed sign-ins for this username; try again in {int(wait) + 1} s"
            )
        async with self.app.sessions() as session:
            user = await accounts.find_by_username(session, username)
            ok = await passwords.verify_password_async(
                user.password_hash if user else None, request.password
            )
            if user is None or not ok:
                raise Unauthenticated(WRONG_CREDENTIALS)
            self.throttle.succeeded(username)
            if not user.is_active:
                raise Unauthenticated("this account has been deactivated; ask an admin")
            if passwords.needs_rehash(user.password_hash):
                user.password_hash = await passwords.hash_password_async(request.password)
            user.last_login_at = datetime.now(UTC)
            pair = await self._issue_pair(session, user.id, uuid.uuid4())
            await session.commit()
            return auth_pb2.LoginResponse(tokens=pair, user=user_to_pb(user))

    def _decode(self, token: str, kind: TokenKind | None, field: str) -> Claims:
        if not token:
            raise InvalidArgument(f"{field} is required", field=field)
        try:
            return self.app.tokens.decode(token, kind)
        except TokenError as e:
            raise Unauthenticated(str(e)) from e

    async def RefreshToken(
        self, request: auth_pb2.RefreshTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RefreshTokenResponse:
        claims = self._decode(request.refresh_token, TokenKind.REFRESH, "refresh_token")
        now = datetime.now(UTC)
        async with self.app.sessions() as session:
            # Claim the token atomically: of two concurrent uses, exactly one wins.
            claimed = await session.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.jti == claims.token_id,
                    RefreshToken.used_at.is_(None),
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > now,
                )
                .values(used_at=now)
                .returning(RefreshToken.family_id)
            )
            family = claimed.scalar_one_or_none()
            if family is None:
                known = await session.get(RefreshToken, claims.token_id)
                if known is None:
                    raise Unauthenticated("refresh token is unknown to this server")
                if known.used_at is not None:
                    # Reuse of a rotated token means it leaked: end every session of the login.
                    await accounts.revoke_tokens(session, family_id=known.family_id)
                    await session.commit()
                    self.app.streams.end(family_id=known.family_id, reason=SIGNED_OUT)
                    raise Unauthenticated(
                        "refresh token was already used; every session of that sign-in has "
                        "been revoked — sign in again"
                    )
                raise Unauthenticated("refresh token has been revoked; sign in again")
            user = await session.get(User, claims.user_id)
            if user is None or not user.is_active:
                raise Unauthenticated("this account no longer exists or has been deactivated")
            pair = await self._issue_pair(session, user.id, family)
            await session.commit()
            return auth_pb2.RefreshTokenResponse(tokens=pair)

    async def VerifyToken(
        self, request: auth_pb2.VerifyTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.VerifyTokenResponse:
        claims = self._decode(request.token, None, "token")
        async with self.app.sessions() as session:
            user = await session.get(User, claims.user_id)
            if user is None or not user.is_active:
                raise Unauthenticated("this account no longer exists or has been deactivated")
            if claims.family_id and await accounts.family_revoked(session, claims.family_id):
                raise Unauthenticated("token belongs to a session that has been signed out")
            if claims.kind is TokenKind.REFRESH:
                row = await session.get(RefreshToken, claims.token_id)
                if row is None or row.used_at is not None:
                    raise Unauthenticated("refresh token has already been used or is unknown")
        return auth_pb2.VerifyTokenResponse(
            user_id=str(user.id),
            username=user.username,
            role=role_to_pb(user.profile.role),
            token_type=(
                auth_pb2.TOKEN_TYPE_ACCESS
                if claims.kind is TokenKind.ACCESS
                else auth_pb2.TOKEN_TYPE_REFRESH
            ),
            issued_at=ts(claims.issued_at),
            expires_at=ts(claims.expires_at),
            token_id=str(claims.token_id),
        )

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.LogoutResponse:
        claims = self._decode(request.refresh_token, TokenKind.REFRESH, "refresh_token")
        assert claims.family_id is not None
        async with self.app.sessions() as session:
            revoked = await accounts.revoke_tokens(session, family_id=claims.family_id)
            await session.commit()
        self.app.streams.end(family_id=claims.family_id, reason=SIGNED_OUT)
        return auth_pb2.LogoutResponse(revoked_tokens=revoked)
