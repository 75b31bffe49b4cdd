"""store/ writes answered once queued (fs/write_pipeline.py): what is read, truncated and committed
always sees every byte written before it; errors reach the writer; nothing partial is committed.
The tree's handlers are called directly with the lanes in a nursery (as in the mount), then the
same through a real mount."""

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest
import trio

from kacheryfs.errors import KacheryError
from kacheryfs.fs.inodes import SHA1_DIR_INO, STORE_DIR_INO
from kacheryfs.fs.tree import VirtualTree
from kacheryfs.fs.write_pipeline import WritePipeline
from kacheryfs.store import CHUNK_SIZE

from .conftest import random_bytes

MiB = 1 << 20


@pytest.fixture
async def tree(store, nursery):
    tree = VirtualTree(store)
    tree.run_tasks_in(nursery)
    return tree


def committed_bytes(tree, name: str) -> bytes:
    record = tree.store.get_name(name)
    return tree.store.read_bytes(record.sha1)


async def test_writes_are_queued_then_committed_with_the_hash_of_every_byte(tree, store):
    data = random_bytes(9 * MiB + 123, seed=1)
    fh, _ = tree.create(STORE_DIR_INO, "a.bin", os.O_WRONLY | os.O_CREAT)
    for off in range(0, len(data), MiB):
        assert await tree.write(fh, off, data[off:off + MiB]) == len(data[off:off + MiB])
    await tree.flush(fh)
    await tree.release(fh)
    record = store.get_name("a.bin")
    assert record.sha1 == hashlib.sha1(data).hexdigest() and record.size == len(data)
    manifest = store.manifest_of(record.sha1)  # chunk hashes from the lanes, right
    assert manifest.chunk_sha1s[3] == hashlib.sha1(data[3 * CHUNK_SIZE:4 * CHUNK_SIZE]).hexdigest()
    assert store.index.chunk_sums(record.sha1)  # xxh3 sums recorded: first reads check cheaply
    assert list(store.tmp_dir.iterdir()) == []


async def test_a_read_waits_for_the_writes_queued_before_it(tree):
    data = random_bytes(6 * MiB, seed=2)
    fh, attr = tree.create(STORE_DIR_INO, "r.bin", os.O_RDWR | os.O_CREAT)
    for off in range(0, len(data), MiB):
        await tree.write(fh, off, data[off:off + MiB])
    assert tree.getattr(attr.ino).size == len(data)  # the size counts queued bytes
    assert bytes(await tree.aread(fh, 5 * MiB - 10, 20)) == data[5 * MiB - 10:5 * MiB + 10]
    await tree.release(fh)
    assert committed_bytes(tree, "r.bin") == data


async def test_writes_through_two_handles_interleaved(tree):
    a, b = random_bytes(4 * MiB, seed=3), random_bytes(4 * MiB, seed=4)
    fh1, attr = tree.create(STORE_DIR_INO, "two.bin", os.O_WRONLY | os.O_CREAT)
    fh2, _ = tree.open(attr.ino, os.O_WRONLY)
    expect = bytearray(8 * MiB)
    for i in range(4):  # one handle writes the even MiBs in order, the other the odd ones
        await tree.write(fh1, 2 * i * MiB, a[i * MiB:(i + 1) * MiB])
        await tree.write(fh2, (2 * i + 1) * MiB, b[i * MiB:(i + 1) * MiB])
        expect[2 * i * MiB:(2 * i + 1) * MiB] = a[i * MiB:(i + 1) * MiB]
        expect[(2 * i + 1) * MiB:(2 * i + 2) * MiB] = b[i * MiB:(i + 1) * MiB]
    await tree.flush(fh2)
    await tree.release(fh2)
    await tree.flush(fh1)
    await tree.release(fh1)
    assert committed_bytes(tree, "two.bin") == bytes(expect)


async def test_out_of_order_writes_are_hashed_again_at_commit(tree):
    data = random_bytes(5 * MiB, seed=5)
    fh, _ = tree.create(STORE_DIR_INO, "ooo.bin", os.O_WRONLY | os.O_CREAT)
    for off in (3 * MiB, 0, 4 * MiB, MiB, 2 * MiB):
        await tree.write(fh, off, data[off:off + MiB])
    await tree.flush(fh)
    await tree.release(fh)
    assert tree.store.get_name("ooo.bin").sha1 == hashlib.sha1(data).hexdigest()


