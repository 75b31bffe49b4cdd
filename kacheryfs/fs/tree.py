"""The virtual tree behind the mount: ``sha1/``, ``store/`` and ``feeds/`` over the local store.

Pure of pyfuse3: handlers take and return plain values and raise KacheryError, so they are tested
without a mount. fs/operations.py adapts them to pyfuse3.

- ``sha1/<hash>``: immutable objects, read through a read-only mmap (long cache timeouts).
- ``store/<name>``: names pointing at objects. Writes go to a *draft* (a temp file hashed as it
  streams) shared by every handle open for writing on that inode; ``flush`` (each ``close()``)
  commits a changed draft, so commit errors reach the writer's ``close()``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..errors import (
    InvalidName, KacheryError, NameTooLong, NotFound, NotPermitted, ReadOnly, StoreFailed,
)
from ..store import LocalStore, ObjectWriter, StoredObject, format_uri, is_sha1_hex, open_mmap
from ..store.index import NameRecord
from .inodes import FEEDS_DIR_INO, ROOT_INO, SHA1_DIR_INO, STORE_DIR_INO, InodeTable, Key

log = logging.getLogger(__name__)

URI_XATTR = "user.kachery.uri"
STATS_XATTR = "user.kachery.stats"  # on the mount's root: the node's peers and transfer counters
IMMUTABLE_TIMEOUT = 24 * 3600.0  # content under sha1/ never changes
MUTABLE_TIMEOUT = 1.0
BLOCK_SIZE = 1 << 20  # st_blksize: cp sizes its buffer from it, so writes arrive 1 MiB at a time
THREAD_WRITE_MIN = 64 << 10  # smaller writes are cheaper inline than a thread hop (~110 us)
MAX_NAME_BYTES = 255
TOP_DIRS = {"sha1": SHA1_DIR_INO, "store": STORE_DIR_INO, "feeds": FEEDS_DIR_INO}


@dataclass(frozen=True)
class Attr:
    ino: int
    is_dir: bool
    mode: int
    size: int
    mtime_ns: int
    timeout: float
    blksize: int = BLOCK_SIZE


def validate_name(name: str) -> str:
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise NameTooLong(name[:40] + "...")
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidName(repr(name))
    return name


@dataclass
class Draft:
    """Uncommitted content of a store/ entry; ``base`` is what it started from, copied lazily."""

    base: StoredObject | None
    writer: ObjectWriter | None = None
    dirty: bool = False
    error: KacheryError | None = None
    handles: int = 0
    orphaned: bool = False  # the name was unlinked while open: commit the object, name nothing
    mtime_ns: int = field(default_factory=time.time_ns)
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def size(self) -> int:
        if self.writer is not None:
            return self.writer.size
        return self.base.size if self.base else 0


@dataclass
class ObjectReader:
    ino: int
    size: int
    map: object  # mmap.mmap | None (empty object)

    def read(self, offset: int, size: int):
        if self.map is None or offset >= self.size:
            return b""
        return memoryview(self.map)[offset:offset + size]

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:
                pass  # a view is still being sent; the map is freed with its last view


@dataclass
class DraftHandle:
    ino: int
    draft: Draft
    writable: bool


@dataclass
class FeedHandle:
    ino: int
    feed_id: str
    subfeed: str
    writer: object | None  # fs.feeds_view.FeedWriter when open for writing


@dataclass
class RemoteHandle:
    ino: int
    reader: object  # net.node.RemoteReader


@dataclass
class DirHandle:
    ino: int
    entries: list[tuple[str, Attr]]


class Fetcher(Protocol):
    """The network side, injected (None on a node without network)."""

    async def locate(self, sha1: str) -> int | None: ...
    async def fetch(self, sha1: str) -> None: ...
    async def open_remote(self, sha1: str): ...  # a reader with async read(offset, size), close(); or None
    def stats(self) -> dict: ...
    async def announce(self, sha1: str, size: int, manifest_sha1: str | None) -> None: ...


class VirtualTree:
    def __init__(self, store: LocalStore, fetcher: Fetcher | None = None, feeds_view=None):
        self.store = store
        self.fetcher = fetcher
        self.remote_sizes: dict[str, int] = {}  # sha1 -> size, for objects found on peers, not yet here
        self.feeds_view = feeds_view  # fs.feeds_view.FeedsView, when the node keeps feeds
        self.inodes = InodeTable()
        self.names: dict[str, NameRecord] = {r.name: r for r in store.list_names()}
        self.drafts: dict[int, Draft] = {}
        self.handles: dict[int, object] = {}
        self._next_fh = 1
        self._limiter = trio.CapacityLimiter(2)
        self._started_ns = time.time_ns()

    # ---- attributes ---------------------------------------------------------------------------
    def _dir_attr(self, ino: int, writable: bool = False) -> Attr:
        mode = stat.S_IFDIR | (0o755 if writable else 0o555)
        return Attr(ino, True, mode, 0, self._started_ns, MUTABLE_TIMEOUT)

    def _object_attr(self, ino: int, size: int) -> Attr:
        return Attr(ino, False, stat.S_IFREG | 0o444, size, self._started_ns, IMMUTABLE_TIMEOUT)

    def _store_attr(self, ino: int, name: str) -> Attr:
        draft = self.drafts.get(ino)
        if draft is not None and not draft.orphaned:
            return Attr(ino, False, stat.S_IFREG | 0o644, draft.size, draft.mtime_ns, MUTABLE_TIMEOUT)
        record = self.names.get(name)
        if record is None:
            raise NotFound(name)
        return Attr(ino, False, stat.S_IFREG | 0o644, record.size, record.mtime_ns, MUTABLE_TIMEOUT)

    def getattr(self, ino: int) -> Attr:
        if ino == ROOT_INO or ino == SHA1_DIR_INO or ino == FEEDS_DIR_INO:
            return self._dir_attr(ino)
        if ino == STORE_DIR_INO:
            return self._dir_attr(ino, writable=True)
        key = self.inodes.key_of(ino)
        if key is None:
            draft = self.drafts.get(ino)
            if draft is not None:  # unlinked but still open
                return Attr(ino, False, stat.S_IFREG | 0o644, draft.size, draft.mtime_ns, MUTABLE_TIMEOUT)
            raise NotFound(f"inode {ino}")
        kind, name = key
        if kind in ("feed", "subfeed"):
            return self._feed_attr(ino, key)
        if kind == "sha1":
            record = self.store.info(name)
            if record is None and name in self.remote_sizes:
                return self._object_attr(ino, self.remote_sizes[name])
            if record is None:
                raise NotFound(name)
            return self._object_attr(ino, record.size)
        return self._store_attr(ino, name)

    # ---- feeds ---------------------------------------------------------------------------------
    def _feed_attr(self, ino: int, key: Key) -> Attr:
        view = self.feeds_view
        if view is None:
            raise NotFound(key[1])
        if key[0] == "feed":
            owned = view.feeds.owns(key[1])
            return Attr(ino, True, stat.S_IFDIR | (0o755 if owned else 0o555), 0, self._started_ns, 0.0)
        feed_id, subfeed = key[1].split("/", 1)
        owned = view.feeds.owns(feed_id)
        # timeout 0 and direct I/O: the size grows as entries arrive; tail -f sees it
        return Attr(ino, False, stat.S_IFREG | (0o644 if owned else 0o444), view.size(feed_id, subfeed),
                    time.time_ns(), 0.0)

    def _feed_key_of_dir(self, ino: int) -> str | None:
        key = self.inodes.key_of(ino)
        return key[1] if key is not None and key[0] == "feed" else None

    # ---- lookup -------------------------------------------------------------------------------
    def _attr_for(self, parent: int, name: str) -> Attr:
        if parent == ROOT_INO:
            if name in TOP_DIRS:
                return self.getattr(TOP_DIRS[name])
            raise NotFound(name)
        if parent == SHA1_DIR_INO:
            if not is_sha1_hex(name):
                raise NotFound(f"{name!r} is not a 40-hex SHA-1")
            record = self.store.info(name)
            if record is None:
                raise NotFound(name)
            return self._object_attr(self.inodes.ino_for(("sha1", name)), record.size)
        if parent == STORE_DIR_INO:
            validate_name(name)
            key: Key = ("store", name)
            if name not in self.names and self.inodes.ino_of(key) is None:
                raise NotFound(name)
            return self._store_attr(self.inodes.ino_for(key), name)
        if parent == FEEDS_DIR_INO:
            if self.feeds_view is None or name not in self.feeds_view.feed_ids():
                raise NotFound(name)
            return self._feed_attr(self.inodes.ino_for(("feed", name)), ("feed", name))
        feed_id = self._feed_key_of_dir(parent)
        if feed_id is not None and self.feeds_view is not None:
            key = ("subfeed", f"{feed_id}/{name}")
            if name not in self.feeds_view.subfeeds(feed_id) and self.inodes.ino_of(key) is None:
                raise NotFound(name)
            return self._feed_attr(self.inodes.ino_for(key), key)
        raise NotFound(f"inode {parent} is not a directory")

    def lookup(self, parent: int, name: str) -> Attr:
        attr = self._attr_for(parent, name)
        if attr.ino >= 16:
            self.inodes.remember(attr.ino)
        return attr

    async def lookup_or_locate(self, parent: int, name: str) -> Attr:
        """lookup, and for a hash not held here, ask the channel's peers (bounded wait)."""
        try:
            return self.lookup(parent, name)
        except NotFound:
            if parent == FEEDS_DIR_INO and self.feeds_view is not None and _is_feed_id(name):
                # a feed not known here: ask the channel (bounded wait), like sha1/
                if await self.feeds_view.discover(name):
                    return self.lookup(parent, name)
                raise
            if parent != SHA1_DIR_INO or self.fetcher is None or not is_sha1_hex(name):
                raise
        size = await self.fetcher.locate(name)
        if size is None:
            raise NotFound(f"{name} is not held by this node or its channel peers")
        self.remote_sizes[name] = size
        attr = self._object_attr(self.inodes.ino_for(("sha1", name)), size)
        self.inodes.remember(attr.ino)
        return attr

    async def open_or_fetch(self, ino: int, flags: int) -> tuple[int, bool]:
        """open; an object not held here is read lazily from peers (small ones are fetched whole)."""
        key = self.inodes.key_of(ino)
        if key is not None and key[0] == "sha1" and self.fetcher is not None and self.store.info(key[1]) is None:
            if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
                raise ReadOnly(key[1])
            reader = await self.fetcher.open_remote(key[1])
            if reader is not None:
                self.inodes.opened(ino)
                return self._new_handle(RemoteHandle(ino, reader)), True
        return self.open(ino, flags)

    async def aread(self, fh: int, offset: int, size: int):
        """read, waiting for remote chunks where the handle is a lazy remote reader."""
        handle = self.handles.get(fh)
        if isinstance(handle, RemoteHandle):
            return await handle.reader.read(offset, size)
        if isinstance(handle, FeedHandle):
            return self.feeds_view.read(handle.feed_id, handle.subfeed, offset, size)
        return self.read(fh, offset, size)

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)

    # ---- directories --------------------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        if ino == ROOT_INO:
            entries = [(n, self.getattr(i)) for n, i in TOP_DIRS.items()]
        elif ino == SHA1_DIR_INO:
            entries = [(r.sha1, self._object_attr(self.inodes.ino_for(("sha1", r.sha1)), r.size))
                       for r in self.store.list_objects()]
        elif ino == STORE_DIR_INO:
            names = set(self.names)
            names.update(k[1] for i, d in self.drafts.items()
                         if not d.orphaned and (k := self.inodes.key_of(i)) is not None)
            entries = []
            for name in sorted(names):
                try:
                    entries.append((name, self._store_attr(self.inodes.ino_for(("store", name)), name)))
                except NotFound:
                    pass
        elif ino == FEEDS_DIR_INO:
            view = self.feeds_view
            entries = [] if view is None else [
                (f, self._feed_attr(self.inodes.ino_for(("feed", f)), ("feed", f))) for f in view.feed_ids()]
        elif self._feed_key_of_dir(ino) is not None and self.feeds_view is not None:
            feed_id = self._feed_key_of_dir(ino)
            entries = []
            for sub in self.feeds_view.subfeeds(feed_id):
                key = ("subfeed", f"{feed_id}/{sub}")
                entries.append((sub, self._feed_attr(self.inodes.ino_for(key), key)))
        else:
            raise KacheryError(f"inode {ino} is not a directory")
        return self._new_handle(DirHandle(ino, entries))

    def readdir(self, fh: int, start: int) -> list[tuple[str, Attr, int]]:
        """Entries from position ``start``, each with the position after it."""
        handle = self._handle(fh, DirHandle)
        return [(name, attr, i + 1) for i, (name, attr) in enumerate(handle.entries) if i >= start]

    def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # ---- files --------------------------------------------------------------------------------
    def _new_handle(self, handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        return fh

    def _handle(self, fh: int, kind: type):
        handle = self.handles.get(fh)
        if not isinstance(handle, kind):
            raise KacheryError(f"bad file handle {fh}")
        return handle

    def _store_name(self, ino: int) -> str:
        key = self.inodes.key_of(ino)
        if key is None or key[0] != "store":
            raise NotFound(f"inode {ino}")
        return key[1]

    def _open_object(self, ino: int, sha1: str) -> int:
        record = self.store.require(sha1)
        if not record.pinned:
            self.store.touch(sha1)  # LRU order for evicting cached copies
        try:
            mapping = open_mmap(self.store.object_path(sha1))
        except FileNotFoundError:
            raise NotFound(sha1) from None
        self.inodes.opened(ino)
        return self._new_handle(ObjectReader(ino, record.size, mapping))

    def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open an existing file; returns (fh, keep_cache)."""
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        key = self.inodes.key_of(ino)
        if key is None:
            raise NotFound(f"inode {ino}")
        kind, name = key
        if kind == "subfeed":
            return self._open_subfeed(ino, name, flags), False
        if kind == "sha1":
            if writable or flags & os.O_TRUNC:
                raise ReadOnly(name)
            return self._open_object(ino, name), True
        draft = self.drafts.get(ino)
        record = self.names.get(name)
        if not writable and draft is None:
            if record is None:
                raise NotFound(name)
            return self._open_object(ino, record.sha1), False
        if draft is None:
            if record is None:
                raise NotFound(name)
            base = StoredObject(record.sha1, record.size, record.manifest_sha1)
            draft = self.drafts[ino] = Draft(base=None if flags & os.O_TRUNC else base)
            draft.dirty = bool(flags & os.O_TRUNC) and record.size > 0
        elif writable and flags & os.O_TRUNC:
            self._truncate_now(draft, 0)
        draft.handles += 1
        self.inodes.opened(ino)
        return self._new_handle(DraftHandle(ino, draft, writable)), False

    def _open_subfeed(self, ino: int, name: str, flags: int) -> int:
        from .feeds_view import FeedWriter, NotAnAppend

        feed_id, subfeed = name.split("/", 1)
        writer = None
        if (flags & os.O_ACCMODE) != os.O_RDONLY:
            if flags & os.O_TRUNC:
                raise NotAnAppend("feeds cannot be truncated")
            writer = FeedWriter(self.feeds_view, feed_id, subfeed, bool(flags & os.O_APPEND))
        self.inodes.opened(ino)
        return self._new_handle(FeedHandle(ino, feed_id, subfeed, writer))

    def is_direct_io(self, fh: int) -> bool:
        """Subfeed files bypass the page cache: their content grows under readers."""
        return isinstance(self.handles.get(fh), FeedHandle)

    def create(self, parent: int, name: str, flags: int) -> tuple[int, Attr]:
        if parent == SHA1_DIR_INO:
            raise ReadOnly(name)
        feed_id = self._feed_key_of_dir(parent)
        if feed_id is not None and self.feeds_view is not None:
            from ..feeds.entry import check_subfeed_name

            check_subfeed_name(name)
            key = ("subfeed", f"{feed_id}/{name}")
            ino = self.inodes.ino_for(key)
            fh = self._open_subfeed(ino, key[1], flags | os.O_APPEND)
            self.inodes.remember(ino)
            return fh, self._feed_attr(ino, key)
        if parent != STORE_DIR_INO:
            raise NotPermitted("files can be created only under store/")
        validate_name(name)
        ino = self.inodes.ino_for(("store", name))
        draft = self.drafts.get(ino)
        if draft is None:
            draft = self.drafts[ino] = Draft(base=None, dirty=True)
        else:
            self._truncate_now(draft, 0)
        draft.handles += 1
        self.inodes.opened(ino)
        self.inodes.remember(ino)
        return self._new_handle(DraftHandle(ino, draft, True)), self._store_attr(ino, name)

    def _truncate_now(self, draft: Draft, size: int) -> None:
        if draft.writer is None and size == 0:
            draft.base = None
        elif draft.writer is not None:
            draft.writer.truncate(size)
        else:
            raise KacheryError("truncate needs the draft's writer")  # callers ensure it
        draft.dirty = True
        draft.mtime_ns = time.time_ns()

    def read(self, fh: int, offset: int, size: int):
        handle = self.handles.get(fh)
        if isinstance(handle, ObjectReader):
            return handle.read(offset, size)
        handle = self._handle(fh, DraftHandle)
        draft = handle.draft
        if draft.writer is not None:
            return draft.writer.pread(offset, size)
        if draft.base is None or draft.base.size == 0:
            return b""
        with open(self.store.object_path(draft.base.sha1), "rb") as f:
            return os.pread(f.fileno(), size, offset)

    async def _ensure_writer(self, draft: Draft) -> ObjectWriter:
        if draft.writer is None:
            writer = self.store.writer()
            if draft.base is not None and draft.base.size:
                source = self.store.object_path(draft.base.sha1)
                try:
                    await trio.to_thread.run_sync(_copy_into, source, writer, limiter=self._limiter)
                except BaseException:
                    writer.abort()
                    raise
            draft.writer = writer
        return draft.writer

    async def write(self, fh: int, offset: int, data) -> int:
        feed_handle = self.handles.get(fh)
        if isinstance(feed_handle, FeedHandle):
            if feed_handle.writer is None:
                raise KacheryError("file not open for writing")
            return await feed_handle.writer.write(offset, data)
        handle = self._handle(fh, DraftHandle)
        if not handle.writable:
            raise KacheryError("file not open for writing")  # the kernel checks this first
        draft = handle.draft
        async with draft.lock:
            if draft.error is not None:
                raise draft.error
            writer = await self._ensure_writer(draft)
            try:
                if len(data) >= THREAD_WRITE_MIN:
                    written = await trio.to_thread.run_sync(writer.pwrite, offset, data, limiter=self._limiter)
                else:
                    written = writer.pwrite(offset, data)
            except KacheryError as exc:
                draft.error = exc  # reported again on flush so close() fails too
                raise
            draft.dirty = True
            draft.mtime_ns = time.time_ns()
            return written

    async def flush(self, fh: int) -> None:
        handle = self.handles.get(fh)
        if isinstance(handle, FeedHandle) and handle.writer is not None:
            await handle.writer.flush()
        if isinstance(handle, DraftHandle) and handle.writable:
            await self._commit(handle.ino, handle.draft)

    async def _commit(self, ino: int, draft: Draft) -> StoredObject | None:
        async with draft.lock:
            if draft.error is not None:
                raise draft.error
            if not draft.dirty:
                return None
            writer = await self._ensure_writer(draft)
            draft.writer = None
            draft.dirty = False
            try:
                obj = await trio.to_thread.run_sync(writer.commit, limiter=self._limiter)
            except KacheryError as exc:
                draft.error = exc
                raise
            except OSError as exc:
                draft.error = StoreFailed(str(exc))
                raise draft.error from None
            draft.base = obj
            key = self.inodes.key_of(ino)
            if not draft.orphaned and key is not None:
                self.names[key[1]] = self.store.set_name(key[1], obj)
            if self.fetcher is not None:
                await self.fetcher.announce(obj.sha1, obj.size, obj.manifest_sha1)
            return obj

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if isinstance(handle, FeedHandle):
            self.inodes.closed(handle.ino)
            return
        if isinstance(handle, (ObjectReader, RemoteHandle)):
            (handle.reader if isinstance(handle, RemoteHandle) else handle).close()
            self.inodes.closed(handle.ino)
            return
        if not isinstance(handle, DraftHandle):
            return
        draft = handle.draft
        draft.handles -= 1
        if draft.handles <= 0:
            try:
                if draft.writer is not None and draft.error is None:
                    draft.writer.mark_modified()  # mmap stores can land after the last flush
                    await self._commit(handle.ino, draft)
            except KacheryError as exc:
                # release errors cannot reach the writer (close() has returned): log them.
                log.error("could not commit %s after last close: %s", self.inodes.key_of(handle.ino), exc)
            finally:
                if draft.writer is not None:
                    draft.writer.abort()
                    draft.writer = None
                if self.drafts.get(handle.ino) is draft:
                    del self.drafts[handle.ino]
        self.inodes.closed(handle.ino)

    async def truncate(self, ino: int, size: int, fh: int | None) -> Attr:
        key = self.inodes.key_of(ino)
        if key is None:
            raise NotFound(f"inode {ino}")
        if key[0] == "subfeed":
            from .feeds_view import NotAnAppend

            raise NotAnAppend("feeds cannot be truncated")
        if key[0] != "store":
            raise ReadOnly(key[1])
        draft = self.drafts.get(ino)
        if draft is not None:
            async with draft.lock:
                if size == 0 and draft.writer is None:
                    self._truncate_now(draft, 0)
                else:
                    await self._ensure_writer(draft)
                    self._truncate_now(draft, size)
            return self._store_attr(ino, key[1])
        # truncate(1) on a closed file: a one-shot draft committed at once.
        fh_new, _ = self.open(ino, os.O_WRONLY)
        try:
            draft = self.drafts[ino]
            async with draft.lock:
                await self._ensure_writer(draft)
                self._truncate_now(draft, size)
            await self.flush(fh_new)
        finally:
            await self.release(fh_new)
        return self._store_attr(ino, key[1])

    # ---- names --------------------------------------------------------------------------------
    def unlink(self, parent: int, name: str) -> None:
        if parent == SHA1_DIR_INO:
            raise ReadOnly(name)
        if parent != STORE_DIR_INO:
            raise NotPermitted(name)
        validate_name(name)
        key: Key = ("store", name)
        ino = self.inodes.ino_of(key)
        draft = self.drafts.get(ino) if ino is not None else None
        if name not in self.names and draft is None:
            raise NotFound(name)
        if name in self.names:
            self.store.remove_name(name)
            del self.names[name]
        if draft is not None:
            draft.orphaned = True
        self.inodes.detach(key)

    def rename(self, old_parent: int, old: str, new_parent: int, new: str) -> None:
        if SHA1_DIR_INO in (old_parent, new_parent):
            raise ReadOnly(old)
        if old_parent != STORE_DIR_INO or new_parent != STORE_DIR_INO:
            raise NotPermitted("renames only within store/")
        validate_name(old)
        validate_name(new)
        old_key, new_key = ("store", old), ("store", new)
        old_ino = self.inodes.ino_of(old_key)
        if old not in self.names and (old_ino is None or old_ino not in self.drafts):
            raise NotFound(old)
        if old == new:
            return
        if old in self.names:
            self.store.rename(old, new)
            record = self.names.pop(old)
            self.names[new] = NameRecord(new, record.sha1, record.size, record.manifest_sha1, record.mtime_ns)
        else:
            self.names.pop(new, None)
            self.store.remove_name(new)
        replaced = self.inodes.ino_of(new_key)
        if replaced is not None and replaced in self.drafts:
            self.drafts[replaced].orphaned = True
        self.inodes.rekey(old_key, new_key)

    def mkdir(self, parent: int, name: str) -> None:
        if parent == SHA1_DIR_INO:
            raise ReadOnly(name)
        raise NotPermitted("store/ is flat: no subdirectories")

    # ---- extended attributes -------------------------------------------------------------------
    def uri_of(self, ino: int) -> str | None:
        key = self.inodes.key_of(ino)
        if key is None:
            return None
        kind, name = key
        if kind == "sha1":
            record = self.store.info(name)
            return format_uri(name, "", record.manifest_sha1) if record else None
        draft = self.drafts.get(ino)
        if draft is not None and (draft.dirty or draft.writer is not None):
            return None  # not committed yet
        record = self.names.get(name)
        return format_uri(record.sha1, name, record.manifest_sha1) if record else None

    def getxattr(self, ino: int, name: str) -> bytes:
        if name == STATS_XATTR and ino == ROOT_INO and self.fetcher is not None:
            return json.dumps(self.fetcher.stats()).encode()
        if name == URI_XATTR:
            uri = self.uri_of(ino)
            if uri is not None:
                return uri.encode()
        raise _NoAttr(name)

    def listxattr(self, ino: int) -> list[str]:
        return [URI_XATTR] if self.uri_of(ino) is not None else []

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.store.root)

    async def close_all(self) -> None:
        """On unmount: commit what is pending, free maps and temp files."""
        for fh in list(self.handles):
            await self.release(fh)


def _is_feed_id(name: str) -> bool:
    from ..feeds.entry import is_feed_id

    return is_feed_id(name)


class _NoAttr(KacheryError):
    """No such extended attribute"""

    errno = errno.ENODATA


def _copy_into(source: os.PathLike, writer: ObjectWriter) -> None:
    with open(source, "rb") as f:
        while block := f.read(1 << 20):
            writer.write(block)
