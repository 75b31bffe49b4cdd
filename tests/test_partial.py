"""Partially downloaded objects (store/partial.py): verified chunk writes, resume, finish."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from kacheryfs.errors import ChunkNotPresent, CorruptChunk, CorruptObject, KacheryError, StoreFailed
from kacheryfs.store import CHUNK_SIZE, LocalStore, Manifest, hash_bytes
from kacheryfs.store import partial as partial_mod
from kacheryfs.store.partial import PartialObject

from .conftest import random_bytes

SIZE = 3 * CHUNK_SIZE + CHUNK_SIZE // 2  # 3.5 chunks: the last one short


def chunk(data: bytes, m: Manifest, i: int) -> bytes:
    a, b = m.chunk_range(i)
    return data[a:b]


@pytest.fixture
def data() -> bytes:
    return random_bytes(SIZE, seed=1)


@pytest.fixture
def manifest(data) -> Manifest:
    return Manifest.from_digest(hash_bytes(data))


def assert_installed(store: LocalStore, obj, data: bytes, manifest: Manifest) -> None:
    assert obj.sha1 == hashlib.sha1(data).hexdigest() and obj.size == len(data)
    assert store.read_bytes(obj.sha1) == data
    assert obj.manifest_sha1 == manifest.manifest_sha1
    assert store.manifest_of(obj.sha1) == manifest
    assert store.info(obj.sha1).pinned is False  # a downloaded copy is evictable
    assert list(store.partial_dir.iterdir()) == []
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0]])
def test_write_chunks_and_finish(store, data, manifest, order):
    p = PartialObject.open(store, manifest)
    assert p.num_chunks == 4 and p.missing_chunks() == [0, 1, 2, 3] and p.present_bytes() == 0
    for n, i in enumerate(order):
        assert not p.is_complete()
        p.write_chunk(i, chunk(data, manifest, i))
        assert p.has_chunk(i)
        assert p.missing_chunks() == sorted(set(range(4)) - set(order[: n + 1]))
    assert p.present_bytes() == SIZE and p.is_complete()
    assert_installed(store, p.finish(), data, manifest)


def test_in_order_download_is_never_read_back(store, data, manifest, monkeypatch):
    reads: list[int] = []
    real = partial_mod._pread_exact
    monkeypatch.setattr(partial_mod, "_pread_exact", lambda fd, n, off: reads.append(off) or real(fd, n, off))
    p = PartialObject.open(store, manifest)
    for i in range(4):
        p.write_chunk(i, chunk(data, manifest, i))
    p.finish()
    assert reads == []
    # Out of order: chunks that arrived early are read back once, as the prefix reaches them.
    store.index.remove_object(manifest.sha1)
    os.chmod(store.object_path(manifest.sha1), 0o644)
    os.unlink(store.object_path(manifest.sha1))
    p = PartialObject.open(store, manifest)
    for i in (1, 2, 0, 3):
        p.write_chunk(i, chunk(data, manifest, i))
    assert sorted(reads) == [CHUNK_SIZE, 2 * CHUNK_SIZE]
    assert_installed(store, p.finish(), data, manifest)
    assert len(reads) == 2


def test_resume_after_restart(tmp_path, data, manifest):
    root = tmp_path / "storage"
    s1 = LocalStore(root)
    p = PartialObject.open(s1, manifest)
    p.write_chunk(0, chunk(data, manifest, 0))
    p.write_chunk(2, chunk(data, manifest, 2))
    p.close()
    p.close()  # idempotent
    s1.close()

    s2 = LocalStore(root)  # a restart
    assert s2.reconcile()["tmp_removed"] == 0
    p = PartialObject.open(s2, manifest)
    assert p.missing_chunks() == [1, 3]
    assert p.present_bytes() == 2 * CHUNK_SIZE
    assert p.read(CHUNK_SIZE * 2 + 5, 10) == data[CHUNK_SIZE * 2 + 5:CHUNK_SIZE * 2 + 15]
    p.write_chunk(3, chunk(data, manifest, 3))
    p.write_chunk(1, chunk(data, manifest, 1))
    assert_installed(s2, p.finish(), data, manifest)
    s2.close()


def test_resume_drops_chunks_that_no_longer_verify(store, data, manifest):
    p = PartialObject.open(store, manifest)
    for i in (0, 1, 2):
        p.write_chunk(i, chunk(data, manifest, i))
    p.close()
    # A power cut that kept the bitmap but lost (here: scrambled) chunk 1's data.
    with open(p.part_path, "r+b") as f:
        f.seek(CHUNK_SIZE + 100)
        f.write(b"\0" * 10)
    p = PartialObject.open(store, manifest)
    assert p.missing_chunks() == [1, 3]
    p.close()
    p = PartialObject.open(store, manifest)  # the dropped bit was persisted
    assert p.missing_chunks() == [1, 3]
    for i in (1, 3):
        p.write_chunk(i, chunk(data, manifest, i))
    assert_installed(store, p.finish(), data, manifest)


def test_garbage_bitmap_starts_over(store, data, manifest):
    p = PartialObject.open(store, manifest)
    p.write_chunk(0, chunk(data, manifest, 0))
    p.close()
    p.bitmap_path.write_bytes(b"\xff" * 7)
    p = PartialObject.open(store, manifest)
    assert p.missing_chunks() == [0, 1, 2, 3]
    p.abort()


def test_kill9_keeps_written_chunks(tmp_path, data, manifest):
    root = tmp_path / "storage"
    (tmp_path / "data").write_bytes(data)
    child = f"""
