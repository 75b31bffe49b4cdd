"""The receiving pipeline of a download (net/pipeline.py) on a real partial file: chunks verified and
written by parallel lanes in any order, the whole-file SHA-1 in order beside them, corrupt chunks
refused in the middle of a batch, and sinks (``load --dest``) that miss nothing and get nothing
unverified."""

import hashlib
import os
import random
import threading

import pytest
import trio

from kacheryfs.errors import CorruptChunk
from kacheryfs.net.pipeline import HASH_AHEAD, ChunkPipeline, Sink
from kacheryfs.store import CHUNK_SIZE, Manifest, hash_bytes
from kacheryfs.store import partial as partial_mod
from kacheryfs.store.partial import PartialObject

from .conftest import random_bytes


def chunk(data: bytes, m: Manifest, i: int) -> bytes:
    a, b = m.chunk_range(i)
    return data[a:b]


def open_partial(store, data):
    manifest = Manifest.from_digest(hash_bytes(data))
    return PartialObject.open(store, manifest), manifest


async def run_pipeline(pipeline: ChunkPipeline, work) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipeline.run)
        await work()
        with trio.fail_after(30):
            await pipeline.hashed.wait()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("order", ["in order", "shuffled", "reversed"])
async def test_chunks_in_any_order_from_many_tasks(store, order, monkeypatch):
    data = random_bytes(12 * CHUNK_SIZE + 777, seed=31)
    partial, manifest = open_partial(store, data)
    reads = []
    real = partial_mod._pread_exact
    monkeypatch.setattr(partial_mod, "_pread_exact", lambda fd, n, off: reads.append(off) or real(fd, n, off))
    indices = list(range(partial.num_chunks))
    if order == "shuffled":
        random.Random(5).shuffle(indices)
    elif order == "reversed":
        indices.reverse()
    pipeline = ChunkPipeline(partial)
    fresh = []

    async def work():
        async with trio.open_nursery() as nursery:  # every chunk from its own task, as replies arrive
            for i in indices:
                nursery.start_soon(lambda i=i: _store(pipeline, i, chunk(data, manifest, i), fresh))

    await run_pipeline(pipeline, work)
    assert sorted(fresh) == list(range(partial.num_chunks))
    assert partial.is_complete() and partial.hashed_chunks() == partial.num_chunks
    obj = await trio.to_thread.run_sync(partial.finish)
    assert store.read_bytes(obj.sha1) == data and obj.sha1 == hashlib.sha1(data).hexdigest()
    if order == "in order":
        assert reads == []  # the hash took every chunk from the buffer it arrived in


async def _store(pipeline, i, payload, fresh):
    if await pipeline.store(i, payload):
        fresh.append(i)


