"""The receiving end of a download: chunks from arrival to disk, off the trio thread, on both cores.

A chunk that arrives is queued here; ``LANES`` tasks each take up to ``BATCH`` queued chunks per
worker-thread hop and, in that thread, verify each against the manifest (SHA-1), compute its xxh3
for the store's rot checks, ``pwrite`` it (and into any ``sinks``, the files of ``load --dest``),
mark it in the bitmap and start its writeback (store/partial.py ``store_chunks``). One more task
feeds the whole-file SHA-1 in order: every run of written chunks that extends the hashed prefix goes
to a thread in one hop, from the buffers the chunks arrived in (chunks far ahead of the prefix are
not kept: they are read back from the page cache when the prefix reaches them). A last task flushes
the partial file every FLUSH_BYTES written (store/flush_behind.py): the fsync before install then
waits for the tail only, not for a whole GiB's flush after the last chunk arrived.

Why this shape (measured, docs/benchmarks.md "Bulk throughput"): hashlib, libsodium and pwrite
release the GIL, so two lanes use both cores; batching makes the ~0.1 ms cost of a hop per several
MiB instead of per chunk; and the whole-file hash as its own in-order stage no longer makes chunk
writers queue behind a lock while one of them hashes. The per-chunk thread hop with the in-order
hash under a lock cost ~1.5 CPU-s more per GiB received than this.

Bytes reach a reader (or a peer, or a sink) only after they have passed the SHA-1 of their chunk.
"""

from __future__ import annotations

import errno
import math
import os
from typing import Callable

import trio

from ..errors import KacheryError, StoreFailed, from_os_error
from ..store.direct import aligned_length, open_direct, pwrite_direct
from ..store.flush_behind import FlushBehind
from ..store.local import start_writeback
from ..store.partial import PartialObject

