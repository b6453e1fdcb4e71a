"""JWT access and refresh tokens (PyJWT, HS256).

Every token carries `sub` (user id), `iat`, `nbf`, `exp`, a unique `jti`, `iss` and `typ`
("access" or "refresh"), and `fam`, the id of the sign-in it descends from: signing out revokes
the family, which ends its access tokens at once as well as its refresh tokens. Decoding pins the algorithm list to HS256, so `alg: none` and any other algorithm are
refused, requires every claim, and checks the type against what the caller expects.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import jwt

ALGORITHM = "HS256"
MIN_SECRET_LENGTH = 32
LEEWAY_SECONDS = 5


class TokenKind(StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"


class TokenError(Exception):
    """A token that must not be accepted; the message says why, for the caller."""


@dataclass(frozen=True)
class Claims:
    user_id: uuid.UUID
    kind: TokenKind
    token_id: uuid.UUID
    issued_at: datetime
    expires_at: datetime
    family_id: uuid.UUID | None = None


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: Claims


class TokenService:
    def __init__(
        self, secret: str, *, issuer: str, access_ttl: timedelta, refresh_ttl: timedelta
    ) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"the JWT signing secret must be at least {MIN_SECRET_LENGTH} characters"
            )
        self._secret = secret
        self._issuer = issuer
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def issue(
        self, user_id: uuid.UUID, kind: TokenKind, *, family_id: uuid.UUID | None = None
    ) -> IssuedToken:
        now = datetime.now(UTC).replace(microsecond=0)
        ttl = self.access_ttl if kind is TokenKind.ACCESS else self.refresh_ttl
        claims = Claims(
            user_id=user_id,
            kind=kind,
            token_id=uuid.uuid4(),
            issued_at=now,
            expires_at=now + ttl,
            family_id=family_id,
        )
        payload: dict[str, object] = {
            "sub": str(user_id),
            "typ": kind.value,
            "jti": str(claims.token_id),
            "iss": self._issuer,
            "iat": now,
            "nbf": now,
            "exp": claims.expires_at,
        }
        if claims.family_id is not None:
            payload["fam"] = str(claims.family_id)
        return IssuedToken(jwt.encode(payload, self._secret, algorithm=ALGORITHM), claims)

    def decode(self, token: str, expected: TokenKind | None = None) -> Claims:
        """Verified claims of `token`, or TokenError saying why it is refused."""
        if not token:
            raise TokenError("no token given")
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["sub", "typ", "jti", "iss", "iat", "exp"]},
            )
        except jwt.ExpiredSignatureError as e:
            raise TokenError("token has expired; sign in again or refresh it") from e
        except jwt.InvalidAlgorithmError as e:
            raise TokenError("token is signed with an algorithm this server does not accept") from e
        except jwt.InvalidSignatureError as e:
            raise TokenError("token signature is not valid for this server") from e
        except jwt.MissingRequiredClaimError as e:
            raise TokenError(f"token lacks the required claim {e.claim!r}") from e
        except jwt.InvalidIssuerError as e:
            raise TokenError("token was issued by someone else") from e
        except jwt.ImmatureSignatureError as e:
            raise TokenError("token is not valid yet") from e
        except jwt.DecodeError as e:
            raise TokenError("token is malformed") from e
        except jwt.InvalidTokenError as e:
            raise TokenError(f"token is invalid: {e}") from e

        try:
            kind = TokenKind(payload["typ"])
            user_id = uuid.UUID(str(payload["sub"]))
            token_id = uuid.UUID(str(payload["jti"]))
            family = payload.get("fam")
            family_id = uuid.UUID(str(family)) if family is not None else None
        except ValueError as e:
            raise TokenError("token claims are malformed") from e
        if expected is not None and kind is not expected:
            raise TokenError(
                f"a {kind.value} token was given where a {expected.value} token is needed"
            )
        if kind is TokenKind.REFRESH and family_id is None:
            raise TokenError("refresh token lacks its family claim")
        return Claims(
            user_id=user_id,
            kind=kind,
            token_id=token_id,
            issued_at=datetime.fromtimestamp(int(payload["iat"]), UTC),
            expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
            family_id=family_id,
        )
