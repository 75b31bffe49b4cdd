"""``store/`` writes answered once their bytes are queued, then written and hashed in four lanes.

In the kernel's write-through mode a writer's ``write()`` waits for our reply, so a handler that
writes and hashes before replying makes ``cp`` wait for every byte's pwrite and both SHA-1 passes in
series. Here ``submit`` only books the block (``ObjectWriter.claim``, in order) and queues it; four
lane tasks, each hopping to a worker thread, take it:

- two *write lanes*: the file is cut into STRIPE_BYTES stripes and lane k writes the stripes
  i with i % WRITE_LANES == k (a block crossing a boundary is split), so each byte offset is always
  written by the same lane, in the order the writes came, while two disk writes are in flight.
  ``ObjectWriter.write_pieces`` gathers them into one O_DIRECT write where it can;
- the chunk SHA-1s and xxh3 sums; the whole-file SHA-1 (hashlib, xxhash and pwrite release the GIL,
  so the lanes and ``cp`` share the two cores).

A lane hops to a thread once MIN_BATCH_BYTES is queued for it, or as soon as anyone waits for the
queue (``_flush``: a drain, a full queue, close): a hop costs the trio thread ~0.1 ms.

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
MIN_BATCH_BYTES = 4 << 20  # a lane waits for this much (or a drain) before a hop: ~4x fewer hops
THREAD_MIN = 64 << 10  # inline mode: smaller blocks are cheaper here than a thread hop (~110 us)
WRITE_LANES = 2  # two O_DIRECT writes in flight: ~1.5x the disk rate of one (docs/benchmarks.md)
STRIPE_BYTES = 4 << 20  # write lane k writes the stripes [i * STRIPE, (i + 1) * STRIPE) with i % 2 == k


@dataclass
class _Block:
    offset: int
    data: bytes | None
    hashed: bool  # extends the running hash: both hash lanes take it
    lanes_left: int  # pieces not yet through their lane


@dataclass
class _Piece:
    """What one lane takes of a block: all of it (hash lanes) or its part in one stripe (write lanes)."""

    block: _Block
    offset: int
    data: memoryview | bytes | None


def stripe_pieces(offset: int, length: int, stripe: int = STRIPE_BYTES, lanes: int = WRITE_LANES):
    """(lane, start, end) of each part of [offset, offset + length) in one stripe: every byte
    offset always belongs to the same write lane, so writes to one byte stay in order."""
    end = offset + length
    while offset < end:
        stop = min(end, (offset // stripe + 1) * stripe)
        yield (offset // stripe) % lanes, offset, stop
        offset = stop


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
        self._flushing = False  # someone waits for the queue: lanes stop waiting for full batches
        self._waiting: set[trio.CancelScope] = set()  # lanes waiting for a full batch
        self._lanes = (self._write,) * WRITE_LANES + (self._hash_chunks, self._hash_whole)
        if nursery is not None:
            writer.use_direct()
            for lane in self._lanes:
                send, receive = trio.open_memory_channel(math.inf)  # bounded by ``limit`` bytes
                self._sends.append(send)
                self._running += 1
                nursery.start_soon(self._run_lane, lane, receive)
        else:
            self._stopped.set()

    # ---- the lanes (worker threads) ------------------------------------------------------------
    def _write(self, batch: list[_Piece]) -> None:
        self.writer.write_pieces([(piece.offset, piece.data) for piece in batch])

    def _hash_chunks(self, batch: list[_Piece]) -> None:
        for piece in batch:
            if piece.block.hashed:
                self.writer.hash_chunks(piece.data)

    def _hash_whole(self, batch: list[_Piece]) -> None:
        for piece in batch:
            if piece.block.hashed:
                self.writer.hash_whole(piece.data)

    async def _run_lane(self, lane, receive: trio.MemoryReceiveChannel) -> None:
        try:
            async with receive:
                async for first in receive:
                    batch, size = [first], len(first.data)
                    while size < BATCH_BYTES:
                        try:
                            piece = receive.receive_nowait()
                        except trio.EndOfChannel:
                            break
                        except trio.WouldBlock:
                            if size >= MIN_BATCH_BYTES or self._flushing:
                                break
                            piece = await self._receive_unless_flushed(receive)
                            if piece is None:
                                break
                        batch.append(piece)
                        size += len(piece.data)
                    if self.error is None and not self._discard:
                        try:
                            await trio.to_thread.run_sync(lane, batch)
                        except KacheryError as exc:
                            self._fail(exc)
                        except OSError as exc:
                            self._fail(from_os_error(exc, "writing"))
                    for piece in batch:
                        self._done(piece)
        finally:
            self._running -= 1
            if self._running == 0:
                self._stopped.set()
            if self._queued and self.error is None and not self._discard:
                self._fail(StoreFailed("the write pipeline stopped (the mount is shutting down)"))

    async def _receive_unless_flushed(self, receive: trio.MemoryReceiveChannel) -> "_Piece | None":
        """The next piece, or None once someone waits for the queue (``_flush``) or it is closed."""
        with trio.CancelScope() as scope:
            self._waiting.add(scope)
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                return None
            finally:
                self._waiting.discard(scope)
        return None  # cancelled by _flush: nothing was taken from the channel

    # ---- bookkeeping (trio thread) -------------------------------------------------------------
    def _flush(self) -> None:
        """Lanes stop waiting for full batches until the queue is empty again."""
        self._flushing = True
        for scope in self._waiting:
            scope.cancel()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _fail(self, exc: KacheryError) -> None:
        if self.error is None:
            self.error = exc
        self._notify()

    def _done(self, piece: _Piece) -> None:
        piece.data = None
        block = piece.block
        block.lanes_left -= 1
        if block.lanes_left == 0:
            self._queued -= len(block.data)
            block.data = None
            if self._queued == 0:
                self._flushing = False
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
            self._flush()
            await self._progress.wait()
            self._raise_error()
        block = _Block(offset, data, self.writer.claim(offset, len(data)), 0)
        self._queued += len(data)
        view = memoryview(data).cast("B")
        for lane, start, end in stripe_pieces(offset, len(view)):
            block.lanes_left += 1
            self._sends[lane].send_nowait(_Piece(block, start, view[start - offset:end - offset]))
        for send in self._sends[WRITE_LANES:]:
            block.lanes_left += 1
            send.send_nowait(_Piece(block, offset, view))

    async def _inline(self, offset: int, data) -> None:
        block = _Block(offset, data, self.writer.claim(offset, len(data)), 0)
        try:
            if len(data) >= THREAD_MIN:
                await trio.to_thread.run_sync(self._run_lanes, block)
            else:
                self._run_lanes(block)
        except KacheryError as exc:
            self._fail(exc)
            raise

    def _run_lanes(self, block: _Block) -> None:
        piece = [_Piece(block, block.offset, block.data)]
        for lane in (self._write, self._hash_chunks, self._hash_whole):
            lane(piece)

    async def drain(self) -> None:
        """Wait until every queued byte is written and hashed; raises a lane's error."""
        while self._queued and self.error is None:
            self._flush()
            await self._progress.wait()
        self._raise_error()

    async def aclose(self, discard: bool = False) -> None:
        """Stop the lanes (after what is queued, or dropping it with ``discard``); returns when no
        lane touches the writer any more, so it may be closed or aborted."""
        self._discard = self._discard or discard
        self._closed = True
        self._flush()
        for send in self._sends:
            send.close()
        self._sends = []
        await self._stopped.wait()
