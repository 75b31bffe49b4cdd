"""Bit rot in a node's own store: stored bytes are checked before they leave, rotten objects are
quarantined (and re-fetched by the daemon), and a scrub finds what nobody has read."""

import hashlib
import json
import os

import pytest

from kacheryfs.errors import CorruptObject, ObjectNotFound
from kacheryfs.net.fetcher import NetworkFetcher
from kacheryfs.store import CHUNK_SIZE
from kacheryfs.store.integrity import RottenObject

from .conftest import random_bytes
from .test_net import addr_of, chans, wait_for


def rot(store, sha1: str, offsets) -> None:
    """Flip bytes of a stored object in place, as a bad disk (or a stray write) would."""
    with open(store.object_path(sha1), "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))


def test_reads_check_each_chunk_once_and_quarantine_rot(store):
    data = random_bytes(5 * CHUNK_SIZE + 17, seed=1)
    obj = store.put_bytes(data)
    integrity = store.integrity
    assert integrity.read_range(obj.sha1, 100, 10) == data[100:110]
    assert integrity.unverified(obj.sha1, len(data), 0, len(data)) == [1, 2, 3, 4, 5]
    rot(store, obj.sha1, [CHUNK_SIZE // 2])  # chunk 0 was checked already: its bytes are trusted now
    rot(store, obj.sha1, [3 * CHUNK_SIZE + 5])
    assert integrity.read_range(obj.sha1, CHUNK_SIZE, CHUNK_SIZE) == data[CHUNK_SIZE:2 * CHUNK_SIZE]
    with pytest.raises(RottenObject, match="chunk 3"):
        integrity.read_range(obj.sha1, 3 * CHUNK_SIZE + 1000, 10)  # unaligned: the whole chunk is checked
    assert store.info(obj.sha1) is None and not store.object_path(obj.sha1).exists()
    note = json.loads((store.root / "quarantine" / f"{obj.sha1}.json").read_text())
    assert note["pinned"] is True and note["manifest_sha1"] == obj.manifest_sha1
    assert [r.sha1 for r in integrity.quarantined()] == [obj.sha1]
    with pytest.raises(ObjectNotFound):
        integrity.read_range(obj.sha1, 0, 10)


def test_a_rotten_manifest_is_rebuilt_from_a_good_object(store):
    data = random_bytes(3 * CHUNK_SIZE, seed=2)
    obj = store.put_bytes(data)
    store.index.remove_chunk_sums(obj.sha1)  # stored by a version that recorded no checksums
    rot(store, obj.manifest_sha1, [10])
    assert store.integrity.read_range(obj.sha1, 0, len(data)) == data  # hashed whole instead
    assert hashlib.sha1(store.read_bytes(obj.manifest_sha1)).hexdigest() == obj.manifest_sha1
    assert store.info(obj.sha1).manifest_sha1 == obj.manifest_sha1


def test_without_checksums_or_manifest_a_range_read_hashes_the_whole_file(store):
    """With no recorded checksums and no manifest the whole object is hashed: from its file, not
    from the range just read (hashing past that range condemned good copies, seen in a swarm)."""
    data = random_bytes(3 * CHUNK_SIZE + 5, seed=3)
    obj = store.put_bytes(data)
    store.index.remove_chunk_sums(obj.sha1)
    os.unlink(store.object_path(obj.manifest_sha1))
    assert store.integrity.read_range(obj.sha1, CHUNK_SIZE, CHUNK_SIZE) == data[CHUNK_SIZE:2 * CHUNK_SIZE]
    assert store.info(obj.sha1) is not None and store.integrity.quarantined() == []
    assert hashlib.sha1(store.read_bytes(obj.manifest_sha1)).hexdigest() == obj.manifest_sha1  # rebuilt
    # and a rotten one, in the same state, is still caught
    other = store.put_bytes(random_bytes(3 * CHUNK_SIZE, seed=4))
    store.index.remove_chunk_sums(other.sha1)
    os.unlink(store.object_path(other.manifest_sha1))
    rot(store, other.sha1, [2 * CHUNK_SIZE + 7])
    with pytest.raises(RottenObject, match="hashes to"):
        store.integrity.read_range(other.sha1, 0, 10)
    assert store.info(other.sha1) is None


def test_an_object_without_manifest_or_sums_is_checked_whole_from_its_file(store):
    """Serving a chunk of an object the index knows no manifest or checksums for (adopted after a
    crash) hashes the whole file, not just the chunk read for the peer."""
    data = random_bytes(3 * CHUNK_SIZE + 9, seed=4)
    obj = store.put_bytes(data)
    store.index.remove_chunk_sums(obj.sha1)
    store.index.remove_object(obj.sha1)
    store.index.add_object(obj.sha1, len(data), None, True)
    view = memoryview(bytearray(CHUNK_SIZE))
    assert store.integrity.read_into(obj.sha1, CHUNK_SIZE, view) == CHUNK_SIZE
    assert bytes(view) == data[CHUNK_SIZE:2 * CHUNK_SIZE]
    assert store.integrity.read_range(obj.sha1, 2 * CHUNK_SIZE, 5) == data[2 * CHUNK_SIZE:2 * CHUNK_SIZE + 5]
    assert store.info(obj.sha1) is not None and store.object_path(obj.sha1).exists()  # not quarantined


def test_checksums_recorded_at_write_are_the_fast_check_sha1_decides(store):
    data = random_bytes(4 * CHUNK_SIZE + 5, seed=7)
    obj = store.put_bytes(data)
    sums = store.index.chunk_sums(obj.sha1)
    assert len(sums) == 5 * 16
    # wrong recorded sums, right bytes: SHA-1 clears the object and the sums are recorded again
    store.index.put_chunk_sums(obj.sha1, b"\0" * len(sums))
    assert store.integrity.read_range(obj.sha1, 0, CHUNK_SIZE) == data[:CHUNK_SIZE]
    assert store.info(obj.sha1) is not None
    store.integrity.read_range(obj.sha1, CHUNK_SIZE, len(data))  # the other chunks: learnt
    assert store.index.chunk_sums(obj.sha1) == sums
    # an object stored without sums gets them as its chunks are checked
    other = store.put_bytes(random_bytes(2 * CHUNK_SIZE, seed=8))
    recorded = store.index.chunk_sums(other.sha1)
    store.index.remove_chunk_sums(other.sha1)
    store.integrity.read_range(other.sha1, 0, 2 * CHUNK_SIZE)
    assert store.index.chunk_sums(other.sha1) == recorded
    # a downloaded (partial) object records them too
    from kacheryfs.store import Manifest
    from kacheryfs.store.partial import PartialObject

    src = random_bytes(3 * CHUNK_SIZE, seed=9)
    from kacheryfs.store.hashing import hash_bytes

    digest = hash_bytes(src)
    with PartialObject.open(store, Manifest.from_digest(digest)) as partial:
        for i in range(3):
            partial.write_chunk(i, src[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE])
        fetched = partial.finish()
    assert store.index.chunk_sums(fetched.sha1) == digest.chunk_sums


def test_scrub_finds_rot_nobody_read_and_repair_quarantines_it(store):
    good = store.put_bytes(random_bytes(2 * CHUNK_SIZE, seed=3))
    bad = store.put_bytes(random_bytes(1000, seed=4))
    gone = store.put_bytes(b"deleted behind our back")
    rot(store, bad.sha1, [999])
    os.chmod(store.object_path(gone.sha1).parent, 0o755)
    os.unlink(store.object_path(gone.sha1))
    report = store.integrity.scrub()
    assert [r.sha1 for r in report.rotten] == [bad.sha1]
    assert [r.sha1 for r in report.missing] == [gone.sha1]
    assert report.objects == 3  # good, its manifest, bad
    assert store.info(bad.sha1) is not None  # only reported
    report = store.integrity.scrub(repair=True)
    assert store.info(bad.sha1) is None and store.index.get_object(gone.sha1) is None
    assert store.info(good.sha1) is not None
    assert store.integrity.scrub().rotten == []


def test_truncated_object_is_rotten(store):
    obj = store.put_bytes(random_bytes(CHUNK_SIZE + 10, seed=5))
    os.truncate(store.object_path(obj.sha1), CHUNK_SIZE)
    with pytest.raises(CorruptObject):
        store.integrity.read_range(obj.sha1, CHUNK_SIZE, 10)


async def test_serving_node_refuses_its_rotten_copy_and_restores_it(cluster):
    """A's copy rotted: A notices on the first chunk it serves, answers not-found instead of the
    bad bytes, quarantines it, and (as the daemon wires it) fetches a good copy back from C."""
    data = random_bytes(6 * CHUNK_SIZE + 3, seed=6)
    a = await cluster.node("a", chans("x"))
    c = await cluster.node("c", chans("x"))
    b = await cluster.node("b", chans("x"))
    obj = a.store.put_bytes(data)
    c.store.put_bytes(data)
    rot(a.store, obj.sha1, [i * CHUNK_SIZE + 1 for i in range(7)])
    restore = NetworkFetcher(a).rot_handler()  # as the daemon does
    found_rotten = []

    def on_rotten(record):
        found_rotten.append(record.sha1)
        restore(record)

    a.store.integrity.on_rotten = on_rotten
    await a.connect(*addr_of(c))
    # A is B's only provider, so B's first chunk request is the one that meets the rot (with C
    # among B's providers too, B may take every chunk from C and never ask A).
    await b.connect(*addr_of(a))
    try:
        await NetworkFetcher(b).fetch(obj.sha1)
    except ObjectNotFound:
        pass  # A refused its rotten copy and had not got a good one back yet
    assert found_rotten == [obj.sha1]
    quarantined = a.store.root / "quarantine" / obj.sha1
    await wait_for(lambda: not quarantined.exists(), timeout=20)  # restored from C, then dropped
    assert a.store.read_bytes(obj.sha1) == data
    if b.store.info(obj.sha1) is None:
        await NetworkFetcher(b).fetch(obj.sha1)  # from A's restored copy
    assert b.store.read_bytes(obj.sha1) == data
    assert a.store.info(obj.sha1).pinned  # stored here before: pinned again