LANES = 2  # verify + write hops at once (two cores)
BATCH = 4  # chunks per hop: ~4 MiB of hashing and writing per ~0.1 ms of hop overhead
# copy_file_range cannot copy between these two files (another filesystem, or one without it)
_NO_COPY_RANGE = {errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
HASH_AHEAD = 32  # written chunks kept in memory for the whole-file hash, beyond its position


class _Slot:
    __slots__ = ("index", "data", "done", "fresh", "error")

    def __init__(self, index: int, data):
        self.index = index
        self.data = data
        self.done = trio.Event()
        self.fresh = False
        self.error: KacheryError | None = None


def close_all(fds: list[int]) -> None:
    """Close descriptors, ignoring errors (they are ours to close, whatever state they are in)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Sink:
    """A file that receives every verified chunk of the object at its offset (``load --dest``):
    the bytes are written from the buffer they arrived in, while the store's copy is written.

    The store's copy goes through the page cache (lazy readers and the whole-file hash read it
    back); the user's copy need not, so where the filesystem allows it goes with O_DIRECT, from a
    page-aligned bounce buffer, straight to the disk: no second gigabyte of page cache to fill
    (in these VMs every fresh page costs a host fault, docs/benchmarks.md) and nothing left for a
    later ``sync`` to write. The unaligned tail of the last chunk, and filesystems without O_DIRECT,
    go through the page cache.

    It writes through its own descriptors (a ``dup``, and the O_DIRECT one opened through
    /proc/self/fd: the same inode, a description of its own), closed only once no worker thread
    still holds them (``hold``/``release``): a thread writing after the caller closed its
    descriptor could otherwise write into whatever file reused that number."""

    def __init__(self, fd: int, on_error: Callable[[KacheryError], None] | None = None, direct: bool = True):
        self.fd = os.dup(fd)
        self.direct_fd = open_direct(f"/proc/self/fd/{fd}") if direct else -1
        self.direct = self.direct_fd >= 0
        self.error: KacheryError | None = None
        self.on_error = on_error
        # How its descriptors are closed (the fetcher's: in a worker thread, as a close on a FUSE
        # mount waits for that mount's daemon to flush); by default, right away.
        self.closer: Callable[[list[int]], None] = close_all
        self.closed = trio.Event()  # set by the closer once they are closed
        self._holders = 0
        self._closing = False

    def hold(self) -> None:
        self._holders += 1

    def release(self) -> None:
        self._holders -= 1
        if self._closing and self._holders == 0:
            self._close_now()

    def close(self) -> None:
        """No more writes: the descriptors close once the last thread using them is done (the
        default closer closes them at once and sets ``closed``; another one sets it itself)."""
        self._closing = True
        if self._holders == 0:
            self._close_now()

    def _close_now(self) -> None:
        fds = [fd for fd in (self.fd, self.direct_fd) if fd >= 0]
        self.fd = self.direct_fd = -1
        if fds:
            self.closer(fds)
        else:
            self.closed.set()

    def write(self, offset: int, data) -> None:
        if self.error is not None:
            return
        try:
            view = memoryview(data).cast("B")
            aligned = aligned_length(offset, len(view)) if self.direct else 0
            if aligned:
                if self._write_direct(offset, view[:aligned]):
                    view, offset = view[aligned:], offset + aligned
            start = offset
            while len(view):
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written
            start_writeback(self.fd, start, offset - start)
        except OSError as exc:
            self.error = from_os_error(exc, "writing the destination file")
            if self.on_error is not None:
                self.on_error(self.error)

    def _write_direct(self, offset: int, view: memoryview) -> bool:
        if pwrite_direct(self.direct_fd, view, offset):
            return True
        self.direct = False  # refused: the page cache from now on (the fd stays open until close,
        return False  # another lane may be using it)


class ChunkPipeline:
    def __init__(self, partial: PartialObject, lanes: int = LANES, batch: int = BATCH):
        self.partial = partial
        self.lanes = lanes
        self.batch = batch
        self.sinks: list[Sink] = []
        self._send, self._receive = trio.open_memory_channel(math.inf)
        self._limiter = trio.CapacityLimiter(lanes + 1)
        self._for_hash: dict[int, object] = {}  # written chunk -> its bytes, until hashed
        self._writing: set[int] = set()  # chunks in a lane's hop now
        self._hash_wake = trio.Event()
        self.hashed = trio.Event()  # the whole file is hashed
        self._batches: set[trio.Event] = set()  # set when a batch being written is done
        self._flush_behind = FlushBehind(partial.sync_data)

    async def run(self) -> None:
        """The lanes and the hash stage, until cancelled (or the whole file is hashed and the
        download's nursery cancels it)."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.lanes):
                nursery.start_soon(self._lane)
            nursery.start_soon(self._hash_stage)
            # A failed flush needs no handler here: the partial keeps its error and fails the
            # install on it (PartialObject.sync_data; the last fsync might not see it again).
            nursery.start_soon(self._flush_behind.run)

    async def store(self, index: int, data) -> bool:
        """Verify and write one chunk (queued for the lanes); True if it was written now, False if
        it was here already. Raises what writing it raised (CorruptChunk, StorageFull, ...)."""
        return await self.result(self.submit(index, data))

    def submit(self, index: int, data) -> _Slot:
        """Queue a chunk for the lanes (several chunks of one reply go in at once); ``result``
        waits for it."""
        slot = _Slot(index, data)
        self._send.send_nowait(slot)
        return slot

    @staticmethod
    async def result(slot: _Slot) -> bool:
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.fresh

    async def add_sink(self, sink: Sink) -> None:
        """From now on every chunk written goes to ``sink`` too; the chunks already here are copied
        into it from the partial file (in the kernel, ``copy_file_range``)."""
        self.sinks.append(sink)
        for done in list(self._batches):  # batches that started without this sink: let them end,
            await done.wait()  # then every chunk here either was copied below or goes to the sink
        sink.hold()
        try:
            await trio.to_thread.run_sync(self._copy_present, sink, limiter=self._limiter)
        finally:
            sink.release()

    def remove_sink(self, sink: Sink) -> None:
        """Stop writing to ``sink`` and close it (once batches in flight are done with it)."""
        if sink in self.sinks:
            self.sinks.remove(sink)
        sink.close()

    def _copy_present(self, sink: Sink) -> None:
        partial = self.partial
        in_kernel = True  # copy_file_range, until it refuses (dest on another filesystem: EXDEV)
        for index in range(partial.num_chunks):
            if partial.has_chunk(index):
                start, end = partial.manifest.chunk_range(index)
                try:
                    if in_kernel:
                        try:
                            partial.copy_range_to(sink.fd, start, end - start)
                            continue
                        except OSError as exc:
                            if exc.errno not in _NO_COPY_RANGE:
                                raise
                            in_kernel = False
                    sink.write(start, partial.read(start, end - start))  # (its errors: sink.error)
                    if sink.error is not None:
                        return
                except OSError as exc:
                    sink.error = from_os_error(exc, "writing the destination file")
                    return
                except StoreFailed:
                    return

    # ---- the stages -------------------------------------------------------------------------------
    async def _lane(self) -> None:
        async for first in self._receive:
            batch = [first]
            while len(batch) < self.batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            done = trio.Event()
            self._batches.add(done)
            self._writing.update(slot.index for slot in batch)
            sinks = list(self.sinks)
            for sink in sinks:
                sink.hold()
            try:
                results = await trio.to_thread.run_sync(self._write_batch, batch, sinks,
                                                        limiter=self._limiter)
            finally:
                for sink in sinks:
                    sink.release()
                self._batches.discard(done)
                done.set()
                self._writing.difference_update(slot.index for slot in batch)
                self._hash_wake.set()
            hashed = self.partial.hashed_chunks()
            for slot, (fresh, error) in zip(batch, results):
                if fresh:
                    self._flush_behind.wrote(len(slot.data))
                slot.fresh, slot.error = fresh, error
                if fresh and slot.index < hashed + HASH_AHEAD:
                    self._for_hash[slot.index] = slot.data
                slot.data = None
                slot.done.set()

    def _write_batch(self, batch: list[_Slot], sinks: list[Sink]) -> list[tuple[bool, KacheryError | None]]:
        out = []
        partial = self.partial
        for slot in batch:
            try:
                fresh = partial.store_chunk(slot.index, slot.data)
            except KacheryError as exc:
                out.append((False, exc))
                continue
            if fresh:
                start = partial.manifest.chunk_range(slot.index)[0]
                for sink in sinks:
                    sink.write(start, slot.data)
            out.append((fresh, None))
        return out

    async def _hash_stage(self) -> None:
        partial = self.partial
        while True:
            position = partial.hashed_chunks()
            if position >= partial.num_chunks:
                self._for_hash.clear()
                self.hashed.set()
                return
            blocks = {}
            k = position
            if position in self._for_hash:  # a run of chunks still in memory
                while k in self._for_hash:
                    blocks[k] = self._for_hash.pop(k)
                    k += 1
            else:  # chunks not kept (written far ahead, or before a restart): read them back
                while k < partial.num_chunks and k - position < HASH_AHEAD and k not in self._writing \
                        and k not in self._for_hash and partial.has_chunk(k):
                    k += 1
            if k == position:  # the next chunk is missing, or a lane is writing it: wait
                self._hash_wake = trio.Event()
                await self._hash_wake.wait()
                continue
            reached = await trio.to_thread.run_sync(partial.advance_hash, blocks, k, limiter=self._limiter)
            for stale in [i for i in self._for_hash if i < reached]:
                del self._for_hash[stale]
            if reached == position:  # closed under us
                return
