"""Keyset pagination: stable newest-first order by (created_at, id), page tokens that encode
where the last page ended and which filters it belongs to, and a total count."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from voxmesh.errors import InvalidArgument
from voxmesh.v1 import pagination_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_TOKEN_LENGTH = 512
"""Issued tokens are about 150 characters; anything much longer is refused unread."""


@dataclass(frozen=True)
class PageQuery:
    size: int
    after: tuple[datetime, uuid.UUID] | None
    fingerprint: str


def _fingerprint(filters: tuple[Any, ...]) -> str:
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:16]


def parse(page: pagination_pb2.PageRequest, filters: tuple[Any, ...]) -> PageQuery:
    """Validate a PageRequest for a list with these filters."""
    if page.page_size < 0:
        raise InvalidArgument(
            f"page.page_size must be between 1 and {MAX_PAGE_SIZE} (0 for the default of "
            f"{DEFAULT_PAGE_SIZE}), not {page.page_size}",
            field="page.page_size",
        )
    size = min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    fingerprint = _fingerprint(filters)
    if not page.page_token:
        return PageQuery(size, None, fingerprint)
    not_ours = InvalidArgument(
        "page.page_token is not a token this server issued", field="page.page_token"
    )
    if len(page.page_token) > MAX_TOKEN_LENGTH:
        raise not_ours
    try:
        raw = json.loads(base64.urlsafe_b64decode(page.page_token.encode()))
    except (ValueError, RecursionError, binascii.Error, UnicodeDecodeError):
        raise not_ours from None
    # Strictly the shape _token writes: three strings, an aware time, a UUID.
    if not isinstance(raw, dict) or set(raw) != {"t", "i", "f"}:
        raise not_ours
    if not all(isinstance(v, str) for v in raw.values()):
        raise not_ours
    try:
        after = (datetime.fromisoformat(raw["t"]), uuid.UUID(raw["i"]))
    except ValueError:
        raise not_ours from None
    if after[0].tzinfo is None:
        raise not_ours
    token_fingerprint = raw["f"]
    if token_fingerprint != fingerprint:
        raise InvalidArgument(
            "page.page_token belongs to a list with other filters; start again without a token",
            field="page.page_token",
        )
    return PageQuery(size, after, fingerprint)


def _token(created_at: datetime, row_id: uuid.UUID, fingerprint: str) -> str:
    raw = json.dumps({"t": created_at.isoformat(), "i": str(row_id), "f": fingerprint})
    return base64.urlsafe_b64encode(raw.encode()).decode()


async def fetch(
    session: AsyncSession,
    stmt: Select[Any],
    page: PageQuery,
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
) -> tuple[list[Any], pagination_pb2.PageResponse]:
    """One page of `stmt` (already filtered) and where the list stands.

    Rows are whatever `stmt` selects; its first column must be the entity carrying `created_at`
    and `row_id`."""
    total = await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    paged = stmt.order_by(created_at.desc(), row_id.desc()).limit(page.size + 1)
    if page.after is not None:
        paged = paged.where(tuple_(created_at, row_id) < tuple_(*page.after))
    rows = list((await session.execute(paged)).all())
    next_token = ""
    if len(rows) > page.size:
        rows = rows[: page.size]
        last = rows[-1][0]
        next_token = _token(
            getattr(last, created_at.key), getattr(last, row_id.key), page.fingerprint
        )
    return rows, pagination_pb2.PageResponse(next_page_token=next_token, total_size=total or 0)
