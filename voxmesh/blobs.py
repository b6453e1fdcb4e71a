"""Content-addressed blob storage shared by the control plane and the workers.

Blobs are named by their sha256, never by a client's file name. Two stores:
- `NatsBlobStore`: the NATS JetStream Object Store bucket `voxmesh_files`, which workers on any
  host reach through NATS alone: the default whenever the mesh runs;
- `LocalBlobStore`: a directory on one host (`<data_dir>/blobs/ab/abcdef…`), for tools that run
  without NATS.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore


class CorruptBlobError(Exception):
    """A blob's bytes do not hash to its name: corrupted, or overwritten by someone who may
    write to the store. Readers refuse it rather than use forged content."""


def verified(sha256: str, data: bytes) -> bytes:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptBlobError(f"the stored bytes of {sha256} do not hash to it")
    return data


def check_digest(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    return sha256


class BlobStore(Protocol):
    async def put(self, data: bytes) -> str:
        """Store `data`; return its sha256 (storing the same bytes twice stores them once)."""
        ...

    async def get(self, sha256: str) -> bytes:
        """The blob's bytes; FileNotFoundError if it is not stored, CorruptBlobError if what is
        stored does not hash to its name."""
        ...

    async def exists(self, sha256: str) -> bool: ...


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.root / sha256[:2] / sha256

    def _put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, target)  # atomic: readers never see half a blob
        return digest

    async def put(self, data: bytes) -> str:
        return await asyncio.to_thread(self._put, data)

    async def get(self, sha256: str) -> bytes:
        return verified(sha256, await asyncio.to_thread(self.path(sha256).read_bytes))

    async def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()


class NatsBlobStore:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if not await self.exists(digest):
            await self._store.put(digest, data)
        return digest

    async def get(self, sha256: str) -> bytes:
        try:
            result = await self._store.get(check_digest(sha256))
        except (ObjectNotFoundError, NotFoundError):
            raise FileNotFoundError(f"no blob {sha256}") from None
        return verified(sha256, bytes(result.data or b""))

    async def exists(self, sha256: str) -> bool:
        try:
            await self._store.get_info(check_digest(sha256))
            return True
        except (ObjectNotFoundError, NotFoundError):
            return False
