"""Reading byte ranges of an object wherever it is: in the local store, or lazily from channel
peers through the fetcher the mount uses (only the chunks a read covers are fetched)."""

from __future__ import annotations

import os

import trio

from ..errors import KacheryError, NotADirectoryManifest, ObjectNotFound
from ..store import LocalStore
from ..store.directory import MAX_MANIFEST_BYTES, Directory

BLOCK = 1 << 20  # one chunk: what a streamed response sends at a time


class LocalSource:
    def __init__(self, store: LocalStore, sha1: str, size: int):
        self.size = size
        self._store = store
        self._sha1 = sha1
        self._fd = os.open(store.object_path(sha1), os.O_RDONLY)

    async def read(self, offset: int, size: int) -> bytes:
        integrity = self._store.integrity
        if integrity.unverified(self._sha1, self.size, offset, size):
            # first read of these chunks by this daemon: checked against bit rot (EIO if rotten)
            return await trio.to_thread.run_sync(integrity.read_range, self._sha1, offset, size)
        if size <= (64 << 10):  # a page-cache hit costs microseconds: cheaper than a thread hop
            return os.pread(self._fd, size, offset)
        return await trio.to_thread.run_sync(os.pread, self._fd, size, offset)

    async def aclose(self) -> None:
        os.close(self._fd)


class RemoteSource:
    """A lazy reader of the fetcher's shared download of this object."""

    def __init__(self, reader):
        self.size = reader.size
        self._reader = reader

    async def read(self, offset: int, size: int) -> bytes:
        return bytes(await self._reader.read(offset, size))

    async def aclose(self) -> None:
        self._reader.close()


async def object_size(store: LocalStore, fetcher, sha1: str) -> int:
    """The size of an object held here or by a channel peer (a bounded wait); fetches nothing."""
    record = await trio.to_thread.run_sync(store.info, sha1)  # the index: never on the trio thread
    if record is not None:
        return record.size
    size = await fetcher.locate(sha1) if fetcher is not None else None
    if size is None:
        raise ObjectNotFound(f"{sha1} is not held by this node or its channel peers")
    return size


async def open_source(store: LocalStore, fetcher, sha1: str, manifest_sha1: str | None = None):
    """A source with ``size``, ``async read(offset, size)`` and ``async aclose()``; a manifest hash
    (from a URI) is tried before the ones providers name."""
    record = await trio.to_thread.run_sync(store.use, sha1)  # use: a cached copy moves back in the LRU order
    if record is None and fetcher is not None:
        # None: fetched whole (one chunk) or local by now
        reader = await fetcher.open_remote(sha1, manifest_sha1)
        if reader is not None:
            return RemoteSource(reader)
        record = await trio.to_thread.run_sync(store.use, sha1)
    if record is None:
        raise ObjectNotFound(f"{sha1} is not held by this node or its channel peers")
    try:
        return LocalSource(store, sha1, record.size)
    except FileNotFoundError:  # evicted between the lookup and the open
        raise ObjectNotFound(sha1) from None


async def read_directory(store: LocalStore, fetcher, sha1: str) -> Directory:
    """A directory manifest, fetched whole from channel peers if not held, each chunk checked
    against its hash before it is parsed (a rotten copy is quarantined: CorruptObject)."""
    record = await trio.to_thread.run_sync(store.use, sha1)
    if record is None and fetcher is not None:
        size = await fetcher.locate(sha1)
        if size is None:
            raise ObjectNotFound(f"{sha1} is not held by this node or its channel peers")
        if size > MAX_MANIFEST_BYTES:
            raise NotADirectoryManifest(f"{sha1}: {size} bytes is too large for a directory manifest")
        await fetcher.fetch(sha1)
        record = await trio.to_thread.run_sync(store.use, sha1)
    if record is None:
        raise ObjectNotFound(f"{sha1} is not held by this node or its channel peers")
    if record.size > MAX_MANIFEST_BYTES:
        raise NotADirectoryManifest(f"{sha1}: {record.size} bytes is too large for a directory manifest")

    def parse() -> Directory:
        try:
            return Directory.from_bytes(store.integrity.read_range(sha1, 0, record.size))
        except FileNotFoundError:  # evicted between the lookup and the read
            raise ObjectNotFound(sha1) from None
        except OSError as exc:
            raise KacheryError(f"{sha1}: {exc.strerror}") from None

    return await trio.to_thread.run_sync(parse)
