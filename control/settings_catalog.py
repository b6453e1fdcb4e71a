"""Every setting Voxmesh knows: its type, range, default, who may override it per user, and
what it does. SetSetting accepts only these keys, checked against these rules."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from google.protobuf import struct_pb2

from control.validate import LANGUAGE_RE, VOICE_RE
from voxmesh.errors import InvalidArgument
from voxmesh.speech import voices


class Override(StrEnum):
    SELF = "self"  # a user (editor or admin) may set their own value
    ADMIN = "admin"  # only an admin may set a user's value (limits and quotas)
    NONE = "none"  # global only


@dataclass(frozen=True)
class SettingDef:
    key: str
    kind: type  # int, bool or str
    default: Any
    description: str
    override: Override
    low: int | None = None
    high: int | None = None
    max_len: int = 100
    pattern: Any = None
    pattern_hint: str = ""

    def describe(self) -> str:
        kind = {int: "integer", bool: "boolean", str: "string"}[self.kind]
        bounds = f" {self.low}..{self.high}" if self.low is not None else ""
        who = {
            Override.SELF: "users may set their own value",
            Override.ADMIN: "admins may set a value per user",
            Override.NONE: "global only",
        }[self.override]
        return f"{self.description} ({kind}{bounds}; {who})"

    def parse(self, value: struct_pb2.Value) -> Any:
        """The JSON value to store, or InvalidArgument saying what this key takes."""
        which = value.WhichOneof("kind")
        if self.kind is bool:
            if which != "bool_value":
                raise InvalidArgument(f"{self.key} takes true or false", field="value")
            return value.bool_value
        if self.kind is int:
            number = value.number_value
            if which != "number_value" or not math.isfinite(number) or number != int(number):
                raise InvalidArgument(f"{self.key} takes a whole number", field="value")
            assert self.low is not None and self.high is not None
            if not self.low <= number <= self.high:
                raise InvalidArgument(
                    f"{self.key} must be between {self.low} and {self.high}", field="value"
                )
            return int(number)
        if which != "string_value":
            raise InvalidArgument(f"{self.key} takes a string", field="value")
        text = value.string_value.strip()
        if len(text) > self.max_len:
            raise InvalidArgument(f"{self.key} is at most {self.max_len} characters", field="value")
        if self.pattern is not None and not self.pattern.fullmatch(text):
            raise InvalidArgument(f"{self.key} {self.pattern_hint}", field="value")
        if self.key == "preferred_voice" and text and text not in voices.CATALOG:
            raise InvalidArgument(
                f"unknown voice {text!r}; VoiceService/ListVoices lists the voices", field="value"
            )
        return text


CATALOG: dict[str, SettingDef] = {
    d.key: d
    for d in [
        SettingDef(
            "max_file_size_mb", int, 100, "largest upload accepted, in MB",
            Override.ADMIN, low=1, high=100 * 1024,
        ),
        SettingDef(
            "default_language", str, "en", "language assumed for new jobs (ISO 639-1)",
            Override.SELF, max_len=16, pattern=LANGUAGE_RE,
            pattern_hint="must be a language code such as 'en' or 'pt-BR'",
        ),
        SettingDef(
            "enable_notifications", bool, True, "notify when a job finishes", Override.SELF
        ),
        SettingDef(
            "max_concurrent_jobs", int, 5, "how many jobs may run at once",
            Override.ADMIN, low=1, high=1000,
        ),
        SettingDef(
            "preferred_voice", str, "", "voice used when a job names none",
            Override.SELF, max_len=100, pattern=VOICE_RE,
            pattern_hint="must be a voice id (letters, digits, '.', '_', ':', '-' or '/')",
        ),
        SettingDef(
            "auto_start_jobs", bool, True,
            "start new jobs at once (false: they wait PENDING for StartJob)", Override.SELF,
        ),
        SettingDef(
            "max_text_length", int, 20_000, "longest text accepted by TTS and cloning jobs",
            Override.ADMIN, low=100, high=1_000_000,
        ),
        SettingDef(
            "max_audio_minutes", int, 180,
            "longest audio or video accepted, in minutes (read from the file's container when "
            "its upload finishes, before anything is decoded)",
            Override.ADMIN, low=1, high=24 * 60,
        ),
        SettingDef(
            "max_open_uploads", int, 20,
            "how many unfinished uploads a user may have at once", Override.ADMIN,
            low=1, high=10_000,
        ),
        SettingDef(
            "max_open_upload_mb", int, 2048,
            "how many MB a user's unfinished uploads may declare in all", Override.ADMIN,
            low=1, high=1024 * 1024,
        ),
        SettingDef(
            "upload_expiry_hours", int, 24,
            "unfinished uploads untouched this long are deleted with what they received",
            Override.NONE, low=1, high=24 * 90,
        ),
        SettingDef(
            "webhook_allow_private_addresses", bool, False,
            "webhooks may call loopback and private network addresses (off: only public ones, "
            "against server-side request forgery)",
            Override.NONE,
        ),
    ]
}  # fmt: skip


def lookup(key: str) -> SettingDef:
    definition = CATALOG.get(key)
    if definition is None:
        raise InvalidArgument(
            f"unknown setting {key[:64]!r}; known settings: {', '.join(sorted(CATALOG))}",
            field="key",
        )
    return definition


def to_value(python_value: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if isinstance(python_value, bool):
        value.bool_value = python_value
    elif isinstance(python_value, int | float):
        value.number_value = python_value
    elif isinstance(python_value, str):
        value.string_value = python_value
    elif python_value is None:
        value.null_value = struct_pb2.NULL_VALUE
    else:
        raise TypeError(f"unsupported setting value {python_value!r}")
    return value


class Source(StrEnum):
    DEFAULT = "DEFAULT"
    GLOBAL = "GLOBAL"
    USER = "USER"


def values_of(rows: Any) -> dict[str, tuple[Any, Source]]:
    """Every known key's value from stored (key, value, is_user) rows: a user's over the global
    one over the default."""
    values: dict[str, tuple[Any, Source]] = {
        key: (d.default, Source.DEFAULT) for key, d in CATALOG.items()
    }
    for key, value, mine in sorted(rows, key=lambda r: bool(r[2])):  # globals, then the user's
        if key in values:
            values[key] = (value, Source.USER if mine else Source.GLOBAL)
    return values


def _global_or_users(user: Any) -> Any:
    """The stored rows that count for `user` (a column or a bound parameter): the globals and
    theirs."""
    from sqlalchemy import or_

    from control.db.models import Setting

    return or_(Setting.user_id.is_(None), Setting.user_id == user)


@functools.cache
def _one_user() -> Any:
    """One user's rows and the globals (built once; the user is bound)."""
    from sqlalchemy import bindparam, select

    from control.db.models import Setting

    return select(Setting.key, Setting.value, Setting.user_id.is_not(None)).where(
        _global_or_users(bindparam("user"))
    )


def stored_rows(user: Any) -> Any:
    """A scalar subquery of the rows `values_of` takes, as one JSON array, for `user` (a column
    or a bound parameter): for reading a user's settings in the statement that needs them."""
    from sqlalchemy import func, literal, select
    from sqlalchemy.dialects.postgresql import JSONB

    from control.db.models import Setting

    row = func.jsonb_build_array(Setting.key, Setting.value, Setting.user_id.is_not(None))
    return (
        select(func.coalesce(func.jsonb_agg(row), literal([], JSONB)))
        .where(_global_or_users(user))
        .scalar_subquery()
    )


async def resolve(session: Any, user_id: Any) -> dict[str, tuple[Any, Source]]:
    """Every known key's value for a user: theirs over the global one over the default."""
    return values_of(await session.execute(_one_user(), {"user": user_id}))