async def test_a_corrupt_chunk_in_the_middle_of_a_batch_is_refused_alone(store):
    data = random_bytes(6 * CHUNK_SIZE, seed=32)
    partial, manifest = open_partial(store, data)
    pipeline = ChunkPipeline(partial, lanes=1, batch=6)  # one lane: the six go in one batch
    bad = bytearray(chunk(data, manifest, 2))
    bad[len(bad) // 2] ^= 0x01
    outcome = {}

    async def work():
        slots = [pipeline.submit(i, bytes(bad) if i == 2 else chunk(data, manifest, i)) for i in range(6)]
        for i, slot in enumerate(slots):
            try:
                outcome[i] = await pipeline.result(slot)
            except CorruptChunk:
                outcome[i] = "corrupt"
        with trio.fail_after(10):
            while partial.hashed_chunks() < 2:
                await trio.sleep(0.01)
        await trio.sleep(0.05)
        assert not partial.has_chunk(2) and partial.hashed_chunks() == 2  # the hash waits at the hole
        assert outcome == {0: True, 1: True, 2: "corrupt", 3: True, 4: True, 5: True}
        # nothing of the bad copy reached the file: the good one is written once it comes
        assert await pipeline.store(2, chunk(data, manifest, 2)) is True
        assert await pipeline.store(3, chunk(data, manifest, 3)) is False  # a late duplicate changes nothing

    await run_pipeline(pipeline, work)
    obj = await trio.to_thread.run_sync(partial.finish)
    assert store.read_bytes(obj.sha1) == data


async def test_a_sink_added_half_way_gets_every_byte_once_verified(store, tmp_path):
    data = random_bytes(10 * CHUNK_SIZE + 99, seed=33)
    partial, manifest = open_partial(store, data)
    pipeline = ChunkPipeline(partial)
    dest = tmp_path / "dest.bin"
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    bad = bytearray(chunk(data, manifest, 7))
    bad[0] ^= 0xFF
    try:
        async def work():
            for i in (0, 1, 5):  # here before the sink: copied into it from the partial file
                await pipeline.store(i, chunk(data, manifest, i))
            late = [pipeline.submit(i, chunk(data, manifest, i)) for i in (2, 3)]  # in flight meanwhile
            sink = Sink(fd)
            await pipeline.add_sink(sink)
            for slot in late:
                await pipeline.result(slot)
            with pytest.raises(CorruptChunk):  # refused: never written to the sink either
                await pipeline.store(7, bytes(bad))
            assert os.pread(fd, 16, 7 * CHUNK_SIZE) in (b"", bytes(16))
            async with trio.open_nursery() as nursery:
                for i in (4, 6, 7, 8, 9, 10):
                    nursery.start_soon(pipeline.store, i, chunk(data, manifest, i))
            pipeline.remove_sink(sink)

        await run_pipeline(pipeline, work)
        assert dest.read_bytes() == data
    finally:
        os.close(fd)


async def test_a_sink_removed_while_a_batch_writes_never_writes_into_a_reused_descriptor(store, tmp_path):
    """``load --dest`` ends (the API server closes the user's descriptor) while a lane's thread is
    still writing a batch to the sink: the thread writes through the sink's own duplicate, so the
    number the caller closed, reused by another open, receives nothing."""
    data = random_bytes(4 * CHUNK_SIZE, seed=35)
    partial, manifest = open_partial(store, data)
    pipeline = ChunkPipeline(partial, lanes=1, batch=4)
    dest = tmp_path / "dest.bin"
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    entered, go_on = threading.Event(), threading.Event()
    real_write = pipeline._write_batch

    def slow_write(batch, sinks):
        entered.set()
        assert go_on.wait(20)
        return real_write(batch, sinks)

    pipeline._write_batch = slow_write
    other = tmp_path / "other.bin"

    async def work():
        sink = Sink(fd)
        await pipeline.add_sink(sink)
        slots = [pipeline.submit(i, chunk(data, manifest, i)) for i in range(4)]
        await trio.to_thread.run_sync(entered.wait, 20)
        pipeline.remove_sink(sink)  # the fetch ended: the sink is let go, the caller closes its fd
        os.close(fd)
        reused = os.open(other, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            assert reused == fd  # the lowest free number: the one the thread was handed
            go_on.set()
            for slot in slots:
                assert await pipeline.result(slot) is True
            assert os.fstat(reused).st_size == 0
        finally:
            os.close(reused)
        assert sink.fd == -1  # the duplicate is closed now that no thread holds it

    await run_pipeline(pipeline, work)
    assert other.read_bytes() == b"" and dest.read_bytes() == data


async def test_chunks_far_ahead_of_the_hash_are_not_held_in_memory(store, monkeypatch):
    """A reader far into the file (lazy reads, read-ahead) must not make the hash stage keep every
    buffer until the prefix arrives: beyond HASH_AHEAD chunks they are read back instead."""
    n = HASH_AHEAD + 8
    data = random_bytes(n * CHUNK_SIZE, seed=34)
    partial, manifest = open_partial(store, data)
    reads = []
    real = partial_mod._pread_exact
    monkeypatch.setattr(partial_mod, "_pread_exact", lambda fd, size, off: reads.append(off) or real(fd, size, off))
    pipeline = ChunkPipeline(partial)

    async def work():
        for i in range(1, n):  # everything but the first chunk: the hash cannot start
            await pipeline.store(i, chunk(data, manifest, i))
        assert len(pipeline._for_hash) <= HASH_AHEAD
        await pipeline.store(0, chunk(data, manifest, 0))

    await run_pipeline(pipeline, work)
    assert {off // CHUNK_SIZE for off in reads} == set(range(HASH_AHEAD, n))
    obj = await trio.to_thread.run_sync(partial.finish)
    assert store.read_bytes(obj.sha1) == data


@pytest.mark.parametrize("direct", [True, False])
def test_a_sink_writes_aligned_chunks_directly_and_the_tail_through_the_page_cache(tmp_path, direct):
    """O_DIRECT where the filesystem takes it (from a page-aligned bounce buffer: the chunk's own
    buffer is not aligned), the unaligned tail buffered; the same bytes either way."""
    data = random_bytes(3 * CHUNK_SIZE + 5000, seed=36)
    dest = tmp_path / "dest.bin"
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        sink = Sink(fd, direct=direct)
        if direct:
            try:
                os.close(os.open(dest, os.O_WRONLY | os.O_DIRECT))
                assert sink.direct
            except OSError:
                pass  # (tmpfs and a few others refuse O_DIRECT: the sink falls back, tested below)
        else:
            assert not sink.direct
        payload = memoryview(b"x" + data)[1:]  # an odd address, as a chunk inside a frame is
        for i in reversed(range(4)):
            a, b = i * CHUNK_SIZE, min(len(data), (i + 1) * CHUNK_SIZE)
            sink.write(a, payload[a:b])
        sink.close()
        assert sink.error is None and sink.fd == -1 and sink.direct_fd == -1
    finally:
        os.close(fd)
    assert dest.read_bytes() == data
