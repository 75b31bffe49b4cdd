"""``store/`` entries being written: one *draft* per inode, shared by every handle open on it.

A draft is a temp file hashed as bytes stream in (store.ObjectWriter), started lazily from the
content the name held (``base``). Writes are answered once queued; the draft's WritePipeline
(write_pipeline.py) writes and hashes them in worker threads, and everything that reads the temp
file drains it first. ``flush`` (each ``close()``) commits a changed draft, so commit
errors reach the writer's ``close()``; the last ``release`` commits writes that arrived after the
last flush (mmap stores written back late) and can only log a failure. A write error is kept and
reported again on every later flush: the draft is discarded, no partial object remains.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from ..errors import KacheryError, NotOpenForWriting, StoreFailed
from ..store import LocalStore, ObjectWriter, StoredObject
from .handles import Handle
from .write_pipeline import WritePipeline

log = logging.getLogger(__name__)

Committed = Callable[[int, StoredObject, "Draft"], Awaitable[None]]  # re-points the inode's name


@dataclass
class Draft:
    """Uncommitted content of a store/ entry; ``base`` is what it started from, copied lazily."""

    base: StoredObject | None
    writer: ObjectWriter | None = None
    pipeline: WritePipeline | None = None  # with the writer: its queued writes
    dirty: bool = False
    error: KacheryError | None = None
    handles: int = 0
    orphaned: bool = False  # the name was unlinked while open: commit the object, name nothing
    mtime_ns: int = field(default_factory=time.time_ns)
    lock: trio.Lock = field(default_factory=trio.Lock)
    committing: ObjectWriter | None = None  # being committed: its size is the file's size meanwhile

    @property
    def size(self) -> int:
        for writer in (self.writer, self.committing):
            if writer is not None:
                return writer.size
        return self.base.size if self.base else 0

    @property
    def uncommitted(self) -> bool:
        return self.dirty or self.writer is not None

    def truncate_now(self, size: int) -> None:
        if self.writer is None and size == 0:
            self.base = None
        elif self.writer is not None:
            self.writer.truncate(size)
        else:
            raise KacheryError("truncate needs the draft's writer")  # callers ensure it
        self.dirty = True
        self.mtime_ns = time.time_ns()


class Drafts:
    """The drafts of one tree, by inode. ``committed`` re-points the name and announces."""

    def __init__(self, store: LocalStore, committed: Committed):
        self.store = store
        self._committed = committed
        self._by_ino: dict[int, Draft] = {}
        self._limiter = trio.CapacityLimiter(2)
        self.nursery: trio.Nursery | None = None  # runs the write pipelines' lanes (None: inline)

    def get(self, ino: int) -> Draft | None:
        return self._by_ino.get(ino)

    def named_inodes(self) -> list[int]:
        """Inodes of drafts whose name still exists (listed in store/ before their first commit)."""
        return [ino for ino, d in self._by_ino.items() if not d.orphaned]

    # ---- opening -------------------------------------------------------------------------------
    def open(self, ino: int, base: StoredObject | None, flags: int) -> "DraftHandle":
        """A handle on the inode's draft, started from ``base`` if there is none yet."""
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        draft = self._by_ino.get(ino)
        if draft is None:
            draft = self._by_ino[ino] = Draft(base=None if flags & os.O_TRUNC else base)
            draft.dirty = bool(flags & os.O_TRUNC) and base is not None and base.size > 0
        elif writable and flags & os.O_TRUNC:
            self._empty(draft)
        return self._handle(ino, draft, writable, flags)

    def create(self, ino: int, flags: int = os.O_WRONLY) -> "DraftHandle":
        draft = self._by_ino.get(ino)
        if draft is None:
            draft = self._by_ino[ino] = Draft(base=None, dirty=True)
        else:
            self._empty(draft)
        return self._handle(ino, draft, True, flags)

    def _empty(self, draft: Draft) -> None:
        """O_TRUNC on a draft already open: start again from nothing. The old temp file goes once
        the writes queued for it have stopped (writes racing the open went with the old content)."""
        writer, pipeline = draft.writer, draft.pipeline
        draft.writer = draft.pipeline = None
        draft.truncate_now(0)
        if writer is not None:
            if self.nursery is not None:
                self.nursery.start_soon(_discard, writer, pipeline)
            else:
                writer.abort()

    def _handle(self, ino: int, draft: Draft, writable: bool, flags: int) -> "DraftHandle":
        draft.handles += 1
        return DraftHandle(self, ino, draft, writable, (flags & os.O_ACCMODE) == os.O_WRONLY)

    # ---- changing ------------------------------------------------------------------------------
    async def ensure_writer(self, draft: Draft) -> ObjectWriter:
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
            draft.pipeline = WritePipeline(writer, self.nursery)
        return draft.writer

    async def settle(self, draft: Draft) -> None:
        """Wait until the draft's queued writes are in its temp file (raises their error)."""
        pipeline = draft.pipeline
        if pipeline is not None and not pipeline.idle:
            try:
                await pipeline.drain()
            except KacheryError as exc:
                if draft.pipeline is pipeline:
                    draft.error = exc
                raise

    async def write(self, draft: Draft, offset: int, data) -> int:
        async with draft.lock:
            if draft.error is not None:
                raise draft.error
            await self.ensure_writer(draft)
            pipeline = draft.pipeline
            try:
                await pipeline.submit(offset, data)
            except KacheryError as exc:
                if draft.pipeline is pipeline:
                    draft.error = exc  # reported again on flush so close() fails too
                    raise
                return len(data)  # emptied by an O_TRUNC open meanwhile: went with the old content
            draft.dirty = True
            draft.mtime_ns = time.time_ns()
            return len(data)

    async def truncate(self, ino: int, size: int) -> bool:
        """Truncate the inode's draft; False if it has none (nothing open on it)."""
        draft = self._by_ino.get(ino)
        if draft is None:
            return False
        async with draft.lock:
            if size == 0 and draft.writer is None:
                draft.truncate_now(0)
            else:
                await self.ensure_writer(draft)
                await self.settle(draft)
                draft.truncate_now(size)
        return True

    async def commit(self, ino: int, draft: Draft) -> StoredObject | None:
        async with draft.lock:
            if draft.error is not None:
                await _drop_temp(draft)
                raise draft.error
            if not draft.dirty:
                return None
            writer = await self.ensure_writer(draft)
            try:
                await self.settle(draft)
            except KacheryError:
                await _drop_temp(draft)
                raise
            pipeline = draft.pipeline
            draft.writer = draft.pipeline = None  # reads meanwhile come from the base: commit closes the temp file
            draft.committing = writer
            draft.dirty = False
            try:
                await pipeline.aclose()
                obj = await trio.to_thread.run_sync(writer.commit, limiter=self._limiter)
            except KacheryError as exc:
                draft.error = exc
                raise
            except OSError as exc:
                draft.error = StoreFailed(str(exc))
                raise draft.error from None
            finally:
                draft.committing = None
            draft.base = obj
            await self._committed(ino, obj, draft)
            return obj

    async def release(self, ino: int, draft: Draft) -> None:
        draft.handles -= 1
        if draft.handles > 0:
            return
        try:
            if draft.writer is not None and draft.error is None:
                await self.settle(draft)
                draft.writer.mark_modified()  # mmap stores can land after the last flush
                await self.commit(ino, draft)
        except KacheryError as exc:
            # release errors cannot reach the writer (close() has returned): log them.
            log.error("could not commit inode %d after last close: %s", ino, exc)
        finally:
            if self._by_ino.get(ino) is draft:
                del self._by_ino[ino]  # before any wait: a listing meanwhile must not show it
            await _drop_temp(draft)

    def read_now(self, draft: Draft, offset: int, size: int) -> bytes:
        if draft.writer is not None:
            return draft.writer.pread(offset, size)
        if draft.base is None or draft.base.size == 0:
            return b""
        return self.store.read_range(draft.base.sha1, offset, size)


