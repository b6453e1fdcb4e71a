"""Content-addressed, sealed blob storage shared by the control plane and the workers.

Blobs are named by their sha256, never by a client's file name, and stored *sealed*: encrypted
with AES-256-GCM under a key derived from their own bytes (convergent encryption). The name
does not give the key, so anyone who can read the store (every worker may) learns nothing from
a blob unless they were handed its key: the control plane keeps each file's key in PostgreSQL
(`files.blob_key`) and sends the keys of a job's files with its dispatch, and a worker learns
the keys of what it makes from the bytes it made. The same bytes always seal the same way, so
storing them twice still stores them once. Reading checks the seal and then the sha256, so a
blob overwritten by someone without the bytes is refused, never used.

Two stores:
- `NatsBlobStore`: the NATS JetStream Object Store bucket `voxmesh_files`, which workers on any
  host reach through NATS alone: the default whenever the mesh runs;
- `LocalBlobStore`: a directory on one host (`<data_dir>/blobs/ab/abcdef…`), for tools that run
  without NATS.

Blobs stored before sealing existed are read as they are (their key is empty) and sealed the
next time the same bytes are stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.js import JetStreamContext
from nats.js.api import Header, ObjectInfo, ObjectMeta, ObjectMetaOptions
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import (
    MSG_ROLLUP_SUBJECT,
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DIGEST_TEMPLATE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
    ObjectStore,
)
from nats.nuid import NUID

SEALED = "voxmesh-sealed-v1"
"""The object description that marks a sealed blob (one stored before sealing lacks it)."""
_LOCAL_MAGIC = b"VXSEALv1"
# Each key seals exactly one content, always to the same bytes, so one fixed nonce is safe.
_NONCE = bytes(12)


class CorruptBlobError(Exception):
    """A blob's bytes do not hash to its name, or fail their seal: corrupted, or overwritten
    by someone who may write to the store. Readers refuse it rather than use forged content."""


class BlobKeyError(CorruptBlobError):
    """The blob cannot be opened with the key given (none, or another blob's)."""


@dataclass(frozen=True)
class BlobRef:
    """A stored blob: its name and the key that opens it."""

    sha256: str
    key: bytes


def blob_key(data: bytes) -> bytes:
    """The key that seals `data`: derived from the bytes themselves, under a label, so that
    knowing their sha256 (the blob's name) does not give it."""
    return hashlib.sha256(b"voxmesh blob key\x00" + data).digest()


def seal(data: bytes) -> tuple[BlobRef, bytes]:
    digest = hashlib.sha256(data).hexdigest()
    key = blob_key(data)
    return BlobRef(digest, key), AESGCM(key).encrypt(_NONCE, data, digest.encode())


def unseal(sha256: str, key: bytes, sealed: bytes) -> bytes:
    if len(key) != 32:
        raise BlobKeyError(f"blob {sha256} is sealed and no key for it was given")
    try:
        data = AESGCM(key).decrypt(_NONCE, sealed, sha256.encode())
    except InvalidTag:
        raise BlobKeyError(
            f"blob {sha256} does not open with the key given (a wrong key, or bytes "
            "overwritten in the store)"
        ) from None
    return verified(sha256, data)


def verified(sha256: str, data: bytes) -> bytes:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptBlobError(f"the stored bytes of {sha256} do not hash to it")
    return data


def check_digest(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    return sha256


class BlobStore(Protocol):
    async def put(self, data: bytes) -> BlobRef:
        """Store `data` sealed; return its name and key (the same bytes are stored once)."""
        ...

    async def get(self, sha256: str, key: bytes) -> bytes:
        """The blob's bytes, opened with `key`; FileNotFoundError if it is not stored,
        CorruptBlobError if what is stored does not open with the key or hash to its name."""
        ...

    async def exists(self, sha256: str) -> bool: ...


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.root / sha256[:2] / sha256

    def _put(self, data: bytes) -> BlobRef:
        ref, sealed = seal(data)
        target = self.path(ref.sha256)
        if not (target.exists() and target.read_bytes()[: len(_LOCAL_MAGIC)] == _LOCAL_MAGIC):
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                tmp.write(_LOCAL_MAGIC + sealed)
            os.replace(tmp.name, target)  # atomic: readers never see half a blob
        return ref

    async def put(self, data: bytes) -> BlobRef:
        return await asyncio.to_thread(self._put, data)

    def _get(self, sha256: str, key: bytes) -> bytes:
        stored = self.path(sha256).read_bytes()
        if stored.startswith(_LOCAL_MAGIC):
            return unseal(sha256, key, stored[len(_LOCAL_MAGIC) :])
        return verified(sha256, stored)

    async def get(self, sha256: str, key: bytes) -> bytes:
        return await asyncio.to_thread(self._get, sha256, key)

    async def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()


INLINE_SEAL_BYTES = 256 * 1024
"""Blobs up to this size are sealed on the event loop (well under a millisecond), bigger ones
in a thread."""
CHUNK_BYTES = 512 * 1024
"""Blobs go into the object store in chunks of this size (nats-py's default is 128 KiB, NATS's
largest message 1 MiB): a clip of up to half a MiB is one message, read in one direct get."""


class NatsBlobStore:
    def __init__(
        self, js: JetStreamContext, store: ObjectStore, bucket: str, *, reseal: bool = False
    ) -> None:
        """`open` makes one from the bucket's name; this takes an object store already opened
        (the control plane's provisioning holds one). `reseal`: replace a blob stored before sealing when the same bytes are
        stored (the control plane does; a worker may not purge the old chunks, so it leaves
        such a blob as it is and reports an empty key)."""
        self._store = store
        self._reseal = reseal
        # A small blob is read with direct gets on the bucket's stream, a request each, instead
        # of through a consumer that the server creates and removes for every read (about 3 ms
        # less for a short job's input, and again for its transcript).
        self._js = js
        self._bucket = bucket
        self._stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
        self._nuid = NUID()  # names a new object's chunks, as nats-py's own put does

    @classmethod
    async def open(
        cls, js: JetStreamContext, bucket: str, *, reseal: bool = False
    ) -> NatsBlobStore:
        """The blob store on `bucket` (an object store the control plane provisioned)."""
        return cls(js, await js.object_store(bucket), bucket, reseal=reseal)

    async def _info(self, sha256: str) -> ObjectInfo | None:
        """The blob's description (a direct get of its meta message), None if not stored."""
        name = base64.urlsafe_b64encode(sha256.encode()).decode()
        subject = OBJ_META_PRE_TEMPLATE.format(bucket=self._bucket, obj=name)
        try:
            msg = await self._js.get_msg(self._stream, subject=subject, direct=True)
        except NotFoundError:
            return None
        info = ObjectInfo.from_response(json.loads(msg.data or b"{}"))
        return None if info.deleted else info

    async def put(self, data: bytes) -> BlobRef:
        # Sealing a short job's transcript takes microseconds: a thread hop would cost more.
        ref, sealed = (
            seal(data) if len(data) <= INLINE_SEAL_BYTES else await asyncio.to_thread(seal, data)
        )
        info = await self._info(ref.sha256)
        if info is None:
            await self._put_new(ref.sha256, sealed)
        elif info.description != SEALED:  # stored before sealing: replaced, or left as it is
            if not self._reseal:
                return BlobRef(ref.sha256, b"")
            meta = ObjectMeta(
                description=SEALED, options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES)
            )
            await self._store.put(ref.sha256, sealed, meta=meta)  # purges the old chunks
        return ref

    async def _put_new(self, name: str, sealed: bytes) -> None:
        """Store an object not stored before as nats-py's ObjectStore.put would (its chunks,
        then its meta, which makes it visible), without the meta lookup that put makes first:
        `put` has just made it. A put that fails leaves no meta, so nothing reads the chunks."""
        nuid = self._nuid.next().decode()
        chunks = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self._bucket, obj=nuid)
        count = 0
        for start in range(0, len(sealed), CHUNK_BYTES):
            await self._js.publish(chunks, sealed[start : start + CHUNK_BYTES])
            count += 1
        info = ObjectInfo(
            name=name, description=SEALED, bucket=self._bucket, nuid=nuid, size=len(sealed),
            chunks=count, mtime=datetime.now(UTC).isoformat(),
            options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES),
            digest=OBJ_DIGEST_TEMPLATE.format(
                digest=base64.urlsafe_b64encode(hashlib.sha256(sealed).digest()).decode()
            ),
        )  # fmt: skip
        subject = OBJ_META_PRE_TEMPLATE.format(
            bucket=self._bucket, obj=base64.urlsafe_b64encode(name.encode()).decode()
        )
        await self._js.publish(
            subject,
            json.dumps(info.as_dict()).encode(),
            headers={Header.ROLLUP: MSG_ROLLUP_SUBJECT},
        )

    async def get(self, sha256: str, key: bytes) -> bytes:
        info = await self._info(check_digest(sha256))
        if info is None or not info.nuid:
            raise FileNotFoundError(f"no blob {sha256}")
        if info.chunks == 1:  # the common case: one message, fetched directly
            subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self._bucket, obj=info.nuid)
            try:
                msg = await self._js.get_msg(self._stream, subject=subject, direct=True)
            except NotFoundError:
                raise FileNotFoundError(f"blob {sha256} has lost its bytes") from None
            stored = bytes(msg.data or b"")
        else:  # several chunks (or none): streamed in order through a consumer
            try:
                result = await self._store.get(sha256)
            except (ObjectNotFoundError, NotFoundError):
                raise FileNotFoundError(f"no blob {sha256}") from None
            stored, info = bytes(result.data or b""), result.info
        if info.description == SEALED:
            return await asyncio.to_thread(unseal, sha256, key, stored)
        return verified(sha256, stored)

    async def exists(self, sha256: str) -> bool:
        return await self._info(check_digest(sha256)) is not None
