"""A ``sha1/`` object read lazily from peers: reads wait only for the chunks they cover (the
fetcher's reader). Once the download has completed and the object is installed, the handle
becomes a plain mmap reader of it, like any local object, and lets the download go.
"""

from __future__ import annotations

from ..store import LocalStore, open_mmap
from .handles import Handle, ObjectHandle


class RemoteHandle(Handle):
    keep_cache = True  # the content is immutable whichever way it arrives

    def __init__(self, store: LocalStore, ino: int, sha1: str, reader):
        self.store = store
        self.ino = ino
        self.sha1 = sha1
        self.reader = reader  # net.fetcher.RemoteReader: async read(offset, size), installed, close()
        self.local: ObjectHandle | None = None

    async def read(self, offset: int, size: int):
        if self.local is None and self.reader.installed:
            self._become_local()
        if self.local is not None:
            return self.local.read_now(offset, size)
        return await self.reader.read(offset, size)

    def _become_local(self) -> None:
        try:
            mapping = open_mmap(self.store.object_path(self.sha1))
        except FileNotFoundError:  # evicted already: keep reading through the fetcher
            return
        self.local = ObjectHandle(self.ino, self.reader.size, mapping, keep_cache=True)
        self.reader.close()

    async def release(self) -> None:
        if self.local is not None:
            self.local.close()
        else:
            self.reader.close()
