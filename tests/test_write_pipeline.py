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


def break_writes(writer) -> None:
    """Every later write of ``writer`` fails (EBADF): its descriptors (the page-cache one and the
    O_DIRECT one) are swapped for real descriptors that refuse writes."""
    for name in ("fd", "_direct_fd"):
        fd = getattr(writer, name)
        if fd >= 0:
            os.close(fd)
            setattr(writer, name, os.open(os.devnull, os.O_RDONLY))


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
    break_writes(writer)  # every pwrite fails (EBADF)
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
    break_writes(draft.writer)
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


# ---- stripes and O_DIRECT ------------------------------------------------------------------------
def test_stripe_pieces_cover_every_byte_once_each_byte_always_in_the_same_lane():
    from kacheryfs.fs.write_pipeline import stripe_pieces

    stripe = 4 * MiB
    for offset, length in [(0, MiB), (3 * MiB + 5, 2 * MiB), (0, 9 * MiB), (8 * MiB - 1, 2), (7, 0)]:
        pieces = list(stripe_pieces(offset, length, stripe, 2))
        if length == 0:
            assert pieces == []
            continue
        assert [p[1] for p in pieces] == [offset] + [p[2] for p in pieces[:-1]]  # contiguous, in order
        assert pieces[-1][2] == offset + length
        for lane, start, end in pieces:
            assert start // stripe == (end - 1) // stripe  # within one stripe
            assert lane == (start // stripe) % 2


@pytest.mark.parametrize("direct", [True, False])
def test_write_pieces_direct_and_page_cache_give_the_same_bytes(store, direct, monkeypatch):
    """Aligned runs go with O_DIRECT, unaligned starts and tails through the page cache (or all of
    it when O_DIRECT is refused); what is read back and committed is what was written."""
    if not direct:
        monkeypatch.setattr("kacheryfs.store.local.open_direct", lambda path: -1)
    writer = store.writer()
    writer.use_direct()
    assert (writer._direct_fd >= 0) == direct
    expected = bytearray(10 * MiB + 123)
    pieces = [(0, random_bytes(MiB, seed=20)), (MiB, random_bytes(MiB, seed=21)),  # gathered: one write
              (2 * MiB + 100, random_bytes(MiB, seed=22)),  # unaligned start: page cache
              (5 * MiB, random_bytes(5 * MiB + 123, seed=23)),  # aligned run with an unaligned tail
              (MiB - 7, random_bytes(20, seed=24))]  # overwrites across a direct write's end, later
    for offset, data in pieces:
        writer.claim(offset, len(data))
        expected[offset:offset + len(data)] = data
    writer.write_pieces(pieces[:4])
    writer.write_pieces(pieces[4:])
    assert writer.pread(0, len(expected)) == bytes(expected)
    obj = writer.commit()
    assert obj.sha1 == hashlib.sha1(expected).hexdigest()
    assert store.read_bytes(obj.sha1) == bytes(expected)


def test_mount_overlapping_writes_across_stripes_land_in_order(make_mount):
    """Writes that cross the write lanes' stripe boundaries and overwrite each other (a write-only
    handle: every write goes through the pipeline) end as the last write of each byte left it."""
    m = make_mount().start()
    try:
        path = m.path("store", "overlap.bin")
        expected = bytearray(12 * MiB)
        writes = [(0, 12 * MiB, 30), (4 * MiB - 3, MiB, 31), (4 * MiB, MiB, 32), (3 * MiB, 2 * MiB + 9, 33),
                  (8 * MiB - 4096, 8192, 34), (8 * MiB - 1, 3, 35), (5, 4 * MiB, 36)]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for offset, length, seed in writes:
                data = random_bytes(length, seed=seed)
                for at in range(0, length, MiB):  # as the kernel splits them: <= 1 MiB requests
                    assert os.pwrite(fd, data[at:at + MiB], offset + at) == len(data[at:at + MiB])
                expected[offset:offset + length] = data
        finally:
            os.close(fd)
        assert path.read_bytes() == bytes(expected)
        uri = os.getxattr(path, "user.kachery.uri").decode()
        assert hashlib.sha1(expected).hexdigest() in uri
    finally:
        m.stop()


def test_mount_storage_full_in_the_middle_fails_a_write_or_close_and_commits_nothing(make_mount, tmp_path):
    """A real ENOSPC in the middle of a pipelined write (storage on a small tmpfs the test mounts,
    which takes O_DIRECT): the writer's write() or close() fails, nothing is named or stored, the
    temp file is gone, and the mount goes on working."""
    storage = tmp_path / "small"
    storage.mkdir()
    tag = f"kfs-test-{os.getpid()}"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", tag, str(storage)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        m = make_mount(storage=storage / "store").start()
        try:
            script = textwrap.dedent(f"""
                import os, sys
                fd = os.open({str(m.path("store", "big.bin"))!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                failed = None
                for i in range(64):
                    try:
                        os.write(fd, os.urandom(1 << 20))
                    except OSError as exc:
                        failed = f"write {{i}}: {{exc.errno}}"
                        break
                try:
                    os.close(fd)
                except OSError as exc:
                    failed = failed or f"close: {{exc.errno}}"
                print(failed)
            """)
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
            assert out.stdout.strip() not in ("", "None"), out.stdout + out.stderr
            assert "big.bin" not in os.listdir(m.path("store"))
            assert list((storage / "store" / "tmp").iterdir()) == []
            small = random_bytes(MiB, seed=40)  # room again: the mount still stores
            m.path("store", "small.bin").write_bytes(small)
            assert m.path("store", "small.bin").read_bytes() == small
        finally:
            m.stop()
    finally:
        subprocess.run(["umount", "-l", str(storage)], capture_output=True)
