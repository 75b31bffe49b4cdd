"""``store/`` writes answered once their bytes are queued, written and hashed in two lanes.

In the kernel's write-through mode a writer's ``write()`` waits for our reply, so a handler that
writes and hashes before replying makes ``cp`` wait for every byte's pwrite and both SHA-1 passes in
series. Here ``submit`` only books the block (``ObjectWriter.claim``, in order) and queues it; two
lane tasks, each in a worker thread, take it: one ``write_block``s it into the temp file, feeds it
to the chunk SHA-1s and xxh3 sums and starts its writeback (``start_writeback``); the other feeds
the whole-file SHA-1. So ``cp``'s next write, the pwrite and both hashes run at once on the two
cores (hashlib, xxhash and pwrite release the GIL).

What is queued is bounded (``limit`` bytes; ``submit`` waits for room). Every reader of the temp
file (``drain``) waits for the lanes first: a read, truncate, mmap write-back or commit sees every
byte written before it. An error in a lane is kept and raised by the next ``submit`` and by
``drain``, i.e. by the writer's next ``write()`` or its ``close()`` (the draft is then discarded:
nothing partial is committed). A crash loses only the temp file, as before (reconcile removes it).

Without a nursery (handlers called directly, in tests) the lanes run inline in ``submit``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

from ..errors import KacheryError, StoreFailed, from_os_error
from ..store import ObjectWriter

PIPELINE_BYTES = 32 << 20  # queued but not yet written and hashed, per open draft
BATCH_BYTES = 8 << 20  # a lane behind by several blocks takes them in one thread hop
THREAD_MIN = 64 << 10  # inline mode: smaller blocks are cheaper here than a thread hop (~110 us)


@dataclass
class _Block:
    offset: int
    data: bytes | None
    hashed: bool  # extends the running hash: both hash lanes take it
    lanes_left: int


class WritePipeline:
    def __init__(self, writer: ObjectWriter, nursery: trio.Nursery | None, limit: int = PIPELINE_BYTES):
        self.writer = writer
        self.limit = limit
        self.error: KacheryError | None = None
        self._queued = 0  # bytes submitted and not yet through every lane
        self._progress = trio.Event()
        self._discard = False  # aborting: lanes drop what is queued
        self._sends: list[trio.MemorySendChannel] = []
        self._running = 0
        self._stopped = trio.Event()
        self._closed = False
        self._lanes = (self._write_and_hash_chunks, self._hash_whole)
        if nursery is not None:
            for lane in self._lanes:
                send, receive = trio.open_memory_channel(math.inf)  # bounded by ``limit`` bytes
                self._sends.append(send)
                self._running += 1
                nursery.start_soon(self._run_lane, lane, receive)
        else:
            self._stopped.set()

    # ---- the lanes (worker threads) ------------------------------------------------------------
    def _write_and_hash_chunks(self, block: _Block) -> None:
        self.writer.write_block(block.offset, block.data)
        if block.hashed:
            self.writer.hash_chunks(block.data)
        self.writer.start_writeback(block.offset, len(block.data))  # the disk works while more arrive

    def _hash_whole(self, block: _Block) -> None:
        if block.hashed:
            self.writer.hash_whole(block.data)

    def _run_batch(self, lane, batch: list[_Block]) -> None:
        for block in batch:
            lane(block)

    async def _run_lane(self, lane, receive: trio.MemoryReceiveChannel) -> None:
        try:
            async with receive:
                async for first in receive:
                    batch, size = [first], len(first.data)
                    while size < BATCH_BYTES:
                        try:
                            block = receive.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        batch.append(block)
                        size += len(block.data)
                    if self.error is None and not self._discard:
                        try:
                            await trio.to_thread.run_sync(self._run_batch, lane, batch)
                        except KacheryError as exc:
                            self._fail(exc)
                        except OSError as exc:
                            self._fail(from_os_error(exc, "writing"))
                    for block in batch:
                        self._done(block)
        finally:
            self._running -= 1
            if self._running == 0:
                self._stopped.set()
            if self._queued and self.error is None and not self._discard:
                self._fail(StoreFailed("the write pipeline stopped (the mount is shutting down)"))

    # ---- bookkeeping (trio thread) -------------------------------------------------------------
    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _fail(self, exc: KacheryError) -> None:
        if self.error is None:
            self.error = exc
        self._notify()

    def _done(self, block: _Block) -> None:
        block.lanes_left -= 1
        if block.lanes_left == 0:
            self._queued -= len(block.data)
            block.data = None
            self._notify()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    @property
    def idle(self) -> bool:
        return self._queued == 0

    # ---- the API -------------------------------------------------------------------------------
    async def submit(self, offset: int, data) -> None:
        """Queue ``data`` for ``offset``; returns once it is queued (raises an earlier lane error)."""
        self._raise_error()
        if self._closed:
            raise StoreFailed("write after the draft's writer was closed")
        if not self._sends:
            await self._inline(offset, data)
            return
        while self._queued and self._queued + len(data) > self.limit:
            await self._progress.wait()
            self._raise_error()
        block = _Block(offset, data, self.writer.claim(offset, len(data)), len(self._lanes))
        self._queued += len(data)
        for send in self._sends:
            send.send_nowait(block)

    async def _inline(self, offset: int, data) -> None:
        block = _Block(offset, data, self.writer.claim(offset, len(data)), len(self._lanes))
        try:
            if len(data) >= THREAD_MIN:
                await trio.to_thread.run_sync(self._run_lanes, block)
            else:
                self._run_lanes(block)
        except KacheryError as exc:
            self._fail(exc)
            raise

    def _run_lanes(self, block: _Block) -> None:
        for lane in self._lanes:
            lane(block)

    async def drain(self) -> None:
        """Wait until every queued byte is written and hashed; raises a lane's error."""
        while self._queued and self.error is None:
            await self._progress.wait()
        self._raise_error()

    async def aclose(self, discard: bool = False) -> None:
        """Stop the lanes (after what is queued, or dropping it with ``discard``); returns when no
        lane touches the writer any more, so it may be closed or aborted."""
        self._discard = self._discard or discard
        self._closed = True
        for send in self._sends:
            send.close()
        self._sends = []
        await self._stopped.wait()
