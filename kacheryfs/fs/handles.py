"""Open files and directories of the mount: one protocol, one class per kind.

Every open file is a ``Handle``: ``read``, ``write``, ``flush`` (each ``close()``), ``release``
(after the last close). The tree keeps handles by number and calls the protocol; it never asks
what kind a handle is. The kinds:

- ``ObjectHandle`` (here): an object held in the store, read through a read-only mmap.
- ``DirHandle`` (here): a directory listing, taken at opendir.
- ``DraftHandle`` (drafts.py): a ``store/`` entry open for writing, or read while being written.
- ``RemoteHandle`` (remote.py): an object read lazily from peers; an ObjectHandle once it is here.
- ``FeedHandle`` (feeds_view.py): a subfeed, read as JSON Lines, appended to by its owner.
"""

from __future__ import annotations

import trio

from ..errors import NotADirectory, NotOpenForReading, NotOpenForWriting


class Handle:
    ino: int
    keep_cache = False  # the kernel may keep this file's pages across opens (immutable content)
    direct_io = False  # bypass the page cache (content that grows under readers)
    holds_inode = True  # an open file keeps its inode alive until released

    async def read(self, offset: int, size: int):
        raise NotOpenForReading()

    def read_now(self, offset: int, size: int):
        """Bytes already at hand (local content), without waiting; others refuse."""
        raise NotOpenForReading("its bytes may have to be waited for")

    async def write(self, offset: int, data) -> int:
        raise NotOpenForWriting()

    async def flush(self) -> None:
        """On every close(): an error raised here reaches the writer's close()."""

    async def release(self) -> None:
        """After the last close: errors here reach nobody (close() has returned)."""

    def readdir(self, start: int) -> list:
        raise NotADirectory()


class CheckedReads:
    """Bit rot: the chunks a read covers are checked the first time this daemon reads them
    (store/integrity.py); a rotten object fails the read with EIO and is quarantined."""

    def __init__(self, integrity, record, inode: int, cheap: bool):
        self.integrity = integrity
        self.record = record
        self.inode = inode  # of the mapped file: a quarantine never moves a newer copy
        self.cheap = cheap  # xxh3 sums recorded: checking costs less than a thread hop

    def pending(self, offset: int, size: int) -> bool:
        return bool(self.integrity.unverified(self.record.sha1, self.record.size, offset, size))

    def check(self, mapping, offset: int, size: int) -> None:
        with memoryview(mapping) as view:
            self.integrity.verify(self.record.sha1, offset, size, view, self.inode, self.record)


class ObjectHandle(Handle):
    """An object in the store, through a read-only mmap: reads are views, no copy in Python."""

    def __init__(self, ino: int, size: int, mapping, keep_cache: bool, checks: CheckedReads | None = None):
        self.ino = ino
        self.size = size
        self.map = mapping  # mmap.mmap, or None for an empty object (which cannot be mapped)
        self.keep_cache = keep_cache
        self.checks = checks  # None: bytes this daemon has just verified itself (a finished download)

    def read_now(self, offset: int, size: int):
        if self.map is None or offset >= self.size:
            return b""
        if self.checks is not None and self.checks.pending(offset, size):
            self.checks.check(self.map, offset, size)
        return memoryview(self.map)[offset:offset + size]

    async def read(self, offset: int, size: int):
        checks = self.checks
        if self.map is not None and checks is not None and not checks.cheap and checks.pending(offset, size):
            # no recorded checksums: SHA-1 against the manifest, ~1 ms per MiB, in a worker thread
            await trio.to_thread.run_sync(checks.check, self.map, offset, size)
        # with recorded checksums the check is xxh3 over pages the reply faults in anyway: inline
        return self.read_now(offset, size)

    async def release(self) -> None:
        self.close()

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:
                pass  # a view is still being sent; the map is freed with its last view


class DirHandle(Handle):
    holds_inode = False

    def __init__(self, ino: int, entries: list):
        self.ino = ino
        self.entries = entries  # [(name, Attr)]

    def readdir(self, start: int) -> list:
        """Entries from position ``start``, each with the position after it."""
        return [(name, attr, i + 1) for i, (name, attr) in enumerate(self.entries) if i >= start]