import os, signal
from kacheryfs.store import LocalStore, Manifest, hash_bytes
from kacheryfs.store.partial import PartialObject
data = open({str(tmp_path / 'data')!r}, 'rb').read()
m = Manifest.from_digest(hash_bytes(data))
p = PartialObject.open(LocalStore({str(root)!r}), m)
for i in (3, 1):
    a, b = m.chunk_range(i)
    p.write_chunk(i, data[a:b])
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", child], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    s = LocalStore(root)
    s.reconcile()
    p = PartialObject.open(s, manifest)  # the dead process's flock is gone with it
    assert p.missing_chunks() == [0, 2]
    for i in (0, 2):
        p.write_chunk(i, chunk(data, manifest, i))
    assert_installed(s, p.finish(), data, manifest)
    s.close()


def test_corrupt_chunk_rejected_and_nothing_written(store, data, manifest):
    p = PartialObject.open(store, manifest)
    good = chunk(data, manifest, 1)
    bad = bytearray(good)
    bad[12345] ^= 1
    bitmap_before = p.bitmap_path.read_bytes()
    with pytest.raises(CorruptChunk) as err:
        p.write_chunk(1, bytes(bad))
    assert err.value.errno == 5 and isinstance(err.value, KacheryError)
    with pytest.raises(CorruptChunk):
        p.write_chunk(1, good[:-1])  # right prefix, wrong length
    with pytest.raises(CorruptChunk):
        p.write_chunk(3, chunk(data, manifest, 2)[: SIZE - 3 * CHUNK_SIZE])  # another chunk's bytes
    assert not p.has_chunk(1) and p.present_bytes() == 0
    assert p.bitmap_path.read_bytes() == bitmap_before
    with open(p.part_path, "rb") as f:
        assert f.read() == bytes(SIZE)  # still all holes
    with pytest.raises(ValueError):
        p.write_chunk(4, good)
    p.write_chunk(1, good)
    assert p.has_chunk(1)
    p.abort()


def test_wrong_whole_file_hash_discards_partial(store, data, manifest):
    # Every chunk matches the manifest, but the manifest's sha1 is not the file's.
    forged = replace(manifest, sha1=hashlib.sha1(b"something else").hexdigest())
    p = PartialObject.open(store, forged)
    for i in range(4):
        p.write_chunk(i, chunk(data, forged, i))
    with pytest.raises(CorruptObject):
        p.finish()
    assert not p.part_path.exists() and not p.bitmap_path.exists()
    assert not store.has(forged.sha1) and not store.has(manifest.sha1)
    assert store.info(forged.manifest_sha1) is None
    assert store.list_objects() == []
    with pytest.raises(StoreFailed):
        p.write_chunk(0, chunk(data, forged, 0))  # closed


