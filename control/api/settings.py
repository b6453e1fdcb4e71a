"""SettingsService: global settings, per-user overrides, and their resolution."""

from __future__ import annotations

import uuid

import grpc
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from control import settings_catalog
from control.app import ControlApp
from control.auth import principal
from control.convert import ts
from control.db.models import Setting, User
from control.settings_catalog import CATALOG, Override, Source, lookup, to_value
from control.validate import enum_field, uuid_field
from voxmesh.errors import InvalidArgument, NotFound, PermissionDenied
from voxmesh.v1 import settings_pb2, settings_pb2_grpc

TYPE_NAMES = {int: "integer", bool: "boolean", str: "string"}
SOURCE_PB = {
    Source.DEFAULT: settings_pb2.SETTING_SOURCE_DEFAULT,
    Source.GLOBAL: settings_pb2.SETTING_SOURCE_GLOBAL,
    Source.USER: settings_pb2.SETTING_SOURCE_USER,
}


def _setting_pb(row: Setting) -> settings_pb2.Setting:
    return settings_pb2.Setting(
        key=row.key,
        value=to_value(row.value),
        scope=settings_pb2.SETTING_SCOPE_USER if row.user_id else settings_pb2.SETTING_SCOPE_GLOBAL,
        user_id=str(row.user_id) if row.user_id else "",
        update_time=ts(row.updated_at),
    )


def _scope(value: int, user_id_raw: str) -> tuple[int, uuid.UUID | None]:
    """(scope, whose) for a request; whose is None for global settings."""
    enum_field(settings_pb2.SettingScope, value, "scope", allow_unspecified=False)
    if value == settings_pb2.SETTING_SCOPE_GLOBAL:
        if user_id_raw:
            raise InvalidArgument(
                "global settings have no user_id; leave it empty", field="user_id"
            )
        return value, None
    who = principal.current()
    target = uuid_field(user_id_raw, "user_id", required=False) or who.user_id
    if target != who.user_id and not who.is_admin:
        raise PermissionDenied("only admins may read or change another user's settings")
    return value, target


async def _require_user(session: AsyncSession, user_id: uuid.UUID) -> None:
    if await session.get(User, user_id) is None:
        raise NotFound(f"no user with id {user_id}", field="user_id")


def _check_write(key: str, target: uuid.UUID | None) -> None:
    who = principal.current()
    definition = lookup(key)
    if target is None:
        if not who.is_admin:
            raise PermissionDenied("only admins may change global settings")
        return
    if definition.override is Override.NONE:
        raise InvalidArgument(
            f"{key} is a global setting; it cannot be set per user", field="scope"
        )
    if definition.override is Override.ADMIN and not who.is_admin:
        raise PermissionDenied(f"{key} is a limit set by admins; ask an admin to change it")


class SettingsService(settings_pb2_grpc.SettingsServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

    async def ListSettings(
        self, request: settings_pb2.ListSettingsRequest, context: grpc.aio.ServicerContext
    ) -> settings_pb2.ListSettingsResponse:
        _, target = _scope(request.scope, request.user_id)
        async with self.app.sessions() as session:
            if target is not None:
                await _require_user(session, target)
            where = Setting.user_id.is_(None) if target is None else Setting.user_id == target
            rows = await session.scalars(select(Setting).where(where).order_by(Setting.key))
            return settings_pb2.ListSettingsResponse(settings=[_setting_pb(r) for r in rows])

    async def SetSetting(
        self, request: settings_pb2.SetSettingRequest, context: grpc.aio.ServicerContext
    ) -> settings_pb2.SetSettingResponse:
        _, target = _scope(request.scope, request.user_id)
        definition = lookup(request.key)
        _check_write(request.key, target)
        if not request.HasField("value"):
            raise InvalidArgument(f"value is required: {definition.describe()}", field="value")
        value = definition.parse(request.value)
        async with self.app.sessions() as session:
            if target is not None:
                await _require_user(session, target)
            stmt = insert(Setting).values(
                id=uuid.uuid4(), key=definition.key, value=value, user_id=target
            )
            if target is None:
                stmt = stmt.on_conflict_do_update(
                    index_elements=[Setting.key],
                    index_where=Setting.user_id.is_(None),
                    set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
                )
            else:
                stmt = stmt.on_conflict_do_update(
                    index_elements=[Setting.user_id, Setting.key],
                    set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
                )
            row = await session.scalar(stmt.returning(Setting))
            await session.commit()
            assert row is not None
            return settings_pb2.SetSettingResponse(setting=_setting_pb(row))

    async def DeleteSetting(
        self, request: settings_pb2.DeleteSettingRequest, context: grpc.aio.ServicerContext
    ) -> settings_pb2.DeleteSettingResponse:
        _, target = _scope(request.scope, request.user_id)
        _check_write(request.key, target)
        async with self.app.sessions() as session:
            where = Setting.user_id.is_(None) if target is None else Setting.user_id == target
            row = await session.scalar(select(Setting).where(where, Setting.key == request.key))
            if row is None:
                whose = "global" if target is None else f"user {target}'s"
                raise NotFound(f"no {whose} value stored for {request.key}", field="key")
            await session.delete(row)
            await session.commit()
        return settings_pb2.DeleteSettingResponse()

    async def GetEffectiveSettings(
        self, request: settings_pb2.GetEffectiveSettingsRequest, context: grpc.aio.ServicerContext
    ) -> settings_pb2.GetEffectiveSettingsResponse:
        _, target = _scope(settings_pb2.SETTING_SCOPE_USER, request.user_id)
        assert target is not None
        async with self.app.sessions() as session:
            await _require_user(session, target)
            values = await settings_catalog.resolve(session, target)
        return settings_pb2.GetEffectiveSettingsResponse(
            settings=[
                settings_pb2.EffectiveSetting(
                    key=key,
                    value=to_value(values[key][0]),
                    source=SOURCE_PB[values[key][1]],
                    description=CATALOG[key].describe(),
                    type=TYPE_NAMES[CATALOG[key].kind],
                )
                for key in sorted(CATALOG)
            ]
        )
