"""The files table's one rule about blobs: a row keeps the key that opens its sealed blob.

Every place that records a stored blob (a finished upload, a worker's output, sample data)
goes through `record`, so no row is written without its key. Rows of the same bytes stored
before sealing learn the key when the control plane itself stores those bytes again (not from a
worker's report, which it has not checked).
"""

from __future__ import annotations

import uuid

from sqlalchemy import cast, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import JSONPATH
from sqlalchemy.ext.asyncio import AsyncSession

from control.db.models import File, Job, SavedVoice
from voxmesh.blobs import BlobRef, BlobStore, CorruptBlobError


async def record(
    session: AsyncSession, blob: BlobRef, *, owner_id: uuid.UUID, filename: str,
    content_type: str, size_bytes: int, file_id: uuid.UUID | None = None, sealed_here: bool,
    project_id: uuid.UUID | None, flush: bool = True,
) -> File:  # fmt: skip
    """Add a files row for a stored blob (flushed, so its id can be referenced).
    `project_id`: the project it comes from (the uploading key's scope, the producing job's
    project), None for an upload outside any scope.
    `sealed_here`: this process stored the bytes itself, so the key is known to be right.
    `flush=False`: the caller flushes once after adding several (one INSERT for all)."""
    row = File(
        id=file_id or uuid.uuid4(), owner_id=owner_id, filename=filename,
        content_type=content_type, size_bytes=size_bytes, sha256=blob.sha256,
        blob_key=blob.key or None, project_id=project_id,
    )  # fmt: skip
    session.add(row)
    if blob.key and sealed_here:
        await session.execute(
            update(File)
            .where(File.sha256 == blob.sha256, File.blob_key.is_(None))
            .values(blob_key=blob.key)
        )
    if flush:
        await session.flush()
    return row


async def used_in_project(session: AsyncSession, file_id: uuid.UUID, project_id: uuid.UUID) -> bool:
    """Whether a job of the project takes the file (as its input, or named anywhere in its
    parameters, as a cloning job's source is) or a voice saved in it keeps it as reference."""
    named = func.jsonb_path_exists(
        Job.params,
        cast("$.** ? (@ == $id)", JSONPATH),
        func.jsonb_build_object("id", str(file_id)),
    )
    jobs = exists().where(Job.project_id == project_id, or_(Job.input_file_id == file_id, named))
    voices = exists().where(
        SavedVoice.project_id == project_id, SavedVoice.reference_file_id == file_id
    )
    return bool(await session.scalar(select(or_(jobs, voices))))


def key_of(row: File) -> bytes:
    return row.blob_key or b""


async def seal_stored_before(session: AsyncSession, blobs: BlobStore, limit: int = 20) -> int:
    """Seal up to `limit` blobs stored before sealing existed (files rows without a key): read
    them as they are, store them sealed, give every row of those bytes the key; not committed.
    The janitor runs it on every sweep, so an upgraded store ends up sealed throughout. A blob
    that is missing or does not verify is left for DownloadFile to report."""
    digests = list(
        await session.scalars(
            select(File.sha256).where(File.blob_key.is_(None)).distinct().limit(limit)
        )
    )
    sealed = 0
    for digest in digests:
        try:
            data = await blobs.get(digest, b"")
        except (FileNotFoundError, CorruptBlobError):
            continue
        blob = await blobs.put(data)
        if not blob.key:
            continue
        await session.execute(
            update(File)
            .where(File.sha256 == digest, File.blob_key.is_(None))
            .values(blob_key=blob.key)
        )
        sealed += 1
    return sealed