async def test_truncate_and_o_trunc_apply_after_the_queued_writes(tree):
    data = random_bytes(4 * MiB, seed=6)
    fh, attr = tree.create(STORE_DIR_INO, "t.bin", os.O_RDWR | os.O_CREAT)
    for off in range(0, len(data), MiB):
        await tree.write(fh, off, data[off:off + MiB])
    await tree.truncate(attr.ino, 3 * MiB + 5, fh)
    await tree.write(fh, 3 * MiB + 5, b"tail")
    await tree.flush(fh)
    assert committed_bytes(tree, "t.bin") == data[:3 * MiB + 5] + b"tail"
    for off in range(0, len(data), MiB):  # queue more, then a second open with O_TRUNC
        await tree.write(fh, off, data[off:off + MiB])
    fh2, _ = tree.open(attr.ino, os.O_WRONLY | os.O_TRUNC)
    await tree.write(fh2, 0, b"fresh start")
    await tree.flush(fh2)
    await tree.release(fh2)
    await tree.release(fh)
    assert committed_bytes(tree, "t.bin") == b"fresh start"
    await trio.testing.wait_all_tasks_blocked()
    assert list(tree.store.tmp_dir.iterdir()) == []  # the emptied draft's temp file went too


async def test_a_lane_error_reaches_the_next_write_and_close_and_nothing_is_committed(store, nursery):
    writer = store.writer()
    pipeline = WritePipeline(writer, nursery, limit=2 * MiB)
    os.close(writer.fd)  # the temp file's descriptor is gone: every pwrite fails (EBADF)
    writer.fd = os.open(os.devnull, os.O_RDONLY)  # a real descriptor that refuses writes
    await pipeline.submit(0, random_bytes(MiB, seed=7))  # answered: queued
    with pytest.raises(KacheryError):
        for off in range(MiB, 64 * MiB, MiB):  # the error stops the writer within the queue bound
            await pipeline.submit(off, random_bytes(MiB, seed=8))
    with pytest.raises(KacheryError):
        await pipeline.drain()
    await pipeline.aclose(discard=True)
    writer.abort()
    assert list(store.tmp_dir.iterdir()) == []


async def test_a_failed_write_fails_close_and_leaves_no_name(tree, store):
    fh, attr = tree.create(STORE_DIR_INO, "bad.bin", os.O_WRONLY | os.O_CREAT)
    await tree.write(fh, 0, random_bytes(MiB, seed=9))
    draft = tree.drafts.get(attr.ino)
    os.close(draft.writer.fd)
    draft.writer.fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(KacheryError):
        for off in range(MiB, 80 * MiB, MiB):
            await tree.write(fh, off, random_bytes(MiB, seed=10))
    with pytest.raises(KacheryError):
        await tree.flush(fh)  # close() fails too
    await tree.release(fh)
    assert store.get_name("bad.bin") is None
    assert [o for o in store.list_objects()] == []


# ---- through a real mount -----------------------------------------------------------------------
def test_mount_two_writers_append_and_crash_before_commit(make_mount, tmp_path):
    m = make_mount().start()
    try:
        path = m.path("store", "shared.bin")
        a, b = random_bytes(3 * MiB, seed=11), random_bytes(3 * MiB, seed=12)
        fd1 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # write-only: direct I/O
        fd2 = os.open(path, os.O_RDWR)  # read-write: through the page cache
        os.pwrite(fd1, a, 0)
        os.pwrite(fd2, b, 3 * MiB)
        assert os.pread(fd2, 16, 3 * MiB - 8) == a[-8:] + b[:8]  # reads see the queued writes
        os.close(fd1)
        os.close(fd2)
        assert path.read_bytes() == a + b
        with open(path, "ab") as f:  # O_APPEND on a store/ file
            f.write(b"appended")
        assert path.read_bytes() == a + b + b"appended"
        uri = os.getxattr(path, "user.kachery.uri").decode()
        assert hashlib.sha1(a + b + b"appended").hexdigest() in uri

        # a writer killed by the daemon's death between its writes and its close: nothing of it is
        # committed, the temp file is removed at the next start
        script = textwrap.dedent(f"""
            import os, sys, time
            fd = os.open({str(m.path("store", "crash.bin"))!r}, os.O_WRONLY | os.O_CREAT)
            for i in range(24):
                os.pwrite(fd, os.urandom(1 << 20), i << 20)
            print("written", flush=True)
            time.sleep(60)
        """)
        writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "written"
            m.kill9()
        finally:
            writer.kill()
            writer.wait(timeout=30)
    finally:
        m.stop()
    m2 = make_mount(storage=m.storage).start()
    try:
        assert "crash.bin" not in os.listdir(m2.path("store"))
        assert m2.path("store", "shared.bin").read_bytes() == a + b + b"appended"
        assert list((m2.storage / "tmp").iterdir()) == []
        sha1 = hashlib.sha1(a + b + b"appended").hexdigest()
        assert m2.path("sha1", sha1).stat().st_size == 6 * MiB + 8
    finally:
        m2.stop()
