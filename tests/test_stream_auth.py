"""Open streams are held to their sign-in for as long as they run (issue 16, attack: WatchJob
and WatchJobs kept delivering after Logout, after deactivation and after the token expired)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from control import accounts
from control.db.models import UserRole
from tests.harness import Caller, Harness
from voxmesh.v1 import auth_pb2, jobs_pb2, users_pb2

pytestmark = pytest.mark.asyncio
DEADLINE = 20.0  # generous: the ends below are immediate or within one 5 s sweep


async def _open_watch(harness: Harness, who: Caller) -> tuple[Any, str]:
    """A WatchJob stream on a pending job, open (its snapshot read) and waiting for events."""
    project = await harness.project(who.user_id)
    job = await harness.job(project, who.user_id)
    call = who.client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=str(job)))
    first = await asyncio.wait_for(call.read(), DEADLINE)
    assert first.WhichOneof("event") == "snapshot"
    return call, str(job)


async def _ends_with(call: Any) -> grpc.aio.AioRpcError:
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                message = await call.read()
                assert message is not grpc.aio.EOF, "the stream ended without an error"
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("unreachable")


async def test_logout_ends_open_streams(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    watch, _ = await _open_watch(harness, editor)
    project = await harness.project(editor.user_id)
    changes = editor.client.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(project_id=str(project)))
    await asyncio.wait_for(changes.initial_metadata(), DEADLINE)  # open and subscribed
    await harness.anonymous.auth.Logout(auth_pb2.LogoutRequest(refresh_token=editor.refresh))
    for call in (watch, changes):
        err = await _ends_with(call)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "signed out" in (err.details() or "")


async def test_deactivating_a_user_ends_their_streams(harness: Harness) -> None:
    admin = await harness.user(UserRole.ADMIN)
    editor = await harness.user(UserRole.EDITOR)
    other = await harness.user(UserRole.EDITOR)
    watch, _ = await _open_watch(harness, editor)
    survivor, _ = await _open_watch(harness, other)
    await admin.client.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user_id=str(editor.user_id),
            update_mask=field_mask_pb2.FieldMask(paths=["is_active"]),
            is_active=False,
        )
    )
    err = await _ends_with(watch)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "deactivated" in (err.details() or "")
    assert survivor.done() is False  # another user's stream goes on
    survivor.cancel()


async def test_a_revocation_through_another_replica_ends_streams_by_the_sweep(
    harness: Harness,
) -> None:
    editor = await harness.user(UserRole.EDITOR)
    watch, _ = await _open_watch(harness, editor)
    async with harness.app.sessions() as session:  # as another control replica would
        assert await accounts.revoke_tokens(session, user_id=editor.user_id) == 1
        await session.commit()
    err = await _ends_with(watch)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signed out" in (err.details() or "")


async def test_an_expired_token_ends_the_stream_and_a_fresh_one_resumes_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness.app.tokens, "access_ttl", timedelta(seconds=3))
    editor = await harness.user(UserRole.EDITOR)
    watch, job = await _open_watch(harness, editor)
    err = await _ends_with(watch)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (err.details() or "")
    monkeypatch.undo()
    fresh = await harness.anonymous.auth.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=editor.refresh)
    )
    again = harness.client(fresh.tokens.access_token).jobs.WatchJob(
        jobs_pb2.WatchJobRequest(job_id=job)
    )
    resumed = await asyncio.wait_for(again.read(), DEADLINE)
    assert resumed.WhichOneof("event") == "snapshot" and resumed.job_id == job
    again.cancel()


async def test_unary_calls_are_not_held_to_their_lease(harness: Harness) -> None:
    """The lease is only for streams: a finished unary call leaves nothing registered."""
    editor = await harness.user(UserRole.EDITOR)
    for _ in range(3):
        await editor.client.users.GetCurrentUser(users_pb2.GetCurrentUserRequest())
    assert harness.app.streams.count == 0
