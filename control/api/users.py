"""UserService: admins manage users and roles; everyone manages their own profile."""

from __future__ import annotations

import uuid

import grpc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control import accounts
from control.api import pagination
from control.app import ControlApp
from control.auth import passwords, principal
from control.auth.streams import DEACTIVATED, PASSWORD_CHANGED
from control.convert import role_from_pb, user_to_pb
from control.db.models import File, Job, Profile, Project, User
from control.validate import enum_field, mask_paths, required_uuid
from voxmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from voxmesh.v1 import users_pb2, users_pb2_grpc


async def _get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}", field="user_id")
    return user


def _apply_profile_fields(user: User, paths: set[str], request: object) -> None:
    if "email" in paths:
        user.email = accounts.check_email(request.email)  # type: ignore[attr-defined]
    if "display_name" in paths:
        user.profile.display_name = accounts.check_display_name(request.display_name)  # type: ignore[attr-defined]
    if "bio" in paths:
        user.profile.bio = accounts.check_bio(request.bio)  # type: ignore[attr-defined]


class UserService(users_pb2_grpc.UserServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

    async def CreateUser(
        self, request: users_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.CreateUserResponse:
        enum_field(users_pb2.UserRole, request.role, "role", allow_unspecified=False)
        async with self.app.sessions() as session:
            user = await accounts.create_user(
                session,
                username=request.username,
                password=request.password,
                role=role_from_pb(request.role),
                email=request.email,
                display_name=request.display_name,
                service_account=request.service_account,
            )
            await session.commit()
            return users_pb2.CreateUserResponse(user=user_to_pb(user))

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.GetUserResponse:
        user_id = required_uuid(request.user_id, "user_id")
        async with self.app.sessions() as session:
            return users_pb2.GetUserResponse(user=user_to_pb(await _get_user(session, user_id)))

    async def ListUsers(
        self, request: users_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.ListUsersResponse:
        enum_field(users_pb2.UserRole, request.role, "role")
        page = pagination.parse(request.page, ("users", request.role))
        stmt = select(User)
        if request.role:
            stmt = stmt.join(Profile).where(Profile.role == role_from_pb(request.role))
        async with self.app.sessions() as session:
            rows, page_out = await pagination.fetch(session, stmt, page, User.created_at, User.id)
        return users_pb2.ListUsersResponse(users=[user_to_pb(r[0]) for r in rows], page=page_out)

    async def UpdateUser(
        self, request: users_pb2.UpdateUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.UpdateUserResponse:
        user_id = required_uuid(request.user_id, "user_id")
        paths = mask_paths(
            request.update_mask,
            {"email", "is_active", "role", "display_name", "bio", "password"},
        )
        if "role" in paths:
            enum_field(users_pb2.UserRole, request.role, "role", allow_unspecified=False)
        if "password" in paths:
            accounts.check_password(request.password)
        async with self.app.sessions() as session:
            user = await _get_user(session, user_id)
            if "password" in paths and user.is_service_account:
                raise FailedPrecondition(
                    f"{user.username} is a service account: it has no password, only API keys"
                )
            _apply_profile_fields(user, paths, request)
            new_role = role_from_pb(request.role) if "role" in paths else user.profile.role
            deactivate = "is_active" in paths and not request.is_active
            if new_role is not user.profile.role:
                await accounts.ensure_other_admin(session, user, "demote")
                user.profile.role = new_role
            if deactivate and user.is_active:
                await accounts.ensure_other_admin(session, user, "deactivate")
            if "is_active" in paths:
                user.is_active = request.is_active
            if deactivate:
                await accounts.revoke_tokens(session, user_id=user.id)
            if "password" in paths:
                user.password_hash = await passwords.hash_password_async(request.password)
                await accounts.revoke_tokens(session, user_id=user.id)
            await session.commit()
            if deactivate:
                self.app.streams.end(user_id=user.id, reason=DEACTIVATED)
            elif "password" in paths:
                self.app.streams.end(user_id=user.id, reason=PASSWORD_CHANGED)
            return users_pb2.UpdateUserResponse(user=user_to_pb(user))

    async def DeleteUser(
        self, request: users_pb2.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.DeleteUserResponse:
        user_id = required_uuid(request.user_id, "user_id")
        if user_id == principal.current().user_id:
            raise FailedPrecondition("you cannot delete your own account")
        async with self.app.sessions() as session:
            user = await _get_user(session, user_id)
            owned = {
                "projects": await session.scalar(
                    select(func.count()).where(Project.owner_id == user_id)
                ),
                "jobs": await session.scalar(select(func.count()).where(Job.created_by == user_id)),
                "files": await session.scalar(select(func.count()).where(File.owner_id == user_id)),
            }
            held = ", ".join(f"{n} {what}" for what, n in owned.items() if n)
            if held:
                raise FailedPrecondition(
                    f"user {user.username!r} still owns {held}; deactivate the account instead "
                    "(UpdateUser with is_active=false) or delete those first"
                )
            await accounts.ensure_other_admin(session, user, "delete")
            await session.delete(user)
            await session.commit()
        self.app.streams.end(user_id=user_id, reason=DEACTIVATED)
        return users_pb2.DeleteUserResponse()

    async def GetCurrentUser(
        self, request: users_pb2.GetCurrentUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.GetCurrentUserResponse:
        async with self.app.sessions() as session:
            user = await _get_user(session, principal.current().user_id)
            return users_pb2.GetCurrentUserResponse(user=user_to_pb(user))

    async def UpdateCurrentUser(
        self, request: users_pb2.UpdateCurrentUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.UpdateCurrentUserResponse:
        paths = mask_paths(request.update_mask, {"email", "display_name", "bio"})
        async with self.app.sessions() as session:
            user = await _get_user(session, principal.current().user_id)
            _apply_profile_fields(user, paths, request)
            await session.commit()
            return users_pb2.UpdateCurrentUserResponse(user=user_to_pb(user))

    async def ChangePassword(
        self, request: users_pb2.ChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.ChangePasswordResponse:
        if not request.current_password:
            raise InvalidArgument("current_password is required", field="current_password")
        accounts.check_password(request.new_password, "new_password")
        if request.new_password == request.current_password:
            raise InvalidArgument(
                "new_password must differ from the current one", field="new_password"
            )
        async with self.app.sessions() as session:
            user = await _get_user(session, principal.current().user_id)
            if not await passwords.verify_password_async(
                user.password_hash, request.current_password
            ):
                raise InvalidArgument("current_password is wrong", field="current_password")
            user.password_hash = await passwords.hash_password_async(request.new_password)
            await accounts.revoke_tokens(session, user_id=user.id)
            await session.commit()
        self.app.streams.end(user_id=user.id, reason=PASSWORD_CHANGED)
        return users_pb2.ChangePasswordResponse()
