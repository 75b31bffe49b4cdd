"""Make a file durable in steps while it is still being written, so its final fsync waits only for
the tail.

Why: a download's fsync before install waited for the whole file's flush after its last chunk
arrived: 0.85-1.5 s per GiB here. On these machines the guest's writes land in the host's cache
fast, and the host writes them to its disk only when the guest flushes (virtio FLUSH);
``sync_file_range`` starts the guest's writeback but flushes nothing. Flushing every ``every`` bytes
lets the disk work while the network still delivers (docs/benchmarks.md, "Flush behind": `load
--link` 1 GiB 217 -> 267 MB/s, medians of 7 interleaved rounds).

Not used for ``store/`` writes: there it measured no gain (the write lanes' O_DIRECT writes wait
behind each flush at the device, which cost what the shorter commit saved).

One fdatasync at a time, in a worker thread: the writers never wait for it.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..errors import KacheryError

FLUSH_BYTES = 128 << 20  # written since the last flush; a flush of this much takes ~0.1-0.2 s here


class FlushBehind:
    """``wrote(n)`` after each write; ``run()`` (a task in the writer's nursery) flushes with
    ``sync`` whenever ``every`` bytes were written since the last flush, until ``stop()``."""

    def __init__(self, sync: Callable[[], None], every: int | None = None):
        self._sync = sync
        self.every = FLUSH_BYTES if every is None else every
        self._pending = 0  # bytes written since the last flush began
        self._wanted = trio.Event()
        self._stopped = False
        self.flushes = 0

    def wrote(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= self.every:
            self._wanted.set()

    def stop(self) -> None:
        """No more flushes (the file is about to be committed or dropped); ``run`` returns once a
        flush under way is done."""
        self._stopped = True
        self._wanted.set()

    async def run(self, on_error: Callable[[OSError | KacheryError], None] | None = None) -> None:
        """Flush until ``stop()``, or until a flush fails: ``on_error`` is told (if given; a
        ``sync`` that keeps its own errors for the commit needs none) and no more flushes run."""
        while True:
            await self._wanted.wait()
            if self._stopped:
                return
            self._wanted = trio.Event()
            self._pending = 0
            try:
                await trio.to_thread.run_sync(self._sync)
            except (OSError, KacheryError) as exc:  # EIO, ENOSPC, closed under us: the writer reports it
                if on_error is not None:
                    on_error(exc)
                return
            self.flushes += 1
