"""The virtual tree behind the mount: ``sha1/``, ``store/`` and ``feeds/`` over the local store.

Pure of pyfuse3: handlers take and return plain values and raise KacheryError, so they are tested
without a mount. fs/operations.py adapts them to pyfuse3.

- ``sha1/<hash>``: immutable objects, read through a read-only mmap (long cache timeouts).
- ``store/<path>``: names pointing at objects, in directories (store_names.py). Writes go to a
  *draft* (drafts.py) shared by every handle open for writing on that inode; ``flush`` (each
  ``close()``) commits a changed draft. A directory's URI is its directory manifest's.
- ``sha1dir/<hash>/<path>``: directory manifests browsed read-only (dir_view.py).
- ``feeds/<feed id>/<subfeed>``: feeds as files (feeds_view.py).

Open files and directories are handles (handles.py): the tree picks the kind at open and from then
on calls their one protocol (read, write, flush, release).

Index queries never run on the trio thread in the mount: a handler that needs one is written as a
``Step`` (the query, and the rest given its answer). Its synchronous form (``getattr``, ``lookup``,
``open``...: tests and callers outside trio) runs the query inline; its async form (``agetattr``,
``lookup_or_locate``, ``open_or_fetch``..., which fs/operations.py calls) runs it in a worker
thread, so a writer holding the SQLite lock in another process delays that request, not the mount.
Name changes (commit, unlink, rename) hold ``_names_lock`` across their index write and the update
of ``names``, so they apply in one order.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Generic, Protocol, TypeVar

import trio

from ..errors import (
    AlreadyExists, BadFileHandle, DirectoryNotEmpty, InvalidName, IsADirectory, KacheryError, NameTooLong,
    NoSuchAttribute, NotADirectory, NotADirectoryManifest, NotAnAppend, NotFound, NotPermitted, ObjectNotFound,
    ReadOnly,
)
from ..store import (
    MAX_MANIFEST_BYTES, Directory, FileEntry, LocalStore, NameRecord, StoredObject, build_directory, format_dir_uri, format_uri,
    is_sha1_hex, open_mmap,
)
from .dir_view import DirectoryViews, root_sha1
from .drafts import Draft, Drafts
from .handles import CheckedReads, DirHandle, Handle, ObjectHandle
from .inodes import (
    FEEDS_DIR_INO, FIRST_DYNAMIC_INO, ROOT_INO, SHA1_DIR_INO, SHA1DIR_DIR_INO, STORE_DIR_INO, InodeTable, Key,
)
from .remote import RemoteHandle
from .store_names import StoreNames, is_under, join, moved

log = logging.getLogger(__name__)

URI_XATTR = "user.kachery.uri"
STATS_XATTR = "user.kachery.stats"  # on the mount's root: the node's peers and transfer counters
IMMUTABLE_TIMEOUT = 24 * 3600.0  # content under sha1/ never changes
MUTABLE_TIMEOUT = 1.0
BLOCK_SIZE = 1 << 20  # st_blksize: cp sizes its buffer from it, so writes arrive 1 MiB at a time
MAX_NAME_BYTES = 255
TOP_DIRS = {"sha1": SHA1_DIR_INO, "sha1dir": SHA1DIR_DIR_INO, "store": STORE_DIR_INO, "feeds": FEEDS_DIR_INO}
INDEX_THREADS = 2

T = TypeVar("T")


@dataclass(frozen=True)
class Attr:
    ino: int
    is_dir: bool
    mode: int
    size: int
    mtime_ns: int
    timeout: float
    blksize: int = BLOCK_SIZE


@dataclass(frozen=True)
class Step(Generic[T]):
    """A handler split at the one index query it needs: ``query`` (None if it needs none) and
    ``finish``, the rest of the handler given the query's answer."""

    query: Callable[[], Any] | None
    finish: Callable[[Any], T]

    def now(self) -> T:
        """Run it here: the query inline."""
        return self.finish(self.query() if self.query is not None else None)

    def then(self, after: Callable[[T], Any]) -> "Step":
        return Step(self.query, lambda answer: after(self.finish(answer)))


def no_query(fn: Callable[..., T], *args: Any) -> Step[T]:
    return Step(None, lambda _answer: fn(*args))


