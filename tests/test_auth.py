"""Login, rotating refresh tokens with reuse detection, token types and signatures, logout,
and the signing-secret rules."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import stat
import time
import uuid
from datetime import timedelta
from pathlib import Path

import grpc
import jwt
import pytest
from google.protobuf import field_mask_pb2
from pydantic import SecretStr

from control.auth.tokens import TokenKind, TokenService
from control.config import AuthSettings, ControlSettings
from control.db.models import UserRole
from control.server import ConfigurationError, jwt_secret
from tests.conftest import TEST_SECRET
from tests.harness import Harness, rpc_error
from voxmesh.v1 import auth_pb2, users_pb2


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_login_returns_tokens_and_user(harness: Harness) -> None:
    viewer = await harness.user(UserRole.VIEWER, login=False)
    response = await harness.anonymous.auth.Login(
        auth_pb2.LoginRequest(username=viewer.username.upper(), password=viewer.password)
    )
    assert response.user.username == viewer.username  # usernames are case-insensitive
    assert response.user.profile.role == users_pb2.USER_ROLE_VIEWER
    assert response.tokens.token_type == "Bearer"
    assert response.tokens.access_token and response.tokens.refresh_token
    access = jwt.decode(
        response.tokens.access_token, TEST_SECRET, algorithms=["HS256"], issuer="voxmesh"
    )
    assert access["typ"] == "access" and access["sub"] == str(viewer.user_id)
    assert {"exp", "iat", "jti", "nbf", "fam"} <= set(access)
    me = await harness.client(response.tokens.access_token).users.GetCurrentUser(
        users_pb2.GetCurrentUserRequest()
    )
    assert me.user.id == str(viewer.user_id)
    assert me.user.HasField("last_login_time")


async def test_wrong_password_and_unknown_user_look_the_same(harness: Harness) -> None:
    viewer = await harness.user(UserRole.VIEWER, login=False)
    wrong = await rpc_error(
        harness.anonymous.auth.Login(
            auth_pb2.LoginRequest(username=viewer.username, password="nope-nope")
        )
    )
    unknown = await rpc_error(
        harness.anonymous.auth.Login(auth_pb2.LoginRequest(username="nobody", password="nope-nope"))
    )
    assert wrong.code() == unknown.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.details() == unknown.details() == "wrong username or password"
    empty = await rpc_error(harness.anonymous.auth.Login(auth_pb2.LoginRequest(username="x")))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "password is required" in (empty.details() or "")


async def test_refresh_token_rotates_and_reuse_revokes_the_family(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    auth = harness.anonymous.auth
    first = await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=editor.refresh))
    assert first.tokens.refresh_token != editor.refresh
    second = await auth.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=first.tokens.refresh_token)
    )
    # The rotated-out token is reused (as a thief would): refused, and the family is revoked...
    reuse = await rpc_error(
        auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=editor.refresh))
    )
    assert reuse.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "already used" in (reuse.details() or "")
    # ...so the newest refresh token of that family no longer works either,
    latest = await rpc_error(
        auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=second.tokens.refresh_token))
    )
    assert latest.code() == grpc.StatusCode.UNAUTHENTICATED
    # nor do its access tokens.
    stale = await rpc_error(
        harness.client(second.tokens.access_token).users.GetCurrentUser(
            users_pb2.GetCurrentUserRequest()
        )
    )
    assert stale.code() == grpc.StatusCode.UNAUTHENTICATED
    # A separate login is a separate family and still works.
    await harness.login(editor)
    await editor.client.users.GetCurrentUser(users_pb2.GetCurrentUserRequest())


async def test_token_types_are_not_interchangeable(harness: Harness) -> None:
    viewer = await harness.user(UserRole.VIEWER)
    as_access = await rpc_error(
        harness.client(viewer.refresh).users.GetCurrentUser(users_pb2.GetCurrentUserRequest())
    )
    assert as_access.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "refresh token was given where a access token is needed" in (as_access.details() or "")
    as_refresh = await rpc_error(
        harness.anonymous.auth.RefreshToken(
            auth_pb2.RefreshTokenRequest(refresh_token=viewer.access)
        )
    )
    assert as_refresh.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "access token was given where a refresh token is needed" in (as_refresh.details() or "")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_alg_none_and_foreign_keys_are_refused(harness: Harness) -> None:
    viewer = await harness.user(UserRole.VIEWER)
    claims = jwt.decode(viewer.access, TEST_SECRET, algorithms=["HS256"], issuer="voxmesh")
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    other_key = jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256")
    other_alg = jwt.encode(claims, TEST_SECRET, algorithm="HS512")
    for token, why in [
        (unsigned, "algorithm"),
        (other_key, "signature"),
        (other_alg, "algorithm"),
        ("garbage", "malformed"),
    ]:
        err = await rpc_error(
            harness.client(token).users.GetCurrentUser(users_pb2.GetCurrentUserRequest())
        )
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, token
        assert why in (err.details() or ""), (why, err.details())
    scheme = await rpc_error(
        harness.anonymous.users.GetCurrentUser(
            users_pb2.GetCurrentUserRequest(),
            metadata=(("authorization", f"Basic {viewer.access}"),),
        )
    )
    assert scheme.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_expired_access_token_is_refused(harness: Harness) -> None:
    viewer = await harness.user(UserRole.VIEWER)
    short = TokenService(
        TEST_SECRET,
        issuer="voxmesh",
        access_ttl=timedelta(seconds=-30),
        refresh_ttl=timedelta(days=1),
    )
    issued = short.issue(viewer.user_id, TokenKind.ACCESS)
    err = await rpc_error(
        harness.client(issued.token).users.GetCurrentUser(users_pb2.GetCurrentUserRequest())
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (err.details() or "")


async def test_verify_token(harness: Harness) -> None:
    admin = await harness.user(UserRole.ADMIN)
    info = await harness.anonymous.auth.VerifyToken(auth_pb2.VerifyTokenRequest(token=admin.access))
    assert info.user_id == str(admin.user_id)
    assert info.role == users_pb2.USER_ROLE_ADMIN
    assert info.token_type == auth_pb2.TOKEN_TYPE_ACCESS
    assert info.expires_at.seconds - info.issued_at.seconds == 15 * 60
    refresh = await harness.anonymous.auth.VerifyToken(
        auth_pb2.VerifyTokenRequest(token=admin.refresh)
    )
    assert refresh.token_type == auth_pb2.TOKEN_TYPE_REFRESH
    bad = await rpc_error(
        harness.anonymous.auth.VerifyToken(auth_pb2.VerifyTokenRequest(token="x.y.z"))
    )
    assert bad.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_logout_ends_the_session_at_once(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    out = await harness.anonymous.auth.Logout(auth_pb2.LogoutRequest(refresh_token=editor.refresh))
    assert out.revoked_tokens == 1
    for call in (
        editor.client.users.GetCurrentUser(users_pb2.GetCurrentUserRequest()),
        harness.anonymous.auth.RefreshToken(
            auth_pb2.RefreshTokenRequest(refresh_token=editor.refresh)
        ),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_deactivation_and_demotion_take_effect_immediately(harness: Harness) -> None:
    admin = await harness.user(UserRole.ADMIN)
    editor = await harness.user(UserRole.EDITOR)
    mask = field_mask_pb2.FieldMask
    await admin.client.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user_id=str(editor.user_id),
            update_mask=mask(paths=["role"]),
            role=users_pb2.USER_ROLE_VIEWER,
        )
    )
    from voxmesh.v1 import projects_pb2

    denied = await rpc_error(
        editor.client.projects.CreateProject(projects_pb2.CreateProjectRequest(name="x"))
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    await admin.client.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user_id=str(editor.user_id), update_mask=mask(paths=["is_active"]), is_active=False
        )
    )
    gone = await rpc_error(editor.client.users.GetCurrentUser(users_pb2.GetCurrentUserRequest()))
    assert gone.code() == grpc.StatusCode.UNAUTHENTICATED
    login = await rpc_error(
        harness.anonymous.auth.Login(
            auth_pb2.LoginRequest(username=editor.username, password=editor.password)
        )
    )
    assert "deactivated" in (login.details() or "")


async def test_change_password_revokes_sessions(harness: Harness) -> None:
    viewer = await harness.user(UserRole.VIEWER)
    await viewer.client.users.ChangePassword(
        users_pb2.ChangePasswordRequest(
            current_password=viewer.password, new_password="new-password-1"
        )
    )
    old = await rpc_error(viewer.client.users.GetCurrentUser(users_pb2.GetCurrentUserRequest()))
    assert old.code() == grpc.StatusCode.UNAUTHENTICATED
    viewer.password = "new-password-1"
    await harness.login(viewer)
    await viewer.client.users.GetCurrentUser(users_pb2.GetCurrentUserRequest())


def test_secret_is_required_with_an_external_database(tmp_path: Path) -> None:
    settings = ControlSettings(data_dir=tmp_path, database_url="postgresql://db.example/voxmesh")
    with pytest.raises(ConfigurationError, match="VOXMESH_AUTH__JWT_SECRET is not set"):
        jwt_secret(settings)
    short = ControlSettings(
        data_dir=tmp_path,
        database_url="postgresql://x/y",
        auth=AuthSettings(jwt_secret=SecretStr("short")),
    )
    with pytest.raises(ConfigurationError, match="at least 32"):
        jwt_secret(short)


def test_embedded_mode_generates_and_keeps_a_secret(tmp_path: Path) -> None:
    settings = ControlSettings(data_dir=tmp_path, database_url=None)
    first = jwt_secret(settings)
    assert len(first) >= 32
    assert jwt_secret(settings) == first  # kept across restarts
    mode = (tmp_path / "jwt-secret").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_token_service_rejects_tampering() -> None:
    service = TokenService(
        TEST_SECRET,
        issuer="voxmesh",
        access_ttl=timedelta(minutes=5),
        refresh_ttl=timedelta(days=1),
    )
    issued = service.issue(uuid.uuid4(), TokenKind.REFRESH, family_id=uuid.uuid4())
    head, body, sig = issued.token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["sub"] = str(uuid.uuid4())
    forged = f"{head}.{_b64(payload)}.{sig}"
    from control.auth.tokens import TokenError

    with pytest.raises(TokenError, match="signature"):
        service.decode(forged)
    assert service.decode(issued.token, TokenKind.REFRESH).expires_at.timestamp() > time.time()


async def test_password_guessing_is_throttled(harness: Harness) -> None:
    from control.auth.throttle import FREE_FAILURES

    viewer = await harness.user(UserRole.VIEWER, login=False)
    for name in (viewer.username, "no_such_user"):  # the same answer for unknown usernames
        for _ in range(FREE_FAILURES):
            err = await rpc_error(
                harness.anonymous.auth.Login(
                    auth_pb2.LoginRequest(username=name, password="guess-guess")
                )
            )
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        locked = await rpc_error(
            harness.anonymous.auth.Login(
                auth_pb2.LoginRequest(username=name.upper(), password="guess-guess")
            )
        )
        assert locked.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        wait = re.search(r"too many failed sign-ins.*try again in (\d+) s", locked.details() or "")
        # The 30 s lock began when the 5th attempt was admitted, before its (slow, on a loaded
        # machine) password check: a few seconds may have passed since.
        assert wait is not None and 15 <= int(wait.group(1)) <= 31, locked.details()
    # Even the right password waits out the lockout; another user is not affected.
    still = await rpc_error(
        harness.anonymous.auth.Login(
            auth_pb2.LoginRequest(username=viewer.username, password=viewer.password)
        )
    )
    assert still.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    other = await harness.user(UserRole.VIEWER)
    assert other.access


async def test_parallel_guesses_are_throttled_too(harness: Harness) -> None:
    """Attack: 40 wrong guesses sent at once on a fresh account were all checked, because the
    lock was looked at before any of them had failed. Each attempt is now counted first."""
    from control.auth.throttle import FREE_FAILURES

    viewer = await harness.user(UserRole.VIEWER, login=False)
    calls = [
        harness.anonymous.auth.Login(
            auth_pb2.LoginRequest(username=viewer.username, password=f"guess-{i:04d}")
        )
        for i in range(40)
    ]
    errors = await asyncio.gather(*(rpc_error(call) for call in calls))
    codes = [e.code() for e in errors]
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) == FREE_FAILURES, codes
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 40 - FREE_FAILURES, codes


def test_after_a_lock_one_attempt_is_checked_before_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: once a lock expired, 40 parallel attempts (the right password among them) were
    all checked. Now the first admitted attempt re-arms the lock before its password check."""
    from control.auth import throttle

    now = [1000.0]
    guard = throttle.LoginThrottle()
    monkeypatch.setattr(guard, "_now", lambda: now[0])
    for _ in range(throttle.FREE_FAILURES):
        assert guard.admit("bob") == 0
    assert guard.admit("bob") == throttle.BASE_LOCK_SECONDS
    now[0] += throttle.BASE_LOCK_SECONDS
    admitted = [guard.admit("bob") for _ in range(40)]
    assert admitted.count(0) == 1
    assert all(wait == 2 * throttle.BASE_LOCK_SECONDS for wait in admitted[1:])
    guard.succeeded("bob")  # the admitted one had the right password
    assert guard.admit("bob") == 0


def test_lockout_grows_and_success_clears_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from control.auth import throttle

    now = [1000.0]
    guard = throttle.LoginThrottle()
    monkeypatch.setattr(guard, "_now", lambda: now[0])
    for _ in range(throttle.FREE_FAILURES):
        guard.failed("Alice")
    assert guard.retry_after("alice") == throttle.BASE_LOCK_SECONDS
    now[0] += throttle.BASE_LOCK_SECONDS
    assert guard.retry_after("alice") == 0
    guard.failed("alice")
    assert guard.retry_after("ALICE") == 2 * throttle.BASE_LOCK_SECONDS
    for _ in range(20):
        guard.failed("alice")
    assert guard.retry_after("alice") == throttle.MAX_LOCK_SECONDS
    guard.succeeded("alice")
    assert guard.retry_after("alice") == 0
