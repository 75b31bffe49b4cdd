"""Flush behind (store/flush_behind.py): a file written in a stream is made durable in steps, one
fdatasync at a time off the trio thread, so the final fsync waits only for the tail. Then the same
in the writer that uses it: a download's receiving pipeline."""

import contextlib
import hashlib
import os
import threading

import pytest
import trio

from kacheryfs.errors import KacheryError, StoreFailed
from kacheryfs.net.pipeline import ChunkPipeline
from kacheryfs.store import CHUNK_SIZE, Manifest, hash_bytes
from kacheryfs.store import flush_behind as flush_behind_module
from kacheryfs.store.flush_behind import FlushBehind
from kacheryfs.store.partial import PartialObject

from .conftest import random_bytes

MiB = 1 << 20


class SlowSync:
    """A sync that blocks (in its worker thread) until released, and counts its calls."""

    def __init__(self):
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self.release = threading.Event()
        self.release.set()
        self.fail_with: Exception | None = None

    def __call__(self) -> None:
        self.calls += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            assert self.release.wait(10)
            if self.fail_with is not None:
                raise self.fail_with
        finally:
            self.running -= 1


@contextlib.asynccontextmanager
async def running(sync: SlowSync, every: int):
    """A FlushBehind over ``sync`` running in a nursery (a failure report fails the test), stopped
    when the block ends; at most 10 s in all."""
    flusher = FlushBehind(sync, every=every)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flusher.run, pytest.fail)
            yield flusher
            flusher.stop()


async def until(condition, timeout: float = 5.0) -> None:
    """Wait (bounded) until ``condition()``: the flushes run in real worker threads."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)


async def test_one_flush_per_step_and_none_before():
    sync = SlowSync()
    async with running(sync, every=10) as flusher:
        flusher.wrote(9)
        await trio.sleep(0.1)
        assert sync.calls == 0  # under one step: nothing to flush yet
        flusher.wrote(1)
        await until(lambda: flusher.flushes == 1)
        flusher.wrote(25)  # two and a half steps in one write: one flush covers them all
        await until(lambda: flusher.flushes == 2)
        await trio.sleep(0.1)
        assert sync.calls == 2
    assert sync.most_at_once == 1


async def test_writes_during_a_flush_give_one_more_flush_not_a_queue():
    sync = SlowSync()
    sync.release.clear()
    async with running(sync, every=10) as flusher:
        flusher.wrote(10)
        await until(lambda: sync.running == 1)
        for _ in range(5):  # 50 bytes while the first flush is under way
            flusher.wrote(10)
        sync.release.set()
        await until(lambda: flusher.flushes == 2)
        await trio.sleep(0.1)
        assert sync.calls == 2  # one flush for everything written during the first
    assert sync.most_at_once == 1


async def test_stop_ends_it_after_the_flush_under_way():
    sync = SlowSync()
    sync.release.clear()
    async with running(sync, every=1) as flusher:
        flusher.wrote(1)
        while sync.running == 0:
            await trio.sleep(0.01)
        flusher.stop()
        flusher.wrote(100)  # after stop: no more flushes
        await trio.sleep(0.05)
        sync.release.set()  # run() returns once the flush under way is done
    assert sync.calls == 1


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), StoreFailed("closed")])
async def test_a_failed_flush_is_reported_once_and_it_stops(error):
    sync = SlowSync()
    sync.fail_with = error
    seen = []
    flusher = FlushBehind(sync, every=1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flusher.run, seen.append)
            flusher.wrote(1)
    assert seen == [error] and sync.calls == 1


# ---- in the download pipeline ----------------------------------------------------------------

async def download_through_pipeline(store, data: bytes) -> PartialObject:
    """Every chunk of ``data`` through a ChunkPipeline into a partial file, in order; the partial
    (complete, hashed, not installed yet) is returned."""
    manifest = Manifest.from_digest(hash_bytes(data))
    partial = PartialObject.open(store, manifest)
    pipeline = ChunkPipeline(partial)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.run)
            for i in range(partial.num_chunks):
                start, end = manifest.chunk_range(i)
                assert await pipeline.store(i, data[start:end])
            await pipeline.hashed.wait()
            nursery.cancel_scope.cancel()
    return partial


async def test_a_download_is_flushed_while_its_chunks_arrive(store, monkeypatch):
    monkeypatch.setattr(flush_behind_module, "FLUSH_BYTES", 2 * CHUNK_SIZE)
    flushes = []  # bytes present at each flush
    real = PartialObject.sync_data
    monkeypatch.setattr(PartialObject, "sync_data", lambda self: (flushes.append(self.present_bytes()), real(self)))
    data = random_bytes(12 * CHUNK_SIZE + 17, seed=8)
    partial = await download_through_pipeline(store, data)
    obj = await trio.to_thread.run_sync(partial.finish)
    assert store.read_bytes(obj.sha1) == data
    assert len(flushes) >= 2 and min(flushes) < len(data)  # in steps, while the chunks came


async def test_a_failed_flush_behind_fails_the_install_though_the_last_fsync_passes(store, monkeypatch):
    """The kernel reports a writeback error once per descriptor: if a flush behind saw it, the
    fsync before install may pass, and the download must fail anyway (nothing installed)."""
    monkeypatch.setattr(flush_behind_module, "FLUSH_BYTES", 2 * CHUNK_SIZE)
    real_fdatasync = os.fdatasync

    def failing_fdatasync(fd):
        real_fdatasync(fd)
        raise OSError(5, "Input/output error")  # as a lost writeback reports it, once

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    data = random_bytes(6 * CHUNK_SIZE + 1, seed=9)
    partial = await download_through_pipeline(store, data)
    with pytest.raises(KacheryError):
        await trio.to_thread.run_sync(partial.finish)
    assert not store.has(hashlib.sha1(data).hexdigest())