def validate_name(name: str) -> str:
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise NameTooLong(name[:40] + "...")
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidName(repr(name))
    return name


class Fetcher(Protocol):
    """The network side, injected (None on a node without network)."""

    async def locate(self, sha1: str) -> int | None: ...
    async def fetch(self, sha1: str, manifest_sha1: str | None = None) -> None: ...
    async def open_remote(self, sha1: str, manifest_sha1: str | None = None): ...  # None once local, else a reader
    def stats(self) -> dict: ...
    async def announce(self, sha1: str, size: int, manifest_sha1: str | None) -> None: ...


class VirtualTree:
    def __init__(self, store: LocalStore, fetcher: Fetcher | None = None, feeds_view=None):
        self.store = store
        self.fetcher = fetcher
        self.remote_sizes: dict[str, int] = {}  # sha1 -> size, for objects found on peers, not yet here
        self.feeds_view = feeds_view  # fs.feeds_view.FeedsView, when the node keeps feeds
        self.inodes = InodeTable()
        self.store_names = StoreNames(store.list_names(), store.list_dirs())
        self.dir_views = DirectoryViews()
        self.drafts = Drafts(store, self._committed)
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._started_ns = time.time_ns()
        self._names_lock = trio.Lock()
        self._index_limiter = trio.CapacityLimiter(INDEX_THREADS)

    def run_tasks_in(self, nursery: trio.Nursery) -> None:
        """Work that outlives a request runs in tasks of ``nursery`` (the mount's): store/ writes are
        queued, then written and hashed. Without it (handlers called directly) writes are written
        and hashed before they are answered."""
        self.drafts.nursery = nursery

    @property
    def names(self) -> dict[str, NameRecord]:
        """Committed files of store/ by path."""
        return self.store_names.files

    async def _soon(self, step: Step[T]) -> T:
        """Run a step from trio: its index query in a worker thread."""
        if step.query is None:
            return step.finish(None)
        answer = await trio.to_thread.run_sync(step.query, limiter=self._index_limiter)
        return step.finish(answer)

    # ---- attributes ---------------------------------------------------------------------------
    def _dir_attr(self, ino: int, writable: bool = False) -> Attr:
        mode = stat.S_IFDIR | (0o755 if writable else 0o555)
        return Attr(ino, True, mode, 0, self._started_ns, MUTABLE_TIMEOUT)

    def _object_attr(self, ino: int, size: int) -> Attr:
        return Attr(ino, False, stat.S_IFREG | 0o444, size, self._started_ns, IMMUTABLE_TIMEOUT)

    def _immutable_dir_attr(self, ino: int) -> Attr:
        return Attr(ino, True, stat.S_IFDIR | 0o555, 0, self._started_ns, IMMUTABLE_TIMEOUT)

    def _store_attr(self, ino: int, name: str) -> Attr:
        draft = self.drafts.get(ino)
        if draft is not None and not draft.orphaned:
            return Attr(ino, False, stat.S_IFREG | 0o644, draft.size, draft.mtime_ns, MUTABLE_TIMEOUT)
        record = self.names.get(name)
        if record is None:
            raise NotFound(name)
        return Attr(ino, False, stat.S_IFREG | 0o644, record.size, record.mtime_ns, MUTABLE_TIMEOUT)

    def getattr(self, ino: int) -> Attr:
        return self._getattr(ino).now()

    async def agetattr(self, ino: int) -> Attr:
        return await self._soon(self._getattr(ino))

    def _getattr(self, ino: int) -> Step[Attr]:
        key = self.inodes.key_of(ino)
        if key is not None and key[0] == "sha1":
            return Step(partial(self.store.info, key[1]), partial(self._sha1_attr, ino, key[1]))
        return no_query(self._local_attr, ino, key)

    def _sha1_attr(self, ino: int, sha1: str, record) -> Attr:
        if record is None and sha1 in self.remote_sizes:
            return self._object_attr(ino, self.remote_sizes[sha1])
        if record is None:
            raise NotFound(sha1)
        return self._object_attr(ino, record.size)

    def _local_attr(self, ino: int, key: Key | None) -> Attr:
        """Attributes of everything but sha1/ entries: no index query."""
        if ino in (ROOT_INO, SHA1_DIR_INO, SHA1DIR_DIR_INO, FEEDS_DIR_INO):
            return self._dir_attr(ino)
        if ino == STORE_DIR_INO:
            return self._dir_attr(ino, writable=True)
        if key is None:
            draft = self.drafts.get(ino)
            if draft is not None:  # unlinked but still open
                return Attr(ino, False, stat.S_IFREG | 0o644, draft.size, draft.mtime_ns, MUTABLE_TIMEOUT)
            raise NotFound(f"inode {ino}")
        if key[0] in ("feed", "subfeed"):
            return self._feed_attr(ino, key)
        if key[0] == "storedir":
            if not self.store_names.is_dir(key[1]):
                raise NotFound(key[1])
            return self._dir_attr(ino, writable=True)
        if key[0] == "sha1dir":
            return self._sha1dir_attr(ino, self.dir_views.entry(key[1]))
        return self._store_attr(ino, key[1])

    def _sha1dir_attr(self, ino: int, entry: Directory | FileEntry) -> Attr:
        if isinstance(entry, FileEntry):
            return self._object_attr(ino, entry.size)
        return self._immutable_dir_attr(ino)

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
    def _lookup(self, parent: int, name: str) -> Step[Attr]:
        if parent == SHA1_DIR_INO:
            if not is_sha1_hex(name):
                raise NotFound(f"{name!r} is not a 40-hex SHA-1")
            return Step(partial(self.store.info, name), partial(self._found_object, name))
        if parent == SHA1DIR_DIR_INO:
            sha1 = root_sha1(name)
            if sha1 is None:
                raise NotFound(f"{name!r} is not a 40-hex SHA-1 (of a directory manifest)")
            if sha1 in self.dir_views.manifests:
                return no_query(self._found_directory, name, None)
            return Step(partial(self._read_directory, sha1), partial(self._found_directory, name))
        return no_query(self._attr_for, parent, name).then(self._remember)

    def _read_directory(self, sha1: str) -> Directory | None:
        """A directory manifest held here, checked against its hash and parsed (None if not held).
        Blocking: a worker thread."""
        record = self.store.use(sha1)
        if record is None:
            return None
        if record.size > MAX_MANIFEST_BYTES:
            raise NotADirectoryManifest(f"{sha1}: {record.size} bytes is too large for a directory manifest")
        try:  # every chunk verified: a rotten copy is quarantined (CorruptObject), never parsed
            data = self.store.integrity.read_range(sha1, 0, record.size)
        except OSError as exc:
            raise NotFound(f"{sha1}: {exc.strerror}") from None
        return Directory.from_bytes(data)

    def _found_directory(self, name: str, directory: Directory | None) -> Attr:
        sha1 = name[:40]
        if directory is not None:
            self.dir_views.add(sha1, directory)
        elif sha1 not in self.dir_views.manifests:
            raise ObjectNotFound(sha1)
        return self._remember(self._immutable_dir_attr(self.inodes.ino_for(("sha1dir", name))))

    def _found_object(self, sha1: str, record) -> Attr:
        if record is None:
            raise NotFound(sha1)
        return self._remember(self._object_attr(self.inodes.ino_for(("sha1", sha1)), record.size))

    def _attr_for(self, parent: int, name: str) -> Attr:
        """Lookup outside sha1/: no index query."""
        if parent == ROOT_INO:
            if name in TOP_DIRS:
                return self._local_attr(TOP_DIRS[name], None)
            raise NotFound(name)
        store_dir = self._store_dir_path(parent)
        if store_dir is not None:
            validate_name(name)
            path = join(store_dir, name)
            if path in self.store_names.dirs:
                return self._dir_attr(self.inodes.ino_for(("storedir", path)), writable=True)
            key: Key = ("store", path)
            if path not in self.names and self.inodes.ino_of(key) is None:
                raise NotFound(path)
            return self._store_attr(self.inodes.ino_for(key), path)
        parent_key = self.inodes.key_of(parent)
        if parent_key is not None and parent_key[0] == "sha1dir":
            path = f"{parent_key[1]}/{name}"
            return self._sha1dir_attr(self.inodes.ino_for(("sha1dir", path)), self.dir_views.entry(path))
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

    def _store_dir_path(self, ino: int) -> str | None:
        """The path of a directory under store/ ('' for store/ itself), None for any other inode."""
        if ino == STORE_DIR_INO:
            return ""
        key = self.inodes.key_of(ino)
        return key[1] if key is not None and key[0] == "storedir" else None

    def _require_store_dir(self, ino: int, name: str) -> str:
        """The store/ directory to change something in, or the right refusal."""
        path = self._store_dir_path(ino)
        if path is not None:
            return path
        if self._read_only_dir(ino):
            raise ReadOnly(name)
        raise NotPermitted("files and directories can be created only under store/")

    def _read_only_dir(self, ino: int) -> bool:
        key = self.inodes.key_of(ino)
        return ino in (SHA1_DIR_INO, SHA1DIR_DIR_INO) or (key is not None and key[0] == "sha1dir")

    def _remember(self, attr: Attr) -> Attr:
        if attr.ino >= FIRST_DYNAMIC_INO:  # the fixed directories need no lookup count
            self.inodes.remember(attr.ino)
        return attr

    def lookup(self, parent: int, name: str) -> Attr:
        return self._lookup(parent, name).now()

    async def lookup_or_locate(self, parent: int, name: str) -> Attr:
        """lookup, and for a hash not held here, ask the channel's peers (bounded wait)."""
        try:
            return await self._soon(self._lookup(parent, name))
        except NotFound:
            if parent == FEEDS_DIR_INO and self.feeds_view is not None and _is_feed_id(name):
                # a feed not known here: ask the channel (bounded wait), like sha1/
                if await self.feeds_view.discover(name):
                    return await self._soon(self._lookup(parent, name))
                raise
            if parent == SHA1DIR_DIR_INO and self.fetcher is not None and root_sha1(name) is not None:
                return await self._fetch_directory(name)
            if parent != SHA1_DIR_INO or self.fetcher is None or not is_sha1_hex(name):
                raise
        size = await self.fetcher.locate(name)
        if size is None:
            raise NotFound(f"{name} is not held by this node or its channel peers")
        self.remote_sizes[name] = size
        return self._remember(self._object_attr(self.inodes.ino_for(("sha1", name)), size))

    async def _fetch_directory(self, name: str) -> Attr:
        """A directory manifest not held here: fetched whole from channel peers (bounded wait)."""
        sha1 = name[:40]
        try:
            await self.fetcher.fetch(sha1)
        except NotADirectoryManifest:
            raise
        except KacheryError as exc:
            raise NotFound(f"{sha1}: {exc}") from None
        return await self._soon(self._lookup(SHA1DIR_DIR_INO, name))

    def _object_of(self, key: Key | None) -> tuple[str, str | None] | None:
        """(sha1, manifest sha1 if known) of the object behind a file's key, for sha1/ and sha1dir/."""
        if key is not None and key[0] == "sha1":
            return key[1], None
        if key is not None and key[0] == "sha1dir":
            entry = self.dir_views.entry(key[1])
            if isinstance(entry, FileEntry):
                return entry.sha1, entry.manifest_sha1
        return None

    async def open_or_fetch(self, ino: int, flags: int) -> tuple[int, bool]:
        """open; an object not held here is read lazily from peers (small ones are fetched whole)."""
        key = self.inodes.key_of(ino)
        try:
            return await self._soon(self._open(ino, flags))
        except ObjectNotFound:
            target = self._object_of(key)
            if target is None or self.fetcher is None:
                raise
        sha1, manifest_sha1 = target
        reader = await self.fetcher.open_remote(sha1, manifest_sha1)
        if reader is None:  # here by now (a small object is fetched whole)
            return await self._soon(self._open(ino, flags))
        return self._add(RemoteHandle(self.store, ino, sha1, reader)), True

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)

    # ---- directories --------------------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        return self._opendir(ino).now()

    async def aopendir(self, ino: int) -> int:
        return await self._soon(self._opendir(ino))

    def _opendir(self, ino: int) -> Step[int]:
        if ino == SHA1_DIR_INO:
            return Step(self.store.list_objects, self._list_objects)
        return no_query(self._list_local, ino)

    def _list_store_dir(self, path: str) -> list[tuple[str, Attr]]:
        pending = [k[1] for i in self.drafts.named_inodes() if (k := self.inodes.key_of(i)) is not None]
        dirs, files = self.store_names.children(path, pending)
        entries = [(d, self._dir_attr(self.inodes.ino_for(("storedir", join(path, d))), writable=True))
                   for d in dirs]
        for name in files:
            try:
                entries.append((name, self._store_attr(self.inodes.ino_for(("store", join(path, name))),
                                                       join(path, name))))
            except NotFound:
                pass
        return entries

    def _list_objects(self, records) -> int:
        entries = [(r.sha1, self._object_attr(self.inodes.ino_for(("sha1", r.sha1)), r.size)) for r in records]
        return self._add(DirHandle(SHA1_DIR_INO, entries))

    def _list_local(self, ino: int) -> int:
        if ino == ROOT_INO:
            entries = [(n, self._local_attr(i, None)) for n, i in TOP_DIRS.items()]
        elif self._store_dir_path(ino) is not None:
            entries = self._list_store_dir(self._store_dir_path(ino))
        elif ino == SHA1DIR_DIR_INO:
            entries = []  # like sha1/ of objects not held here: looked up by hash, never listed
        elif (key := self.inodes.key_of(ino)) is not None and key[0] == "sha1dir":
            directory = self.dir_views.entry(key[1])
            if not isinstance(directory, Directory):
                raise NotADirectory(key[1])
            entries = [(n, self._sha1dir_attr(self.inodes.ino_for(("sha1dir", f"{key[1]}/{n}")), e))
                       for n, e in (*sorted(directory.dirs.items()), *sorted(directory.files.items()))]
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
        return self._add(DirHandle(ino, entries))

    def readdir(self, fh: int, start: int) -> list[tuple[str, Attr, int]]:
        """Entries from position ``start``, each with the position after it."""
        return self._handle(fh).readdir(start)

    def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # ---- files: opening -----------------------------------------------------------------------
    def _add(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        if handle.holds_inode:
            self.inodes.opened(handle.ino)
        return fh

    def _handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None:
            raise BadFileHandle(str(fh))
        return handle

    def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open an existing file; returns (fh, keep_cache)."""
        return self._open(ino, flags).now()

    def _open(self, ino: int, flags: int) -> Step[tuple[int, bool]]:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        key = self.inodes.key_of(ino)
        if key is None:
            raise NotFound(f"inode {ino}")
        kind, name = key
        if kind == "subfeed":
            return no_query(lambda: (self._open_subfeed(ino, name, flags), False))
        if kind in ("sha1", "sha1dir"):
            if writable or flags & os.O_TRUNC:
                raise ReadOnly(name)
            target = self._object_of(key)
            if target is None:
                raise IsADirectory(name)
            return self._open_object(ino, target[0], keep_cache=True)
        if kind == "storedir":
            raise IsADirectory(name)
        record = self.names.get(name)
        if self.drafts.get(ino) is None:
            if record is None:
                raise NotFound(name)
            if not writable:  # no draft: the committed object, read like any other
                return self._open_object(ino, record.sha1, keep_cache=False)
        base = StoredObject(record.sha1, record.size, record.manifest_sha1) if record else None
        return no_query(lambda: (self._add(self.drafts.open(ino, base, flags)), False))

    def _open_object(self, ino: int, sha1: str, keep_cache: bool) -> Step[tuple[int, bool]]:
        def query():
            record = self.store.use(sha1)  # use: a cached copy moves up the LRU order
            # whether its chunks have recorded checksums (loaded now, off the trio thread)
            return record, record is not None and self.store.integrity.cheap(record)

        def finish(answer) -> tuple[int, bool]:
            record, cheap = answer
            if record is None:
                raise ObjectNotFound(sha1)
            path = self.store.object_path(sha1)
            try:
                inode = os.stat(path).st_ino
                mapping = open_mmap(path)
            except FileNotFoundError:
                raise NotFound(sha1) from None
            checks = CheckedReads(self.store.integrity, record, inode, cheap)
            return self._add(ObjectHandle(ino, record.size, mapping, keep_cache, checks)), keep_cache

        return Step(query, finish)

    def _open_subfeed(self, ino: int, name: str, flags: int) -> int:
        from .feeds_view import FeedHandle, FeedWriter

        feed_id, subfeed = name.split("/", 1)
        writer = None
        if (flags & os.O_ACCMODE) != os.O_RDONLY:
            if flags & os.O_TRUNC:
                raise NotAnAppend("feeds cannot be truncated")
            writer = FeedWriter(self.feeds_view, feed_id, subfeed, bool(flags & os.O_APPEND))
        return self._add(FeedHandle(self.feeds_view, ino, feed_id, subfeed, writer))

    def is_direct_io(self, fh: int) -> bool:
        """Subfeed files bypass the page cache: their content grows under readers."""
        return self._handle(fh).direct_io

    def create(self, parent: int, name: str, flags: int) -> tuple[int, Attr]:
        if self._read_only_dir(parent):
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
        path = join(self._require_store_dir(parent, name), validate_name(name))
        if path in self.store_names.dirs:
            raise IsADirectory(path)
        ino = self.inodes.ino_for(("store", path))
        fh = self._add(self.drafts.create(ino, flags))
        self.inodes.remember(ino)
        return fh, self._store_attr(ino, path)

    # ---- files: the handle protocol -----------------------------------------------------------
    def read(self, fh: int, offset: int, size: int):
        """Bytes of a local object or draft, at hand (no waiting)."""
        return self._handle(fh).read_now(offset, size)

    async def aread(self, fh: int, offset: int, size: int):
        """read, waiting where the bytes come from peers."""
        return await self._handle(fh).read(offset, size)

    async def write(self, fh: int, offset: int, data) -> int:
        return await self._handle(fh).write(offset, data)

    async def flush(self, fh: int) -> None:
        handle = self.handles.get(fh)
        if handle is not None:
            await handle.flush()

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        try:
            await handle.release()
        finally:
            if handle.holds_inode:
                self.inodes.closed(handle.ino)

    async def _committed(self, ino: int, obj: StoredObject, draft: Draft) -> None:
        """A draft became an object: its name now points at it; peers hear of it."""
        async with self._names_lock:
            key = self.inodes.key_of(ino)
            if not draft.orphaned and key is not None:
                record = await trio.to_thread.run_sync(self.store.set_name, key[1], obj, limiter=self._index_limiter)
                self.names[key[1]] = record
        if self.fetcher is not None:
            await self.fetcher.announce(obj.sha1, obj.size, obj.manifest_sha1)

    async def truncate(self, ino: int, size: int, fh: int | None) -> Attr:
        key = self.inodes.key_of(ino)
        if key is None:
            raise NotFound(f"inode {ino}")
        if key[0] == "subfeed":
            raise NotAnAppend("feeds cannot be truncated")
        if key[0] != "store":
            raise ReadOnly(key[1])
        if not await self.drafts.truncate(ino, size):
            # truncate(1) on a closed file: a one-shot draft committed at once.
            fh_new, _ = self.open(ino, os.O_WRONLY)
            try:
                await self.drafts.truncate(ino, size)
                await self.flush(fh_new)
            finally:
                await self.release(fh_new)
        return self._store_attr(ino, key[1])

    # ---- names --------------------------------------------------------------------------------
    def unlink(self, parent: int, name: str) -> None:
        self._unlink(parent, name).now()

    async def aunlink(self, parent: int, name: str) -> None:
        async with self._names_lock:
            await self._soon(self._unlink(parent, name))

    def _unlink(self, parent: int, name: str) -> Step[None]:
        if self._read_only_dir(parent):
            raise ReadOnly(name)
        store_dir = self._store_dir_path(parent)
        if store_dir is None:
            raise NotPermitted(name)
        path = join(store_dir, validate_name(name))
        if path in self.store_names.dirs:
            raise IsADirectory(path)
        key: Key = ("store", path)
        ino = self.inodes.ino_of(key)
        draft = self.drafts.get(ino) if ino is not None else None
        named = path in self.names
        if not named and draft is None:
            raise NotFound(path)

        def finish(_answer) -> None:
            if named:
                del self.names[path]
            if draft is not None:
                draft.orphaned = True
            self.inodes.detach(key)

        return Step(partial(self.store.remove_name, path) if named else None, finish)

    def rename(self, old_parent: int, old: str, new_parent: int, new: str) -> None:
        self._rename(old_parent, old, new_parent, new).now()

    async def arename(self, old_parent: int, old: str, new_parent: int, new: str) -> None:
        async with self._names_lock:
            await self._soon(self._rename(old_parent, old, new_parent, new))

    def _rename(self, old_parent: int, old: str, new_parent: int, new: str) -> Step[None]:
        if self._read_only_dir(old_parent) or self._read_only_dir(new_parent):
            raise ReadOnly(old)
        old_dir, new_dir = self._store_dir_path(old_parent), self._store_dir_path(new_parent)
        if old_dir is None or new_dir is None:
            raise NotPermitted("renames only within store/")
        old_path, new_path = join(old_dir, validate_name(old)), join(new_dir, validate_name(new))
        if old_path in self.store_names.dirs:
            return self._rename_dir(old_path, new_path)
        if new_path in self.store_names.dirs:
            raise IsADirectory(new_path)
        old_key, new_key = ("store", old_path), ("store", new_path)
        old_ino = self.inodes.ino_of(old_key)
        named = old_path in self.names
        if not named and (old_ino is None or self.drafts.get(old_ino) is None):
            raise NotFound(old_path)
        if old_path == new_path:
            return no_query(lambda: None)

        def finish(_answer) -> None:
            if named:
                record = self.names.pop(old_path)
                self.names[new_path] = NameRecord(new_path, record.sha1, record.size, record.manifest_sha1,
                                                  record.mtime_ns)
            else:
                self.names.pop(new_path, None)
            self._orphan_draft(self.inodes.ino_of(new_key))
            self.inodes.rekey(old_key, new_key)

        # a name written but not committed yet has no index entry: only what it replaces goes
        query = partial(self.store.rename, old_path, new_path) if named else partial(self.store.remove_name, new_path)
        return Step(query, finish)

    def _orphan_draft(self, ino: int | None) -> None:
        draft = self.drafts.get(ino) if ino is not None else None
        if draft is not None:
            draft.orphaned = True

    def _pending_paths(self) -> list[str]:
        return [k[1] for i in self.drafts.named_inodes() if (k := self.inodes.key_of(i)) is not None]

    def _rename_dir(self, old: str, new: str) -> Step[None]:
        """A directory of store/ moves with everything in it (files being written included)."""
        if old == new:
            return no_query(lambda: None)
        if is_under(new, old):
            raise InvalidName(f"cannot move {old!r} into itself")
        if new in self.names or self.inodes.ino_of(("store", new)) is not None:
            raise NotADirectory(new)
        if new in self.store_names.dirs and not self.store_names.is_empty(new, self._pending_paths()):
            raise DirectoryNotEmpty(new)

        def finish(_answer) -> None:
            self.store_names.rename_dir(old, new)
            self.inodes.detach(("storedir", new))
            for key in self.inodes.keys():
                if key[0] in ("store", "storedir") and is_under(key[1], old):
                    self.inodes.rekey(key, (key[0], moved(key[1], old, new)))

        return Step(partial(self.store.rename_dir, old, new), finish)

    def mkdir(self, parent: int, name: str) -> Attr:
        return self._mkdir(parent, name).now()

    async def amkdir(self, parent: int, name: str) -> Attr:
        async with self._names_lock:
            return await self._soon(self._mkdir(parent, name))

    def _mkdir(self, parent: int, name: str) -> Step[Attr]:
        path = join(self._require_store_dir(parent, name), validate_name(name))
        if path in self.store_names.dirs or path in self.names or self.inodes.ino_of(("store", path)) is not None:
            raise AlreadyExists(path)

        def finish(_answer) -> Attr:
            self.store_names.dirs.add(path)
            return self._remember(self._dir_attr(self.inodes.ino_for(("storedir", path)), writable=True))

        return Step(partial(self.store.add_dir, path), finish)

    def rmdir(self, parent: int, name: str) -> None:
        self._rmdir(parent, name).now()

    async def armdir(self, parent: int, name: str) -> None:
        async with self._names_lock:
            await self._soon(self._rmdir(parent, name))

    def _rmdir(self, parent: int, name: str) -> Step[None]:
        path = join(self._require_store_dir(parent, name), validate_name(name))
        if path not in self.store_names.dirs:
            raise NotADirectory(path) if path in self.names else NotFound(path)
        if not self.store_names.is_empty(path, self._pending_paths()):
            raise DirectoryNotEmpty(path)

        def finish(_answer) -> None:
            self.store_names.dirs.discard(path)
            self.inodes.detach(("storedir", path))

        return Step(partial(self.store.remove_dir, path), finish)

    # ---- extended attributes -------------------------------------------------------------------
    def uri_of(self, ino: int) -> str | None:
        return self._uri_of(ino).now()

    def _uri_of(self, ino: int) -> Step[str | None]:
        key = self.inodes.key_of(ino)
        if key is None:
            return no_query(lambda: None)
        kind, name = key
        if kind == "sha1":
            return Step(partial(self.store.info, name),
                        lambda record: format_uri(name, "", record.manifest_sha1) if record else None)
        if kind == "sha1dir":
            return no_query(self.dir_views.uri, name)
        if kind == "storedir":
            files, dirs = self.store_names.below(name)
            return Step(partial(self._store_directory, files, dirs),
                        lambda obj: format_dir_uri(obj.sha1, name.rpartition("/")[2]))
        return no_query(self._name_uri, ino, name)

    def _store_directory(self, files: dict[str, NameRecord], dirs: list[str]) -> StoredObject:
        """The manifest of a store/ directory, stored (so peers can fetch it). Blocking."""
        entries = {p: FileEntry(r.sha1, r.size, r.manifest_sha1) for p, r in files.items()}
        return self.store.put_bytes(build_directory(entries, dirs).to_bytes())

    def _name_uri(self, ino: int, name: str) -> str | None:
        draft = self.drafts.get(ino)
        if draft is not None and draft.uncommitted:
            return None  # not committed yet
        record = self.names.get(name)
        return format_uri(record.sha1, name.rpartition("/")[2], record.manifest_sha1) if record else None

    def getxattr(self, ino: int, name: str) -> bytes:
        return self._getxattr(ino, name).now()

    async def agetxattr(self, ino: int, name: str) -> bytes:
        key = self.inodes.key_of(ino)
        if name == URI_XATTR and key is not None and key[0] == "storedir":
            files, dirs = self.store_names.below(key[1])
            obj = await trio.to_thread.run_sync(self._store_directory, files, dirs, limiter=self._index_limiter)
            if self.fetcher is not None:  # stored just now: peers may ask for it
                await self.fetcher.announce(obj.sha1, obj.size, obj.manifest_sha1)
            return format_dir_uri(obj.sha1, key[1].rpartition("/")[2]).encode()
        return await self._soon(self._getxattr(ino, name))

    def _getxattr(self, ino: int, name: str) -> Step[bytes]:
        if name == STATS_XATTR and ino == ROOT_INO and self.fetcher is not None:
            return no_query(lambda: json.dumps(self.fetcher.stats()).encode())
        if name == URI_XATTR:
            return self._uri_of(ino).then(partial(_uri_xattr, name))
        raise NoSuchAttribute(name)

    def listxattr(self, ino: int) -> list[str]:
        return self._listxattr(ino).now()

    async def alistxattr(self, ino: int) -> list[str]:
        return await self._soon(self._listxattr(ino))

    def _listxattr(self, ino: int) -> Step[list[str]]:
        key = self.inodes.key_of(ino)
        if key is not None and key[0] == "storedir":  # listing must not store a manifest
            return no_query(lambda: [URI_XATTR])
        return self._uri_of(ino).then(lambda uri: [URI_XATTR] if uri is not None else [])

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.store.root)

    async def close_all(self) -> None:
        """On unmount: commit what is pending, free maps and temp files."""
        for fh in list(self.handles):
            await self.release(fh)


def _uri_xattr(name: str, uri: str | None) -> bytes:
    if uri is None:
        raise NoSuchAttribute(name)
    return uri.encode()


def _is_feed_id(name: str) -> bool:
    from ..feeds.entry import is_feed_id

    return is_feed_id(name)
