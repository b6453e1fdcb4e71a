"""FileService: resumable chunked uploads into the shared content-addressed store, and
streamed downloads."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from control import files, media, settings_catalog
from control.app import ControlApp
from control.auth import policy, principal
from control.convert import ts
from control.db.models import File, Upload, UploadChunk
from control.janitor import expire_uploads
from control.validate import required_uuid, text_field
from voxmesh.audio import spoken
from voxmesh.blobs import BlobStore, CorruptBlobError
from voxmesh.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from voxmesh.v1 import files_pb2, files_pb2_grpc

CHUNK_BYTES = 1024 * 1024
MAX_CHUNK_BYTES = 2 * 1024 * 1024
DOWNLOAD_CHUNK_BYTES = 256 * 1024
MB = 1024 * 1024


def file_info(row: File) -> files_pb2.StoredFileInfo:
    return files_pb2.StoredFileInfo(
        id=str(row.id), filename=row.filename, content_type=row.content_type,
        size_bytes=row.size_bytes, sha256=row.sha256, owner_id=str(row.owner_id),
        create_time=ts(row.created_at),
    )  # fmt: skip


async def _check_room(
    session: AsyncSession, owner: uuid.UUID, size: int, values: dict[str, Any]
) -> None:
    """A user's unfinished uploads are capped in number and in declared bytes (expired ones
    are cleared first): abandoned uploads cannot fill the database."""
    await expire_uploads(session, owner, values)
    count, declared = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(Upload.size_bytes), 0)).where(
                Upload.owner_id == owner, Upload.file_id.is_(None)
            )
        )
    ).one()
    most = int(values["max_open_uploads"][0])
    if count >= most:
        raise ResourceExhausted(
            f"you have {count} unfinished uploads, the most allowed (max_open_uploads); "
            "finish or let them expire first"
        )
    room_mb = int(values["max_open_upload_mb"][0])
    if declared + size > room_mb * MB:
        raise ResourceExhausted(
            f"your unfinished uploads would declare {(declared + size) / MB:.1f} MB; the limit "
            f"is {room_mb} MB (max_open_upload_mb); finish or let them expire first"
        )


def _described(
    request: files_pb2.UploadFileRequest | files_pb2.StartUploadRequest,
) -> tuple[str, str]:
    """A new file's name and declared type, checked."""
    return (
        text_field(request.filename, "filename", min_len=1, max_len=255),
        text_field(request.content_type, "content_type", max_len=127),
    )


def _check_size(size: int, values: dict[str, Any], field: str) -> None:
    limit_mb = int(values["max_file_size_mb"][0])
    if size > limit_mb * MB:
        raise InvalidArgument(
            f"the file is {size / MB:.1f} MB; the limit is {limit_mb} MB (max_file_size_mb)",
            field=field,
        )


def _sniffed(declared: str, head: bytes) -> str:
    """The file's type from its first bytes; refused if unknown or not what was declared."""
    detected = media.detect(head[: media.SNIFF_BYTES])
    if detected is None:
        raise InvalidArgument(
            "this is not an audio or video file of a known format (WAV, FLAC, MP3, "
            "OGG/Opus, AAC, M4A/MP4, WebM)", field="data",
        )  # fmt: skip
    if not media.agrees(declared, detected):
        raise InvalidArgument(
            f"the file was declared as {declared} but its content is {detected}", field="data"
        )
    return detected


async def _inspect(data: bytes, values: dict[str, Any]) -> None:
    """The whole file decodes as what it claims, within max_audio_minutes (MediaError if not)."""
    limit = 60 * int(values["max_audio_minutes"][0])
    found = await asyncio.to_thread(media.inspect, data)
    if found.seconds is not None and found.seconds > limit:
        raise media.MediaError(
            f"the audio is {spoken(found.seconds)} long; the limit is {spoken(limit)} "
            "(max_audio_minutes)"
        )


def _check_sha256(claimed: str, data: bytes) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != claimed:
        raise InvalidArgument(
            f"the received bytes have sha256 {actual}, not {claimed}: the upload was "
            "corrupted on the way; start it again", field="sha256",
        )  # fmt: skip