def test_read_only_from_present_chunks(store, data, manifest):
    p = PartialObject.open(store, manifest)
    with pytest.raises(ChunkNotPresent):
        p.read(0, 1)
    p.write_chunk(1, chunk(data, manifest, 1))
    p.write_chunk(3, chunk(data, manifest, 3))
    assert p.read(CHUNK_SIZE, CHUNK_SIZE) == chunk(data, manifest, 1)
    assert p.read(CHUNK_SIZE + 7, 100) == data[CHUNK_SIZE + 7:CHUNK_SIZE + 107]
    assert p.read(SIZE - 10, 1000) == data[-10:]  # clipped at the end
    assert p.read(SIZE, 10) == b"" and p.read(5, 0) == b""
    with pytest.raises(ChunkNotPresent) as err:
        p.read(2 * CHUNK_SIZE - 1, 2)  # straddles 1 (present) and 2 (missing)
    assert isinstance(err.value, KacheryError) and "[2]" in str(err.value)
    p.abort()
    p.abort()  # idempotent
    assert list(store.partial_dir.iterdir()) == []


def test_concurrent_write_chunk_from_threads(store):
    data = random_bytes(8 * CHUNK_SIZE + 12345, seed=7)
    m = Manifest.from_digest(hash_bytes(data))
    p = PartialObject.open(store, m)
    jobs = [i for i in range(m.size // CHUNK_SIZE + 1) for _ in range(2)]  # each chunk twice
    random.Random(3).shuffle(jobs)
    bad = [(i, b"x" * len(chunk(data, m, i))) for i in range(0, 9, 3)]

    def write(job):
        i, payload = job
        try:
            p.write_chunk(i, payload)
            return "ok"
        except CorruptChunk:
            return "bad"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(write, [(i, chunk(data, m, i)) for i in jobs] + bad))
    assert results.count("bad") == len(bad) and results.count("ok") == len(jobs)
    assert p.is_complete() and p.present_bytes() == len(data)
    assert_installed(store, p.finish(), data, m)


def test_one_open_at_a_time(store, manifest):
    p = PartialObject.open(store, manifest)
    with pytest.raises(StoreFailed):
        PartialObject.open(store, manifest)
    p.close()
    PartialObject.open(store, manifest).abort()


def test_finish_requires_every_chunk(store, data, manifest):
    p = PartialObject.open(store, manifest)
    p.write_chunk(0, chunk(data, manifest, 0))
    with pytest.raises(ChunkNotPresent):
        p.finish()
    assert p.part_path.exists()  # still resumable
    p.abort()


@pytest.mark.parametrize("size", [0, 1000, CHUNK_SIZE])
def test_single_chunk_objects(store, size):
    # Like put_bytes, a file of one chunk gets no manifest object.
    data = random_bytes(size, seed=2)
    m = Manifest.from_digest(hash_bytes(data))
    with PartialObject.open(store, m) as p:
        p.write_chunk(0, data)
        obj = p.finish(pinned=True)
    assert obj.sha1 == hashlib.sha1(data).hexdigest() and obj.manifest_sha1 is None
    assert store.read_bytes(obj.sha1) == data and store.info(obj.sha1).pinned


def test_object_already_in_store(store, data, manifest):
    before = store.put_bytes(data)
    p = PartialObject.open(store, manifest)
    for i in range(4):
        p.write_chunk(i, chunk(data, manifest, i))
    assert p.finish() == before
    assert store.info(before.sha1).pinned  # a pinned object stays pinned
    assert list(store.partial_dir.iterdir()) == []


def test_malformed_manifest_refused(store, manifest):
    with pytest.raises(CorruptObject):
        PartialObject.open(store, replace(manifest, sha1="../" + manifest.sha1[3:]))
    with pytest.raises(CorruptObject):
        PartialObject.open(store, replace(manifest, chunk_sha1s=manifest.chunk_sha1s[:2]))