class DraftHandle(Handle):
    def __init__(self, drafts: Drafts, ino: int, draft: Draft, writable: bool, write_only: bool = False):
        self.drafts = drafts
        self.ino = ino
        self.draft = draft
        self.writable = writable
        # A write-only handle cannot be mapped or read, so its writes skip the kernel's page cache:
        # one copy of every byte less, and no second GiB of fresh page cache per GiB stored.
        self.direct_io = write_only

    def read_now(self, offset: int, size: int):
        return self.drafts.read_now(self.draft, offset, size)

    async def read(self, offset: int, size: int):
        await self.drafts.settle(self.draft)
        return self.read_now(offset, size)

    async def write(self, offset: int, data) -> int:
        if not self.writable:
            raise NotOpenForWriting()  # the kernel checks this first
        return await self.drafts.write(self.draft, offset, data)

    async def flush(self) -> None:
        if self.writable:
            await self.drafts.commit(self.ino, self.draft)

    async def release(self) -> None:
        await self.drafts.release(self.ino, self.draft)


async def _drop_temp(draft: Draft) -> None:
    """Detach the draft's temp file and drop it once no lane writes to it. Also used as soon as a
    draft's writes failed (it can never commit): the temp file goes before close() returns, not at
    the kernel's later RELEASE (on a full disk the space is wanted back)."""
    writer, pipeline = draft.writer, draft.pipeline
    draft.writer = draft.pipeline = None
    if writer is not None:
        await _discard(writer, pipeline)


async def _discard(writer: ObjectWriter, pipeline: WritePipeline | None) -> None:
    """Drop a temp file once no lane writes to it any more."""
    try:
        if pipeline is not None:
            with trio.CancelScope(shield=True):
                await pipeline.aclose(discard=True)
    finally:
        writer.abort()


def _copy_into(source: os.PathLike, writer: ObjectWriter) -> None:
    with open(source, "rb") as f:
        while block := f.read(1 << 20):
            writer.write(block)
