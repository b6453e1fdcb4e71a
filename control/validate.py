"""Request validation shared by the servicers. Each helper raises InvalidArgument naming the
field and saying, in words a person understands, what is wrong and what is allowed."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable

from google.protobuf import field_mask_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from voxmesh.errors import InvalidArgument

LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
VOICE_RE = re.compile(r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)*$")
# Control characters other than tab/newline/carriage return; PostgreSQL also cannot store NUL.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def uuid_field(value: str, field: str, *, required: bool = True) -> uuid.UUID | None:
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required", field=field)
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be an id like 1b4e28ba-2fa1-11d2-883f-0016d3cca427, not {value[:64]!r}",
            field=field,
        ) from None


def required_uuid(value: str, field: str) -> uuid.UUID:
    parsed = uuid_field(value, field, required=True)
    assert parsed is not None
    return parsed


def text_field(
    value: str,
    field: str,
    *,
    max_len: int,
    min_len: int = 0,
    multiline: bool = False,
    pattern: re.Pattern[str] | None = None,
    pattern_hint: str = "",
) -> str:
    """Strip, then check length, control characters and an optional pattern."""
    value = value.strip()
    if min_len and not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(value) < min_len:
        raise InvalidArgument(f"{field} must be at least {min_len} characters", field=field)
    if len(value) > max_len:
        raise InvalidArgument(
            f"{field} is {len(value)} characters; at most {max_len} are allowed", field=field
        )
    control = _CONTROL_RE.search(value if multiline else value.replace("\t", " "))
    if control or (not multiline and ("\n" in value or "\r" in value)):
        raise InvalidArgument(f"{field} contains control characters", field=field)
    if value and pattern is not None and not pattern.fullmatch(value):
        raise InvalidArgument(f"{field} {pattern_hint}", field=field)
    return value


def language_field(value: str, field: str, *, required: bool = False) -> str:
    value = value.strip()
    if not value:
        if required:
            raise InvalidArgument(
                f"{field} is required (an ISO 639-1 code such as 'en')", field=field
            )
        return ""
    if not LANGUAGE_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be a language code such as 'en' or 'pt-BR', not {value[:32]!r}",
            field=field,
        )
    return value


def enum_field(
    enum: EnumTypeWrapper, value: int, field: str, *, allow_unspecified: bool = True
) -> int:
    if value not in enum.values():
        names = ", ".join(n for n in enum.keys() if not n.endswith("_UNSPECIFIED"))  # noqa: SIM118
        raise InvalidArgument(f"{field} {value} is not one of {names}", field=field)
    if not allow_unspecified and value == 0:
        names = ", ".join(n for n in enum.keys() if not n.endswith("_UNSPECIFIED"))  # noqa: SIM118
        raise InvalidArgument(f"{field} is required: one of {names}", field=field)
    return value


def number_range(
    value: float, field: str, *, low: float, high: float, zero_means: float | None = None
) -> float:
    if zero_means is not None and value == 0:
        return zero_means
    if math.isnan(value) or not low <= value <= high:
        raise InvalidArgument(f"{field} must be between {low:g} and {high:g}", field=field)
    return value


def mask_paths(mask: field_mask_pb2.FieldMask, allowed: Iterable[str]) -> set[str]:
    allowed = set(allowed)
    paths = set(mask.paths)
    if not paths:
        raise InvalidArgument(
            f"update_mask must name the fields to change: any of {', '.join(sorted(allowed))}",
            field="update_mask",
        )
    unknown = paths - allowed
    if unknown:
        raise InvalidArgument(
            f"update_mask names fields that cannot be changed here: {', '.join(sorted(unknown))}"
            f" (allowed: {', '.join(sorted(allowed))})",
            field="update_mask",
        )
    return paths


MAX_SPEAKERS = 20
"""The most speakers a job may ask diarization for."""


def speaker_count(value: int, field: str) -> int:
    """A number of speakers: 1 to MAX_SPEAKERS, or 0 to find it from the audio."""
    if not 0 <= value <= MAX_SPEAKERS:
        raise InvalidArgument(
            f"{field} must be between 1 and {MAX_SPEAKERS} (0: found from the audio)", field=field
        )
    return value