def _sha256_field(raw: str) -> str:
    claimed = raw.strip().lower()
    if len(claimed) != 64 or any(c not in "0123456789abcdef" for c in claimed):
        raise InvalidArgument("sha256 must be 64 hexadecimal characters", field="sha256")
    return claimed


class FileService(files_pb2_grpc.FileServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

    def _blobs(self) -> BlobStore:
        if self.app.mesh is None:
            raise Unavailable("file storage is not available: this server runs without NATS")
        return self.app.mesh.blobs

    async def _upload(self, session: AsyncSession, raw_id: str, *, lock: bool = False) -> Upload:
        upload_id = required_uuid(raw_id, "upload_id")
        stmt = select(Upload).where(Upload.id == upload_id)
        if lock:
            stmt = stmt.with_for_update()
        upload = await session.scalar(stmt)
        if upload is None:
            raise NotFound(f"no upload with id {upload_id}", field="upload_id")
        if upload.owner_id != principal.current().user_id:
            raise PermissionDenied("this upload belongs to another user")
        return upload

    async def UploadFile(
        self, request: files_pb2.UploadFileRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.UploadFileResponse:
        """A small file in one call: no upload rows, the same checks as a finished upload."""
        who = principal.current()
        filename, content_type = _described(request)
        data = request.data
        if not 0 < len(data) <= MAX_CHUNK_BYTES:
            raise InvalidArgument(
                f"data must be 1 to {MAX_CHUNK_BYTES} bytes, not {len(data)}; a larger file "
                "goes through StartUpload, UploadChunk and FinishUpload", field="data",
            )  # fmt: skip
        if request.sha256:
            _check_sha256(_sha256_field(request.sha256), data)
        blobs = self._blobs()
        async with self.app.sessions() as session:
            values = await settings_catalog.resolve(session, who.user_id)
            _check_size(len(data), values, "data")
            detected = _sniffed(content_type, data)
            try:
                await _inspect(data, values)
            except media.MediaError as e:
                raise InvalidArgument(str(e), field="data") from None
            stored = await files.record(
                session, await blobs.put(data), owner_id=who.user_id, filename=filename,
                content_type=detected, size_bytes=len(data), sealed_here=True,
                project_id=policy.scope(),
            )  # fmt: skip
            await session.commit()
            return files_pb2.UploadFileResponse(file=file_info(stored))

    async def StartUpload(
        self, request: files_pb2.StartUploadRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.StartUploadResponse:
        who = principal.current()
        filename, content_type = _described(request)
        if request.size_bytes <= 0:
            raise InvalidArgument("size_bytes must be the file's size, above 0", field="size_bytes")
        async with self.app.sessions() as session:
            values = await settings_catalog.resolve(session, who.user_id)
            _check_size(request.size_bytes, values, "size_bytes")
            await _check_room(session, who.user_id, request.size_bytes, values)
            upload = Upload(
                id=uuid.uuid4(), owner_id=who.user_id, filename=filename,
                content_type=content_type, size_bytes=request.size_bytes, received_bytes=0,
            )  # fmt: skip
            session.add(upload)
            await session.commit()
        return files_pb2.StartUploadResponse(
            upload_id=str(upload.id), chunk_size_bytes=CHUNK_BYTES, max_chunk_bytes=MAX_CHUNK_BYTES
        )

    async def UploadChunk(
        self, request: files_pb2.UploadChunkRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.UploadChunkResponse:
        size = len(request.data)
        if not 0 < size <= MAX_CHUNK_BYTES:
            raise InvalidArgument(
                f"data must be 1 to {MAX_CHUNK_BYTES} bytes, not {size}", field="data"
            )
        async with self.app.sessions() as session:
            upload = await self._upload(session, request.upload_id, lock=True)
            if upload.file_id is not None:
                raise FailedPrecondition("this upload is already finished")
            if request.offset + size <= upload.received_bytes:  # a resend of a stored chunk
                return files_pb2.UploadChunkResponse(received_bytes=upload.received_bytes)
            if request.offset != upload.received_bytes:
                raise FailedPrecondition(
                    f"expected the chunk at offset {upload.received_bytes}, not {request.offset}"
                    " (GetUpload says where to resume)"
                )
            if request.offset + size > upload.size_bytes:
                raise InvalidArgument(
                    f"this chunk would make the file {request.offset + size} bytes; it was "
                    f"declared as {upload.size_bytes}", field="data",
                )  # fmt: skip
            if request.offset == 0:
                upload.content_type = _sniffed(upload.content_type, request.data)
            session.add(UploadChunk(upload_id=upload.id, offset=request.offset, data=request.data))
            upload.received_bytes = request.offset + size
            await session.commit()
            return files_pb2.UploadChunkResponse(received_bytes=upload.received_bytes)

    async def GetUpload(
        self, request: files_pb2.GetUploadRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.GetUploadResponse:
        async with self.app.sessions() as session:
            upload = await self._upload(session, request.upload_id)
            response = files_pb2.GetUploadResponse(
                received_bytes=upload.received_bytes, size_bytes=upload.size_bytes
            )
            if upload.file_id is not None:
                stored = await session.get(File, upload.file_id)
                if stored is not None:
                    response.file.CopyFrom(file_info(stored))
            return response

    async def FinishUpload(
        self, request: files_pb2.FinishUploadRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.FinishUploadResponse:
        claimed = _sha256_field(request.sha256)
        blobs = self._blobs()
        async with self.app.sessions() as session:
            upload = await self._upload(session, request.upload_id, lock=True)
            if upload.file_id is not None:
                stored = await session.get(File, upload.file_id)
                assert stored is not None
                return files_pb2.FinishUploadResponse(file=file_info(stored))
            if upload.received_bytes != upload.size_bytes:
                raise FailedPrecondition(
                    f"received {upload.received_bytes} of {upload.size_bytes} bytes; send the rest first"
                )
            chunks = await session.scalars(
                select(UploadChunk.data)
                .where(UploadChunk.upload_id == upload.id)
                .order_by(UploadChunk.offset)
            )
            data = b"".join(chunks)
            _check_sha256(claimed, data)
            try:
                await _inspect(data, await settings_catalog.resolve(session, upload.owner_id))
            except media.MediaError as e:
                # Nothing can make this upload acceptable: it goes, and takes no room.
                await session.delete(upload)
                await session.commit()
                raise InvalidArgument(f"{e}; the upload was discarded", field="upload_id") from None
            stored = await files.record(
                session, await blobs.put(data), owner_id=upload.owner_id,
                filename=upload.filename, content_type=upload.content_type,
                size_bytes=len(data), sealed_here=True, project_id=policy.scope(),
            )  # fmt: skip
            await session.execute(
                update(Upload).where(Upload.id == upload.id).values(file_id=stored.id)
            )
            await session.execute(delete(UploadChunk).where(UploadChunk.upload_id == upload.id))
            await session.commit()
            return files_pb2.FinishUploadResponse(file=file_info(stored))

    async def GetFile(
        self, request: files_pb2.GetFileRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.GetFileResponse:
        file_id = required_uuid(request.file_id, "file_id")
        async with self.app.sessions() as session:
            stored = await session.get(File, file_id)
            if stored is None:
                raise NotFound(f"no file with id {file_id}", field="file_id")
            await policy.require_file_in_scope(session, stored)
        return files_pb2.GetFileResponse(file=file_info(stored))

    async def DownloadFile(
        self, request: files_pb2.DownloadFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[files_pb2.DownloadFileResponse]:
        file_id = required_uuid(request.file_id, "file_id")
        async with self.app.sessions() as session:
            stored = await session.get(File, file_id)
            if stored is None:
                raise NotFound(f"no file with id {file_id}", field="file_id")
            await policy.require_file_in_scope(session, stored)
        try:
            data = await self._blobs().get(stored.sha256, files.key_of(stored))
        except FileNotFoundError:
            raise NotFound(
                f"file {file_id} is recorded but its bytes are not in the store"
            ) from None
        except CorruptBlobError:
            raise DataLoss(
                f"file {file_id} is corrupted in the store (its bytes do not match its sha256)"
            ) from None
        yield files_pb2.DownloadFileResponse(file=file_info(stored))
        for start in range(0, len(data), DOWNLOAD_CHUNK_BYTES):
            yield files_pb2.DownloadFileResponse(data=data[start : start + DOWNLOAD_CHUNK_BYTES])
