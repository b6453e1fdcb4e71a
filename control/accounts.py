"""Account operations shared by the UserService RPCs, the `create-user` command and the sample
data: validated user creation, token revocation, and the last-admin rule."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from control.auth import passwords
from control.db.models import Profile, RefreshToken, User, UserRole
from control.validate import text_field
from voxmesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{3,64}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,252}\.[^@\s]{1,63}$")


def check_username(username: str) -> str:
    username = username.strip()
    if not USERNAME_RE.fullmatch(username):
        raise InvalidArgument(
            "username must be 3 to 64 letters, digits, '.', '_' or '-'", field="username"
        )
    return username


def check_password(password: str, field: str = "password") -> str:
    if not passwords.MIN_LENGTH <= len(password) <= passwords.MAX_LENGTH:
        raise InvalidArgument(
            f"{field} must be {passwords.MIN_LENGTH} to {passwords.MAX_LENGTH} characters",
            field=field,
        )
    if "\x00" in password:
        raise InvalidArgument(f"{field} contains a NUL character", field=field)
    return password


def check_email(email: str) -> str | None:
    email = email.strip()
    if not email:
        return None
    if len(email) > 254 or not EMAIL_RE.fullmatch(email):
        raise InvalidArgument(f"email {email[:64]!r} is not an e-mail address", field="email")
    return email


def check_display_name(value: str) -> str:
    return text_field(value, "display_name", max_len=200)


def check_bio(value: str) -> str:
    return text_field(value, "bio", max_len=2000, multiline=True)


async def find_by_username(session: AsyncSession, username: str) -> User | None:
    found: User | None = await session.scalar(
        select(User).where(func.lower(User.username) == username.lower())
    )
    return found


NO_PASSWORD = "!service-account"  # not an Argon2 hash: no password ever verifies against it


async def create_user(
    session: AsyncSession,
    *,
    username: str,
    password: str,
    role: UserRole,
    email: str = "",
    display_name: str = "",
    user_id: uuid.UUID | None = None,
    service_account: bool = False,
) -> User:
    """Validate and add a user with its profile (flushed, not committed). A service account
    has no password (its hash is one no password matches) and acts only through API keys."""
    username = check_username(username)
    if service_account:
        if password:
            raise InvalidArgument(
                "a service account has no password: leave password empty and make it API keys",
                field="password",
            )
    else:
        check_password(password)
    if await find_by_username(session, username) is not None:
        raise AlreadyExists(f"a user named {username!r} already exists", field="username")
    user = User(
        id=user_id or uuid.uuid4(),
        username=username,
        email=check_email(email),
        password_hash=(
            NO_PASSWORD if service_account else await passwords.hash_password_async(password)
        ),
        is_service_account=service_account,
        is_active=True,
        profile=Profile(role=role, display_name=check_display_name(display_name)),
    )
    session.add(user)
    await session.flush()
    return user


async def revoke_tokens(
    session: AsyncSession, *, user_id: uuid.UUID | None = None, family_id: uuid.UUID | None = None
) -> int:
    """Revoke every live refresh token of a user or of one login family; returns how many."""
    stmt = update(RefreshToken).where(RefreshToken.revoked_at.is_(None))
    if user_id is not None:
        stmt = stmt.where(RefreshToken.user_id == user_id)
    if family_id is not None:
        stmt = stmt.where(RefreshToken.family_id == family_id)
    result = await session.execute(stmt.values(revoked_at=datetime.now(UTC)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def family_revoked(session: AsyncSession, family_id: uuid.UUID) -> bool:
    """True once a sign-in has been logged out or revoked for refresh-token reuse."""
    found = await session.scalar(
        select(RefreshToken.jti)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_not(None))
        .limit(1)
    )
    return found is not None


async def ensure_other_admin(session: AsyncSession, user: User, action: str) -> None:
    """Refuse to leave Voxmesh without an active admin."""
    if user.profile.role is not UserRole.ADMIN or not user.is_active:
        return
    others = await session.scalar(
        select(func.count())
        .select_from(User)
        .join(Profile)
        .where(Profile.role == UserRole.ADMIN, User.is_active.is_(True), User.id != user.id)
    )
    if not others:
        raise FailedPrecondition(
            f"cannot {action} {user.username!r}: it is the last active admin; "
            "make another user admin first"
        )
